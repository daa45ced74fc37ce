// Which C++ loop a layer call runs, decided once per call from its shape and the CPU's kernels:
// the float32 panel loops of fused_steps.h or the BLAS loop of layer.cpp, and where the input
// projection happens.  The rules and the measurements behind them are in loop_plan.cpp;
// FASTRNN_STEP_GEMM / FASTRNN_INPUT_GEMM force them (overrides.h).
#pragma once

#include <cstdint>
#include <string>

namespace fastrnn {

struct LayerShape {
  bool float32 = false;     // the panel kernels are float32 only
  bool proj = false;        // proj_size (LSTM): the BLAS loop only
  int64_t batch = 0;        // B, rows of the first step
  int64_t steps = 0;        // T
  int64_t rows = 0;         // N, rows of all steps (packed input: fewer than T * B)
  int64_t input_size = 0;   // I
  int64_t hidden = 0;       // H
  int64_t gates = 0;        // G
  bool backward = false;    // the plan of a backward call (its own in-step limits)
};

struct LoopPlan {
  bool fused = false;         // the panel loops of fused_steps.h (else the BLAS loop)
  bool step_input = false;    // fused: each step does its own input projection (backward: its dx rows)
  bool panel_input = false;   // not step_input: the projection of all steps on the panel kernel, not BLAS
  bool step_weight_grads = false;  // fused backward: the steps accumulate the weight gradients
};

LoopPlan plan_loop(const LayerShape& s);

// The thresholds of plan_loop that differ between CPUs: the in-step input projection (forward) or
// dx rows (backward) run where [W_ih; W_hh] of a direction is at most `cached_bytes`, or at most
// `bytes_per_row` per batch row, each pass with its own pair (the backward's dx does not depend on
// where the forward projected).  fastrnn/backends/cpp.py sets them from the CPU's row of
// fastrnn/dispatch_table.py when the extension loads (fitted by `python -m fastrnn.bench fit` from
// `python -m fastrnn.bench --plans` timings).
// And the panel loop itself runs a call of kBlasLoopMinRows rows or more only while W_hh of a
// direction is at most `panel_max_bytes` (float32); above, the BLAS loop (MKL's blocked GEMM per step).
struct StepInputLimits {
  int64_t cached_bytes;
  int64_t bytes_per_row;
  int64_t panel_max_bytes;
};
struct LoopLimits {
  StepInputLimits forward, backward;
};
void set_loop_limits(const LoopLimits& limits);
LoopLimits loop_limits();

// The plan as _ext.loop_plan reports it for auto's dispatch (fastrnn/backends/cpp.py): "panel+step",
// "panel" or "blas".
std::string loop_plan_name(const LoopPlan& p);

}  // namespace fastrnn
