// The float32 time loops built on the packed panel GEMM (step_gemm.cpp): one parallel region
// for the whole loop in which each thread owns a range of 16-wide hidden-unit blocks and does
// both the recurrent product for those units and their pointwise cell pass, so a step ends at
// one barrier instead of a threaded BLAS call plus a threaded pointwise pass.
//
//   forward, thread owning hidden units J:   gh[:, gates of J] = h_{t-1} W_hh[gates of J]^T
//                                            cell(J) -> h_t[:, J] (into the other h buffer)
//   backward, thread owning hidden units J:  dh[:, J] (+)= dG_{t+1} W_hh[:, J]
//                                            cell grad(J) -> dG_t[:, gates of J]
// Forward reads all of h_{t-1} while other threads write h_t, hence two h buffers.  At small steps
// the threads need not meet at a barrier (run_steps_overlapped): a forward step first multiplies
// by the thread's own units of h_{t-1}, then waits for the others' and multiplies by theirs; a
// backward step lets its own dG columns flow into dh first.  Used for
// float32 without proj_size when the CPU has AVX2+FMA; layer_*.cpp keep the BLAS loop otherwise
// (loop_plan.cpp decides).
// From 4 rows the loops also take over the input side (StepInput, StepInputGrad): each forward
// step multiplies [x_t, h_{t-1}] by the stacked [W_ih; W_hh] panels, and each backward step makes
// its dx rows (and, AVX-512, adds to the weight gradients), so every large product of the layer
// runs on the panel kernels with its operands still in cache.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "kernel_table.h"
#include "overrides.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastrnn {

constexpr int64_t kPanel = 16;

inline int64_t blocks_of(int64_t H) { return (H + kPanel - 1) / kPanel; }

// Packs of at least this many floats (256 KiB) are split across threads: they run before a loop
// whose threads would otherwise wait for them.
constexpr int64_t kParallelPackFloats = int64_t(1) << 16;

// W_hh [G*H, K] (row-major) as the right operand of h W_hh^T: panel (jb, g) holds the 16 columns
// of gate g for hidden units 16jb.., as K rows of 16 (zero past H).  Layout [nb][G][K][16].
// With a second weight W2 [G*H, K2] (W_ih, for steps that also do their input projection) each
// panel is K2 rows of W2 then K rows of W: [nb][G][K2 + K][16], the layout of panel_gemm2.
// Packed once per layer call (not cached: a cache keyed on the weight could go stale through
// `.data` writes that bump no version counter), so it is made cheap instead: no separate zero
// fill, contiguous writes, 16 sequential row streams (measured: 30% less time per call than
// zero-fill + column-wise writes at H=512, GRU, T=1).
inline at::Tensor pack_gate_panels(const float* W, int64_t G, int64_t H, int64_t K, const float* W2 = nullptr,
                                   int64_t K2 = 0) {
  const int64_t nb = blocks_of(H), KP = K2 + K;
  at::Tensor out = at::empty({nb, G, KP, kPanel}, at::kFloat);
  float* o = out.data_ptr<float>();
  auto pack = [](float* panel, const float* rows, int64_t k_rows, int64_t ld, int64_t w) {
    for (int64_t k = 0; k < k_rows; ++k) {
      float* dst = panel + k * kPanel;
      for (int64_t c = 0; c < w; ++c) dst[c] = rows[c * ld + k];
      for (int64_t c = w; c < kPanel; ++c) dst[c] = 0.f;
    }
  };
  // Split across threads from 256 KiB of panels: the pack runs before a loop whose threads would
  // otherwise wait for it (LSTM H=256 with W_ih: 2 MiB, ~5% of a T=100 B=16 forward; GRU B=1
  // H=256, W_hh alone: 0.75 MiB, fwd 0.98 -> 0.90 ms).
  const int64_t panels = nb * G, grain = panels * KP * kPanel >= kParallelPackFloats ? 1 : panels;
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t jb = p / G, g = p - jb * G, w = std::min(kPanel, H - jb * kPanel);
      float* panel = o + p * KP * kPanel;
      const int64_t row0 = g * H + jb * kPanel;
      if (K2 > 0) pack(panel, W2 + row0 * K2, K2, K2, w);
      pack(panel + K2 * kPanel, W + row0 * K, K, K, w);
    }
  });
  return out;
}

