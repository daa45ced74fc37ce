// fastrnn._ext's layer calls: one layer (all directions) per call, forward and backward.
//
//   forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
//       -> (out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None, saved)
//   backward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, saved, dout, dhn, dcn,
//            need_dx, need_dw, bf16_gemms) -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
//       bf16_gemms (a bf16 layer's backward, its values upcast: fastrnn/ops.py): the GEMMs over all
//       steps after the loop (dx, dw_ih, dw_hh, dw_hr) take bf16 operands (oneDNN, fp32 accumulation)
//
// Shapes and semantics are those of fastrnn.backends.reference.rnn_layer.  The structure
// (DESIGN §3): one GEMM for the input projection of all steps and both directions; a C++
// time loop doing per step one GEMM h_{t-1} W_hh^T into a preallocated buffer (blas.h) and ONE
// fused pointwise pass (cells.h, vectorised, split across threads); no allocation inside the
// loop.  Backward runs the reverse loop (fused gate grads + the dh_{t-1} GEMM) and then
// computes every weight gradient as one GEMM over all steps (layer_grads.h).  The float32 panel
// loops of fused_steps.h fold the input projection, dx and the weight gradients into the steps
// instead; loop_plan.h decides which loop runs.
//
// layer_forward.cpp and layer_backward.cpp hold the two passes; this header what they share.
// Every cell-specific choice in them is a trait of cell_math.h, never a cell name.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "cell_math.h"
#include "fused_steps.h"
#include "layer_checks.h"
#include "loop_plan.h"

namespace fastrnn {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward(
    const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih,
    const std::vector<OptTensor>& b_hh, const std::vector<OptTensor>& w_hr, bool train);

std::vector<OptTensor> backward(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes,
                                const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
                                const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                const OptTensor& dcn, bool need_dx, bool need_dw, bool bf16_gemms = false);

namespace layer {
using Dims = checks::LayerDims;
}

// A recurrent product of float32 operands on the bf16 kernels, for a bf16 layer's backward run
// upcast (its values are bf16, or rounded to bf16 as a forward GEMM operand would be):
// C[:bs, :N] (+)= bf16(A[:bs, :K]) W^T, W [N, K] float32 holding bf16 values (exact), packed once.
// Split over column blocks across threads when a product is large enough.  layer_forward_bf16.cpp.
class Bf16Product {
 public:
  Bf16Product(const float* W, int64_t N, int64_t K, int64_t max_rows);
  void operator()(int64_t bs, const float* A, int64_t lda, float* C, int64_t ldc, bool accumulate) const;

 private:
  int64_t N_, K_, Kp_, rows_;
  bool amx_;
  at::Tensor panels_, a_, c_;  // packed W; bf16 A [rows, Kp] (zero padding); fp32 C [rows, N]
};

// The native bfloat16 forward (layer_forward_bf16.cpp), for a call check_layer passed with x bf16.
std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward_bf16(
    const layer::Dims& d, const Tensor& x, const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
    const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih, const std::vector<OptTensor>& b_hh,
    const std::vector<OptTensor>& w_hr, bool train);

namespace layer {

// Pointwise passes are split across threads over the bs x H block, but only when a chunk
// holds enough work: waking the pool costs more than a whole step at B=1, H=128.
constexpr int64_t kGrain = 16384;

template <typename T, typename Args, typename Fn>
inline void run_pointwise(Fn fn, const Args& a, int64_t elems, int64_t grain) {
  if (elems <= grain || at::get_num_threads() == 1) {
    fn(a, 0, elems);
  } else {
    at::parallel_for(0, elems, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
}

// Both directions of a fused layer at once, one per thread, when there are two threads to
// spare: each direction's loop then runs with no barrier at all (and keeps its own W_hh in its
// core's cache) instead of two barriers-per-step loops one after the other.  The BLAS loop
// runs directions in turn, each split across the threads by MKL and the pointwise pass.
template <typename F>
inline void run_directions(int64_t D, bool fused, const F& direction) {
  if (fused && D == 2 && at::get_num_threads() >= 2 && !at::in_parallel_region()) {
    at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) direction(k, false);
    });
  } else {
    for (int64_t k = 0; k < D; ++k) direction(k, true);
  }
}

inline std::vector<StepSpan> step_spans(const std::vector<int64_t>& sizes, const std::vector<int64_t>& offs, bool rev) {
  std::vector<StepSpan> v(sizes.size());
  const size_t n = sizes.size();
  for (size_t s = 0; s < n; ++s) {
    const size_t t = rev ? n - 1 - s : s;
    v[s] = StepSpan{sizes[t], offs[t]};
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Validation (before any memory is touched).
constexpr const char* kWhere = "fastrnn._ext";
using checks::given;
using Dims = checks::LayerDims;

inline void check_tensor(const Tensor& t, const std::string& name, const Tensor& x, c10::ScalarType dt, int64_t dim) {
  checks::check_tensor(kWhere, t, name, x, dt, dim);
}

inline void check_shape(const Tensor& t, const std::string& name, at::IntArrayRef want) {
  checks::check_shape(kWhere, t, name, want);
}

inline Dims check_layer(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0,
                 const OptTensor& c0, const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                 const std::vector<OptTensor>& w_hr) {
  checks::check_x_2d(kWhere, x);
  TORCH_CHECK(x.device().is_cpu(), kWhere, ": x must be a CPU tensor, got device ", x.device());
  const auto dt = x.scalar_type();
  if (dt == at::kBFloat16 && bf16_kernels() != nullptr)  // native bf16: bf16 operands, float32 state
    return checks::check_layer(kWhere, cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, at::kFloat);
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, kWhere, ": the cpp kernels run float32 and float64",
              bf16_kernels() ? " and bfloat16" : "", ", got ", dt);
  return checks::check_layer(kWhere, cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
}

// The loop this layer call runs (loop_plan.h), decided once.
template <typename T>
LoopPlan plan_for(const Dims& d, bool backward) {
  LayerShape s;
  s.backward = backward;
  s.float32 = std::is_same<T, float>::value;
  s.proj = d.proj;
  s.batch = d.B;
  s.steps = d.T;
  s.rows = d.N;
  s.input_size = d.I;
  s.hidden = d.H;
  s.gates = d.G;
  return plan_loop(s);
}

// Calls fn(Cell{}, T{}) for the cell id and dtype of a checked call.
template <typename Fn>
auto with_cell_and_type(int cell, c10::ScalarType dt, Fn&& fn) {
  return with_cell(cell, [&](auto cell_tag) {
    using C = decltype(cell_tag);
    if (dt == at::kDouble) return fn(C{}, double{});
    return fn(C{}, float{});
  });
}

}  // namespace layer
}  // namespace fastrnn
