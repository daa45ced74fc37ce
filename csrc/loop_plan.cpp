#include "loop_plan.h"

#include "kernel_table.h"
#include "overrides.h"

#include <atomic>

namespace fastrnn {
namespace {

// The float32 loops of fused_steps.h (own panel GEMM, one parallel region per step) run where
// the CPU has AVX2+FMA, there is no proj_size and the batch has at most 64 rows, or at most 512
// rows for LSTM and GRU layers of 256+ units; other large batches are proper GEMMs where MKL's
// cache blocking over the rows holds up.  Measured on the 2-core AMD EPYC Zen4 (2 threads, both
// loops side by side in one process, T=100, ratio to torch panel / blas, fwd | fwd+bwd): GRU B1
// H256 3.68 / 1.84 | 6.59 / 3.96, LSTM B16 H256 0.84 / 0.62 | 0.86 / 0.69, GRU B64 H512 1.24 /
// 1.09 | 1.22 / 1.12, RNN B64 H1024 1.28 / 1.14 | 1.22 / 1.11.  Past 64 rows, with the panel loop
// doing the input side in its steps: LSTM B128 H256 1.10 / 0.87 | 1.30 / 1.09, B256 H256 0.98 /
// 0.83 | 1.28 / 1.11, T=50 B512 H256 1.12 / 0.99, B256 H1024 1.00 / 0.89; GRU B256 H256 1.51 /
// 1.32 | 1.34 / 1.24, T=50 B512 H256 1.50 / 1.42; but GRU T=50 B1024 H128 1.34 / 1.60, RNN B128
// H256 1.20 / 1.48 | 1.28 / 1.15, B256 H256 1.04 / 1.31 | 1.24 / 1.14 (RNN H512 and up favour
// the panel loop, 1.16-1.33 / 1.06-1.23, but not enough cases were measured to move them).
// FASTRNN_STEP_GEMM=blas|panel forces one loop (read per call, so one process can time both).
constexpr int64_t kFusedMaxRows = 64;
constexpr int64_t kFusedMaxRowsGated = 512;
// Within those, a CPU's fitted row may hand calls of this many rows or more with a large W_hh to the
// BLAS loop (StepInputLimits::panel_max_bytes): on the 2-core Sapphire Rapids class Xeon, T=100,
// ms panel / BLAS loop: GRU B64 H1024 (12 MiB) 468 / 388, RNN B16 H2048 (16 MiB) 147 / 128,
// GRU B64 H512 (3 MiB) 109 / 99; but GRU B4 H1024 43 / 51 (few rows: MKL's GEMM does not block).
// Since the multi-panel tiles (step_gemm_avx512.cpp) the two loops tie there (BLAS / panel time
// 0.97-1.04 from 3 MiB, 1.03-1.42 below), and that CPU's row no longer sets a limit.
constexpr int64_t kBlasLoopMinRows = 16;

// [pass][cached bytes, bytes per row, panel max bytes]; pass 0 forward, 1 backward.  The panel
// loop's limit defaults to none (Zen4 measured it ahead at every size, loop_plan.cpp above).
std::atomic<int64_t> step_input_limits[2][3] = {{int64_t(8) << 20, int64_t(512) << 10, INT64_MAX},
                                                {int64_t(8) << 20, int64_t(512) << 10, INT64_MAX}};

// A single step (a cell, or T = 1) takes the BLAS loop without packing: packing W_hh would cost as
// much as the one product that reads it.
bool use_fused_steps(const LayerShape& s, Force force) {
  if (!s.float32 || s.proj || kernels().panel_f == nullptr || s.steps <= 1) return false;
  if (force == Force::blas) return false;
  if (force == Force::panel) return true;
  const int64_t hh_bytes = s.gates * s.hidden * s.hidden * int64_t(sizeof(float));
  if (s.batch >= kBlasLoopMinRows &&
      hh_bytes > step_input_limits[s.backward ? 1 : 0][2].load(std::memory_order_relaxed))
    return false;
  return s.batch <= kFusedMaxRows || (s.gates >= 3 && s.hidden >= 256 && s.batch <= kFusedMaxRowsGated);
}

// The float32 input projection of 4096 rows (T x B) or more on the panel kernel (fused_steps.h)
// where the CPU has one; on BLAS otherwise.  Measured on the 2-core AMD EPYC Zen4, T=100 fwd, time
// with the panel projection / with MKL's: LSTM B64 H512 0.945, GRU B64 H512 0.944, RNN B64 H1024
// 0.959, LSTM B256 H256 0.955; below, packing W_ih costs more than it saves: GRU B16 H256 (1600
// rows) 1.04, GRU B1 H256 1.09.  FASTRNN_INPUT_GEMM=blas|panel forces one (read per call).
constexpr int64_t kPanelInputMinRows = 4096;

bool use_panel_input_gemm(const LayerShape& s, Force force) {
  if (!s.float32 || kernels().panel_f == nullptr) return false;
  if (force == Force::blas) return false;
  if (force == Force::panel) return true;
  return s.rows >= kPanelInputMinRows;
}

// In the fused loop, each step does its own input projection on the panel kernel (fused_steps.h,
// StepInput; and the backward its dx and weight gradients) instead of one GEMM for all steps
// before the loop, when the batch has at least 4 rows and the packed [W_ih; W_hh] of a direction
// is at most 8 MiB or at most 512 KiB per batch row: the step streams twice the weights, which pays
// while they stay in cache or the batch reuses them enough.  Measured on the 2-core AMD EPYC Zen4
// (2 threads, side by side in one process, T=100, ratio to torch, in-step / before the loop,
// fwd): LSTM H256 B8 1.13 / 0.92, B16 1.00 / 0.90, B64 0.99 / 0.84; LSTM B64 H512 (8 MiB) 1.05 /
// 0.91; GRU B64 H256 1.58 / 1.42; RNN B64 H1024 1.45 / 1.27; LSTM B4 H128 1.32 / 1.27, B4 H512
// 1.05 / 1.00; GRU B4 H512 3.30 / 3.13; RNN B4 H1024 (8 MiB) 3.79 / 3.51; fwd+bwd: LSTM B4 H128
// 1.41 / 1.10, B8 H512 0.98 / 0.91; GRU B4 H256 4.37 / 3.98.  But LSTM T=50 B16 H1024 (32 MiB)
// 0.70 / 1.04, B16 H768 (19 MiB) 0.90 / 0.97, B4 H1024 0.72 / 1.61, and at two rows or fewer,
// LSTM B2 H256 0.96 / 1.16, GRU B2 H256 3.75 / 4.38, LSTM B1 H128 1.12 / 1.30.
// FASTRNN_INPUT_GEMM=step forces it in the fused loop; =blas|panel|before force the projection
// before it (`before`: on BLAS or the panel kernel as use_panel_input_gemm decides).
// Those two byte limits are the defaults (Zen4), for the forward and the backward alike; the CPU's
// fitted row of fastrnn/dispatch_table.py replaces them when the extension loads (set_loop_limits):
// on a 2-core Sapphire Rapids class Xeon the forward's in-step projection wins at 64 rows up to
// 8 MiB but loses at 4 rows from 1.5 MiB (0.55-0.64x at 6-8 MiB), and the backward's in-step dx
// already loses at 0.5 MiB (benchmarks/results/cpu-intel-xeon-avx512-2c.plans.json).
constexpr int64_t kStepInputMinRows = 4;
// Past those limits, a forward whose projection of all steps (gi, float32) exceeds kLargeGiBytes
// still projects in its steps where the weights are at most kLargeGiBytesPerRow per batch row: gi
// written before the loop and read back in it then streams through memory, which costs more than
// re-reading the weights.  The limits above were fitted at T=100; measured on the 2-core Xeon
// (T, B, H: ms in the steps / before the loop, fwd): LSTM T500 B16 H256 (gi 32 MiB, 128 KiB a
// row) 40.4 / 53.6, T1000 81.6 / 103.0, T300 25.0 / 32.8, T200 (13 MiB) 17.2 / 16.6; T100 B64
// H512 (52 MiB, 128 KiB) 124.6 / 137.2; GRU T500 B16 H256 31.5 / 39.5, T100 B64 H512 96.0 / 101.8;
// but GRU T1000 B16 H512 (384 KiB a row) 271.8 / 254.5, LSTM T100 B64 H1024 (512 KiB) 643 / 537.
constexpr int64_t kLargeGiBytes = int64_t(16) << 20, kLargeGiBytesPerRow = int64_t(128) << 10;

bool use_step_input_gemm(const LayerShape& s, bool fused, Force force) {
  if (!fused || kernels().panel2_f == nullptr) return false;
  if (force == Force::step) return true;
  if (force == Force::blas || force == Force::panel || force == Force::before) return false;
  const int64_t weight_bytes = (s.input_size + s.hidden) * s.gates * s.hidden * int64_t(sizeof(float));
  const auto& lim = step_input_limits[s.backward ? 1 : 0];
  const int64_t gi_bytes = s.rows * s.gates * s.hidden * int64_t(sizeof(float));
  return s.batch >= kStepInputMinRows && (weight_bytes <= lim[0].load(std::memory_order_relaxed) ||
                                          weight_bytes <= s.batch * lim[1].load(std::memory_order_relaxed) ||
                                          (!s.backward && gi_bytes > kLargeGiBytes &&
                                           weight_bytes <= s.batch * kLargeGiBytesPerRow));
}

}  // namespace

LoopPlan plan_loop(const LayerShape& s) {
  const LoopOverrides force = loop_overrides();
  LoopPlan p;
  p.fused = use_fused_steps(s, force.step_gemm);
  const Force input = s.backward && force.backward_input_gemm != Force::measured ? force.backward_input_gemm
                                                                                : force.input_gemm;
  p.step_input = use_step_input_gemm(s, p.fused, input);
  p.panel_input = !p.step_input && use_panel_input_gemm(s, input);
  // The backward steps also add to the weight gradients (AVX-512) below the in-step projection's
  // rows, where three GEMMs after the loop cost more than the loop (T=5 B=3 H=20 fwd+bwd vs torch,
  // in the steps / after: RNN 1.32 / 1.17, GRU 2.52 / 2.25).
  p.step_weight_grads = p.fused && (p.step_input || s.batch < kStepInputMinRows) &&
                        kernels().rank_update_f != nullptr;
  return p;
}

void set_loop_limits(const LoopLimits& limits) {
  const StepInputLimits* pass[2] = {&limits.forward, &limits.backward};
  for (int k = 0; k < 2; ++k) {
    step_input_limits[k][0].store(pass[k]->cached_bytes, std::memory_order_relaxed);
    step_input_limits[k][1].store(pass[k]->bytes_per_row, std::memory_order_relaxed);
    step_input_limits[k][2].store(pass[k]->panel_max_bytes, std::memory_order_relaxed);
  }
}

LoopLimits loop_limits() {
  auto get = [](int k) {
    return StepInputLimits{step_input_limits[k][0].load(std::memory_order_relaxed),
                           step_input_limits[k][1].load(std::memory_order_relaxed),
                           step_input_limits[k][2].load(std::memory_order_relaxed)};
  };
  return {get(0), get(1)};
}

std::string loop_plan_name(const LoopPlan& p) {
  if (!p.fused) return "blas";
  return p.step_input ? "panel+step" : "panel";
}

}  // namespace fastrnn