// W [K, N] (row-major) as the right operand of A W: panel jb holds columns 16jb.. as K rows of
// 16 (zero past N).  Layout [nb][K][16].
inline at::Tensor pack_col_panels(const float* W, int64_t K, int64_t N) {
  const int64_t nb = blocks_of(N);
  at::Tensor out = at::empty({nb, K, kPanel}, at::kFloat);
  float* o = out.data_ptr<float>();
  const int64_t grain = nb * K * kPanel >= kParallelPackFloats ? 1 : nb;
  at::parallel_for(0, nb, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t jb = b0; jb < b1; ++jb) {
      const int64_t w = std::min(kPanel, N - jb * kPanel);
      for (int64_t k = 0; k < K; ++k) {
        float* dst = o + (jb * K + k) * kPanel;
        std::memcpy(dst, W + k * N + jb * kPanel, sizeof(float) * w);
        std::fill(dst + w, dst + kPanel, 0.f);
      }
    }
  });
  return out;
}

// The input projection gi[:, gate columns] (+)= x W_ih^T of all steps on the panel kernel, W_ih
// [G*H, K] packed into gate panels once.  Work items are (row block, panel) pairs in row-block-
// major order, so each thread's contiguous share keeps its x rows in L2 while the panels stream.
// For large products: loop_plan.cpp's use_panel_input_gemm has the measurements.
inline void panel_input_projection(const KernelTable& kt, int64_t N, int64_t K, const float* x, const float* w_ih,
                                   int64_t G, int64_t H, float* gi, int64_t ldgi, bool accumulate) {
  if (N == 0 || K == 0) return;
  const int64_t nb = blocks_of(H), panels = nb * G;
  constexpr int64_t kRows = 256;
  const int64_t row_blocks = (N + kRows - 1) / kRows;
  at::Tensor wp = pack_gate_panels(w_ih, G, H, K);
  const float* P = wp.data_ptr<float>();
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t rb = i / panels, p = i - rb * panels, jb = p / G, g = p - jb * G;
      const int64_t r0 = rb * kRows, rows = std::min(kRows, N - r0);
      kt.panel_f(rows, K, x + r0 * K, K, P + p * K * kPanel, gi + r0 * ldgi + g * H + jb * kPanel, ldgi,
                 std::min(kPanel, H - jb * kPanel), accumulate);
    }
  });
}

// C[:, 16 b0 .. min(16 b1, N)) (+)= A[:M, :K] W for the column panels [b0, b1) of W packed by
// pack_col_panels ([nb][K][16]): up to four whole panels a call (PanelArgs::panels).
inline void panel_columns(const KernelTable& kt, int64_t M, int64_t K, const float* A, int64_t lda, const float* P,
                          float* C, int64_t ldc, int64_t N, int64_t b0, int64_t b1, bool accumulate,
                          int64_t KP = -1, int64_t k0 = 0) {
  // KP: the panels' depth where A is K columns of it starting at k0 (default: all K of them)
  if (KP < 0) KP = K;
  for (int64_t b = b0; b < b1;) {
    int64_t n = 1;
    while (n < 4 && b + n < b1 && (b + n + 1) * kPanel <= N) ++n;  // whole panels only
    PanelArgs pa{M, K, A, lda, 0, A, lda, P + (b * KP + k0) * kPanel, nullptr, C + b * kPanel, ldc,
                 std::min(kPanel, N - b * kPanel), accumulate};
    pa.panels = static_cast<int>(n);
    pa.panel_stride = KP * kPanel, pa.c_stride = kPanel;
    kt.panel2_f(pa);
    b += n;
  }
}

// Steps of fewer multiply-adds than this run on one thread: waking the pool costs a few
// microseconds.  Measured on the 2-core AMD EPYC Zen4, T=100, fwd ms split / one thread:
// RNN B1 H128 (16k) 0.25 / 0.19, GRU B1 H128 (49k) 0.40 / 0.39, RNN B1 H256 (66k) 0.43 / 0.45,
// GRU B1 H256 (197k) 0.96 / 1.30, LSTM B1 H512 (1M) 6.3 / 8.4.  FASTRNN_PARALLEL_STEP_MACS
// overrides it (overrides.h, for measuring).
constexpr int64_t kParallelStepMacs = 50000;

// The smallest step (in multiply-adds) split across threads in this call; past any real step
// when there is one thread.
inline int64_t parallel_step_macs() {
  if (at::get_num_threads() <= 1) return INT64_MAX;
  return overrides().parallel_step_macs.value_or(kParallelStepMacs);
}

struct StepSpan {
  int64_t bs, row0;  // active rows and their first row in the packed x / out
};

// Runs step(s, b0, b1) for s = 0..n-1 in order, each over the hidden blocks [b0, b1): split
// across the pool where split(s) says so, else on one thread, with every step finished before the
// next starts.  One OpenMP parallel region covers the whole loop and its threads wait for each
// other at a barrier between steps, instead of a region (at::parallel_for) per step: the fork and
// join of a region cost more than a whole step at one row (GRU B=1 H=256: ~12 us a step).
// Threads follow torch.set_num_threads; inside another parallel region this runs serially.
template <typename Split, typename Step>
void run_steps(int64_t n, int64_t nb, const Split& split, const Step& step) {
  bool any = false;
  for (int64_t s = 0; s < n && !any; ++s) any = split(s);
  const int64_t team = std::min<int64_t>(at::get_num_threads(), nb);
#ifdef _OPENMP
  if (any && team > 1 && !at::in_parallel_region()) {
#pragma omp parallel num_threads(static_cast<int>(team))
    {
      const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t chunk = (nb + nth - 1) / nth;
      const int64_t b0 = std::min(nb, tid * chunk), b1 = std::min(nb, b0 + chunk);
      for (int64_t s = 0; s < n; ++s) {
        if (split(s))
          step(s, b0, b1);
        else if (tid == 0)
          step(s, int64_t(0), nb);
#pragma omp barrier
      }
    }
    return;
  }
#endif
  for (int64_t s = 0; s < n; ++s) step(s, int64_t(0), nb);
}

// Forward steps of up to this many multiply-adds skip the barrier (run_steps_overlapped) where
// every step splits.  Measured on the 2-core Xeon, 2 threads, T=100, time with the barrier / without,
// alternating processes: B=1-4 H=256-512 LSTM 1.00-1.10, GRU 1.01-1.04, RNN 1.04-1.17; up to 8.4M
// (LSTM B16 H256, RNN B64 H256, LSTM B4 H512) 1.03-1.16; above it a tie or a loss within the
// noise (LSTM B16 H512 0.97-0.98, B64 H512 0.94-0.99, GRU B64 H256 0.94-1.08): the second pass
// over C costs there what the barrier saves.  With more threads than cores the gain grows (LSTM B4
// H256 on 2 cores, torch.set_num_threads(4 / 8): 5.9 / 6.4 ms a call with the barrier, 3.9 / 3.1
// without; RNN B4 H256 4.2 / 5.2 against 0.8 / 1.3): a waiting thread yields after a short spin.
// The backward uses the same limit (a step's dh, dx and weight-gradient multiply-adds): fwd+bwd
// with both loops overlapped where they qualify, same comparison, LSTM B1-4 H256 / B1 H512
// 1.01-1.06, GRU 1.02-1.05, RNN B1-16 1.04-1.16.
constexpr int64_t kOverlapStepMacs = int64_t(1) << 23;

// run_steps for a loop whose every step splits, without the barrier: step(s, b0, b1, await) calls
// await(s) before it reads any other thread's results of step s - 1 (it returns once every other
// thread has finished that step), so a thread does the part of its step that needs only its own
// results (the product with its own units of h_{t-1}) while the slower thread finishes, and a
// step's wait is one cache line per thread instead of a barrier round trip.  A thread is at most
// one step ahead of any other (it waits for their step s - 1 inside its step s), so a result of
// step s - 1 is overwritten at the earliest at the end of step s + 1, after the readers' step s
// ended: two buffers suffice.  Returns false (nothing run) where there is no team to split over.
template <typename Step>
bool run_steps_overlapped(int64_t n, int64_t nb, const Step& step) {
#ifdef _OPENMP
  const int64_t team = std::min<int64_t>(at::get_num_threads(), nb);
  if (team < 2 || at::in_parallel_region()) return false;
  struct alignas(64) Done {
    std::atomic<int64_t> steps{0};  // steps this thread has finished
  };
  std::vector<Done> done(static_cast<size_t>(team));
#pragma omp parallel num_threads(static_cast<int>(team))
  {
    const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t chunk = (nb + nth - 1) / nth;
    const int64_t b0 = std::min(nb, tid * chunk), b1 = std::min(nb, b0 + chunk);
    auto await = [&](int64_t s) {
      for (int64_t u = 0; u < nth; ++u) {
        if (u == tid) continue;
        // spin (a step is microseconds); yield after long waits so an oversubscribed core moves on
        for (int64_t spins = 0; done[u].steps.load(std::memory_order_acquire) < s; ++spins) {
          if (spins > 4096) std::this_thread::yield();
        }
      }
    };
    for (int64_t s = 0; s < n; ++s) {
      step(s, b0, b1, await);
      done[tid].steps.store(s + 1, std::memory_order_release);
    }
  }
  return true;
#else
  (void)n, (void)nb, (void)step;
  return false;
#endif
}

// The input side of a forward loop that does each step's input projection itself
// (loop_plan.cpp's use_step_input_gemm): x [N, I] (rows as the steps' row0), W_ih [G*H, I] and the
// summed biases [G*H] that the BLAS path folds into gi (gru: without b_hn).
struct StepInput {
  const float* x = nullptr;
  int64_t I = 0;
  const float* w_ih = nullptr;
  const float* bias = nullptr;  // nullptr: no biases
};

// Forward of one direction.  `a` is prepared by the caller (leading dims, c, bhn, H); this
// sets gi/gh/h/out/save per step.  h_state [B, H] holds h0 on entry and h_n on exit.
// Without `in.x`, gi [N, ldgi] holds every step's input projection (biases folded in).  With it,
// each step computes its pre-activations as one product per gate panel, x_t W_ih^T + h W_hh^T +
// bias accumulated in registers (panel_gemm2), into gh_buf: no gi pass over memory, and all the
// multiply-adds on the panel kernel.  gru's n gate keeps the two halves apart (n = tanh(gi_n +
// r * (W_hn h + b_hn))): its input half goes to a [B, G*H] step buffer whose r and z blocks stay
// zero; the other cells read gi as one zero row (ldgi 0), so the cell passes are unchanged.
template <class Cell>
void fused_forward(const KernelTable& kt, FwdFn<float> fwd, FwdArgs<float> a, const std::vector<StepSpan>& steps,
                   float* h_state, int64_t B, const float* w_hh, const StepInput& in, float* gi, int64_t ldgi,
                   float* out, int64_t ldout, float* save, float* hprev, float* gh_buf, bool split) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kReadsH = Cell::kDirectPrevH;
  constexpr int64_t kApartGate = Cell::kSplitGate;  // gru's n: input and hidden halves apart
  static_assert(kApartGate < 0 || kApartGate == G - 1, "the apart gate is the last");
  const int64_t H = a.H, GH = G * H, nb = blocks_of(H);
  const bool step_input = in.x != nullptr;
  const int64_t I = step_input ? in.I : 0, KP = I + H;
  at::Tensor wp = pack_gate_panels(w_hh, G, H, H, step_input ? in.w_ih : nullptr, I);
  const float* P = wp.data_ptr<float>();
  at::Tensor bias_pad, gi_step;
  if (step_input) {
    // Biases per panel, zero past H, so a tile loads 16 whatever the last block's width.
    bias_pad = at::zeros({G, nb * kPanel}, at::kFloat);
    if (in.bias)
      for (int64_t g = 0; g < G; ++g)
        std::memcpy(bias_pad.data_ptr<float>() + g * nb * kPanel, in.bias + g * H, sizeof(float) * H);
    gi_step = at::zeros({kApartGate >= 0 ? B : 1, GH}, at::kFloat);
    gi = gi_step.data_ptr<float>();
    ldgi = kApartGate >= 0 ? GH : 0;
  }
  const float* bias_p = step_input ? bias_pad.data_ptr<float>() : nullptr;
  const int64_t min_split = parallel_step_macs();
  at::Tensor spare = at::empty({B, H}, at::kFloat);
  float* hbuf[2] = {h_state, spare.data_ptr<float>()};
  const bool train = save != nullptr;
  const int64_t n = static_cast<int64_t>(steps.size());
  // The products of step st for hidden blocks [b0, b1) with the units [k0, k1) of h_{t-1} (hc):
  // `first` starts them (x_t's part and the biases with it, where the steps project their input),
  // the others add to them.  One call per group of panels that share their rows
  // (PanelArgs::panels): a block's gate panels, or up to four whole blocks of a one-gate cell.
  auto products = [&](const StepSpan& st, const float* hc, int64_t b0, int64_t b1, int64_t k0, int64_t k1,
                      bool first) {
    if (k1 <= k0 && !(first && step_input)) return;
    const int64_t skip = step_input ? I : 0;  // panel rows before h's
    for (int64_t jb = b0; jb < b1;) {
      const int64_t ncols = std::min(kPanel, H - jb * kPanel), col = jb * kPanel;
      const float* panel = P + jb * G * KP * kPanel;
      const float* x = step_input ? in.x + st.row0 * I : nullptr;
      PanelArgs pa = first && step_input
          ? PanelArgs{st.bs, I, x, I, k1 - k0, hc + k0, H, panel, bias_p + col, gh_buf + col, GH, ncols, false}
          : PanelArgs{st.bs, k1 - k0, hc + k0, H, 0, hc, H, panel + (skip + k0) * kPanel, nullptr, gh_buf + col, GH,
                      ncols, !first};
      if (first && step_input) pa.k2_row = I + k0;
      int64_t blocks = 1;
      if (G == 1) {  // whole blocks only: a group shares ncols
        while (blocks < 4 && jb + blocks < b1 && (jb + blocks + 1) * kPanel <= H) ++blocks;
        pa.panels = static_cast<int>(blocks);
        pa.panel_stride = KP * kPanel, pa.bias_stride = kPanel, pa.c_stride = kPanel;
      } else {  // gru's n gate (the last) keeps its input and hidden halves apart
        pa.panels = static_cast<int>(step_input && kApartGate >= 0 ? kApartGate : G);
        pa.panel_stride = KP * kPanel, pa.bias_stride = nb * kPanel, pa.c_stride = H;
      }
      kt.panel2_f(pa);
      if (step_input && kApartGate >= 0) {
        const float* pn = panel + kApartGate * KP * kPanel;
        const int64_t cn = kApartGate * H + col;
        if (first)
          kt.panel2_f(PanelArgs{st.bs, I, x, I, 0, hc, H, pn, bias_p + kApartGate * nb * kPanel + col, gi + cn, GH,
                                ncols, false});
        if (k1 > k0) kt.panel_f(st.bs, k1 - k0, hc + k0, H, pn + (I + k0) * kPanel, gh_buf + cn, GH, ncols, !first);
      }
      jb += blocks;
    }
  };
  // Everything of step si for blocks [b0, b1) after its products: the rows' copies, the cell pass.
  auto finish = [&](int64_t si, int64_t j0, int64_t j1) {
    const StepSpan& st = steps[si];
    const float* hc = hbuf[si & 1];
    float* hn = hbuf[(si & 1) ^ 1];
    const int64_t w = j1 - j0;
    // Rows past bs keep their state (packed input: they ended, or start later in reverse); gru's
    // cell pass reads h_{t-1} where it writes h_t, the others only write it.
    for (int64_t b = kReadsH ? 0 : st.bs; b < B; ++b) std::memcpy(hn + b * H + j0, hc + b * H + j0, sizeof(float) * w);
    if (train)
      for (int64_t b = 0; b < st.bs; ++b)
        std::memcpy(hprev + (st.row0 + b) * H + j0, hc + b * H + j0, sizeof(float) * w);
    FwdArgs<float> s = a;
    s.gi = step_input ? gi : gi + st.row0 * ldgi;
    s.ldgi = ldgi;
    s.gh = gh_buf;
    s.ldgh = GH;
    s.h = hn;
    s.ldh = H;
    s.out = out + st.row0 * ldout;
    s.save = train ? save + st.row0 * S * H : nullptr;
    for (int64_t b = 0; b < st.bs; ++b) fwd(s, b * H + j0, b * H + j1);
  };
  // The other threads' units of h_{t-1} sit in their caches: ask for every line at once, before
  // the product reaches them one at a time (each a cross-core miss that stalls the tile).
  // Measured on the 2-core Xeon (benchmarks/bench_latency.py, split = what two threads cost
  // beyond halving a step), B=1 H=256: LSTM 1.32 -> 1.02 us, GRU 1.05 -> 0.85 us.
  auto prefetch = [&](const float* hc, int64_t bs, int64_t k0, int64_t k1) {
    for (int64_t b = 0; b < bs; ++b)
      for (int64_t j = k0; j < k1; j += 16) __builtin_prefetch(hc + b * H + j);
  };
  auto step = [&](int64_t si, int64_t b0, int64_t b1) {
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H);
    if (j1 <= j0) return;
    prefetch(hbuf[si & 1], steps[si].bs, 0, H);
    products(steps[si], hbuf[si & 1], b0, b1, 0, H, true);
    finish(si, j0, j1);
  };
  // Every step split: no barrier.  Own units first, then the others' once written (a thread owns
  // one range of blocks, so the others' units are the two ranges around it).
  auto overlapped = [&](int64_t si, int64_t b0, int64_t b1, const auto& await) {
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H);
    if (j1 <= j0) return;
    const StepSpan& st = steps[si];
    const float* hc = hbuf[si & 1];
    products(st, hc, b0, b1, j0, j1, true);
    await(si);
    prefetch(hc, st.bs, 0, j0);
    prefetch(hc, st.bs, j1, H);
    products(st, hc, b0, b1, 0, j0, false);
    products(st, hc, b0, b1, j1, H, false);
    finish(si, j0, j1);
  };
  bool overlap = split && !loop_overrides().step_barrier;
  for (int64_t si = 0; si < n && overlap; ++si) {
    const int64_t macs = steps[si].bs * GH * KP;
    overlap = macs >= min_split && macs <= kOverlapStepMacs;
  }
  if (!(overlap && run_steps_overlapped(n, nb, overlapped)))
    run_steps(n, nb, [&](int64_t si) { return split && steps[si].bs * GH * KP >= min_split; }, step);
  if (n & 1) std::memcpy(h_state, hbuf[1], sizeof(float) * B * H);
}

// The gradients a backward loop's steps compute besides dG and dh (the mirror of StepInput),
// each optional (nullptr: left to one GEMM or reduction after the loop):
//   dx [N, I] (rows as the steps' row0) = dG W_ih, W_ih [G*H, I];
//   dw_ih [G*H, I] += dG^T x, dw_hh [G*H, H] += dG_h^T h_{t-1}, db_ih (db_hh: gru) [G*H] += the
//   column sums of dG (dG_h), zeroed by the caller; x [N, I] the layer input.
struct StepInputGrad {
  int64_t I = 0;
  const float* w_ih = nullptr;
  float* dx = nullptr;
  const float* x = nullptr;
  float* dw_ih = nullptr;
  float* dw_hh = nullptr;
  float* db_ih = nullptr;
  float* db_hh = nullptr;
};

constexpr int64_t kWeightGradRows = 256;

// Backward of one direction, steps in the forward's order (this walks them in reverse).
// dh [B, H] holds dL/dh_n on entry and dL/dh_0 on exit; `a` as in layer_backward.cpp's BLAS loop.
// With `in.dx`, the phase that lets a step's dG flow into dh also computes that step's dx rows,
// on the same threads (each takes the share of dx's 16-column blocks matching its hidden blocks)
// while dG is still in cache.  With `in.dw_ih`, each thread adds the rank update of the last
// ~kWeightGradRows rows of steps to the weight-gradient rows of its own hidden units right after
// their cell gradient, with no synchronisation (no other thread writes those rows in that step),
// instead of two GEMMs over all steps after the loop.
template <class Cell>
void fused_backward(const KernelTable& kt, BwdFn<float> bwd, BwdArgs<float> a, const std::vector<StepSpan>& steps,
                    float* dh, const float* w_hh, const StepInputGrad& in, const float* save, const float* hprev,
                    const float* dout, float* dgi, float* dgh, int64_t ldg, bool split) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kAcc = Cell::kDirectPrevH;  // gru's pass leaves the direct term dh_t * z in dh
  const int64_t H = a.H, GH = G * H, nb = blocks_of(H);
  at::Tensor wp = pack_col_panels(w_hh, GH, H);
  const float* P = wp.data_ptr<float>();
  const int64_t nbx = in.dx ? blocks_of(in.I) : 0, I = in.I;
  at::Tensor wx = in.dx ? pack_col_panels(in.w_ih, GH, in.I) : at::Tensor();
  const float* PX = in.dx ? wx.data_ptr<float>() : nullptr;
  const int64_t min_split = parallel_step_macs();
  // dG of step p (its gate columns [k0, k1) of every gate, all with k1 = H: all of them) into dh
  // (and dx) of blocks [b0, b1); `first` starts the sums (gru's dh keeps its direct term).
  auto flow_cols = [&](const StepSpan& p, int64_t b0, int64_t b1, int64_t k0, int64_t k1, bool first) {
    const int64_t x0 = b0 * nbx / nb, x1 = b1 * nbx / nb;
    for (int64_t g = 0; g < (k1 - k0 == H ? 1 : G); ++g) {
      const int64_t c0 = g * H + k0, K = k1 - k0 == H ? GH : k1 - k0;  // the whole row at once
      if (K <= 0) continue;
      const bool acc = !(first && g == 0);
      panel_columns(kt, p.bs, K, dgh + p.row0 * ldg + c0, ldg, P, dh, H, H, b0, b1, acc || kAcc, GH, c0);
      if (in.dx)
        panel_columns(kt, p.bs, K, dgi + p.row0 * ldg + c0, ldg, PX, in.dx + p.row0 * I, I, I, x0, x1, acc, GH, c0);
    }
  };
  auto flow = [&](const StepSpan& p, int64_t b0, int64_t b1) { flow_cols(p, b0, b1, 0, H, true); };
  // Rows [lo, hi) of finished steps (consecutive steps are contiguous rows) into the thread's
  // weight-gradient rows.
  auto weight_grads = [&](int64_t lo, int64_t hi, int64_t j0, int64_t j1) {
    const float* gi = dgi + lo * ldg;
    const float* gh = dgh + lo * ldg;
    const int64_t rows = hi - lo;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r0 = g * H + j0, M = j1 - j0;
      kt.rank_update_f(RankUpdateArgs{M, I, rows, gi + r0, ldg, in.x + lo * I, I, in.dw_ih + r0 * I, I});
      kt.rank_update_f(RankUpdateArgs{M, H, rows, gh + r0, ldg, hprev + lo * H, H, in.dw_hh + r0 * H, H});
      for (int64_t b = 0; b < rows; ++b) {
        float* __restrict dbi = in.db_ih + r0;
        const float* __restrict a = gi + b * ldg + r0;
        for (int64_t j = 0; j < M; ++j) dbi[j] += a[j];
        if (in.db_hh) {
          float* __restrict dbh = in.db_hh + r0;
          const float* __restrict c = gh + b * ldg + r0;
          for (int64_t j = 0; j < M; ++j) dbh[j] += c[j];
        }
      }
    }
  };
  // Step si (of the reversed steps) first lets the previous one's dG flow into dh, then runs its
  // cell gradient; the extra step n only flows the last one.
  const int64_t n = static_cast<int64_t>(steps.size());
  auto rev = [&](int64_t si) -> const StepSpan& { return steps[static_cast<size_t>(n - 1 - si)]; };
  // Weight gradients are added every chunk_steps steps, ~kWeightGradRows rows at a time: one
  // step's rank-bs update would read and write the thread's gradient rows for only bs
  // multiply-adds per element.
  int64_t rows_max = 1;
  for (const StepSpan& st : steps) rows_max = std::max(rows_max, st.bs);
  const int64_t chunk_steps = std::max<int64_t>(1, kWeightGradRows / rows_max);
  // Step si's cell gradient for units [j0, j1), and the weight gradients when a chunk ends.
  auto cell_grads = [&](int64_t si, int64_t j0, int64_t j1) {
    const StepSpan& st = rev(si);
    BwdArgs<float> s = a;
    s.dh = dh;
    s.lddh = H;
    s.save = save + st.row0 * S * H;
    s.hprev = hprev + st.row0 * H;
    s.dgi = dgi + st.row0 * ldg;
    s.dgh = dgh + st.row0 * ldg;
    s.dout = dout + st.row0 * a.lddout;
    for (int64_t b = 0; b < st.bs; ++b) bwd(s, b * H + j0, b * H + j1);
    if (in.dw_ih && ((si + 1) % chunk_steps == 0 || si + 1 == n)) {
      int64_t lo = INT64_MAX, hi = 0;
      for (int64_t c = si - si % chunk_steps; c <= si; ++c)
        lo = std::min(lo, rev(c).row0), hi = std::max(hi, rev(c).row0 + rev(c).bs);
      weight_grads(lo, hi, j0, j1);
    }
  };
  auto step = [&](int64_t si, int64_t b0, int64_t b1) {
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H);
    if (j1 <= j0) return;
    if (si > 0) flow(rev(si - 1), b0, b1);
    if (si < n) cell_grads(si, j0, j1);
  };
  // Every step split and small: no barrier (as the forward's).  The previous step's dG columns of
  // the thread's own units flow first, the others' once their cell gradients are done.
  auto overlapped = [&](int64_t si, int64_t b0, int64_t b1, const auto& await) {
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H);
    if (j1 <= j0) return;
    if (si > 0) {
      const StepSpan& p = rev(si - 1);
      flow_cols(p, b0, b1, j0, j1, true);
      await(si);
      flow_cols(p, b0, b1, 0, j0, false);
      flow_cols(p, b0, b1, j1, H, false);
    }
    if (si < n) cell_grads(si, j0, j1);
  };
  if (n == 0) return;
  const int64_t macs_per_row = GH * (H + nbx * kPanel + (in.dw_ih ? I + H : 0));
  bool overlap = split && !loop_overrides().step_barrier;
  for (int64_t si = 0; si < n && overlap; ++si) {
    const int64_t macs = rev(si).bs * macs_per_row;
    overlap = macs >= min_split && macs <= kOverlapStepMacs;
  }
  if (!(overlap && run_steps_overlapped(n + 1, nb, overlapped)))
    run_steps(n + 1, nb, [&](int64_t si) { return split && rev(si == n ? n - 1 : si).bs * macs_per_row >= min_split; },
              step);
}

}  // namespace fastrnn
