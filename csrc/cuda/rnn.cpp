// fastrnn._cuda_ext: the cuda backend.  One layer (all directions) per call, forward and backward,
// with the same signature and saved-tensor scheme as the cpp backend (csrc/rnn.cpp):
//
//   forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
//       -> (out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None, saved)
//   backward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, saved, dout, dhn, dcn,
//            need_dx, need_dw) -> (dx, dh0, dc0, then per direction dw_ih, dw_hh, db_ih, db_hh, dw_hr)
//
// Shapes and semantics are those of fastrnn.backends.reference.rnn_layer.  The structure
// (DESIGN §3): one GEMM for the input projection of all steps and both directions; a host time
// loop issuing per step one recurrent GEMM (at::mm_out into a preallocated buffer: torch runs it
// with cuBLAS on the current stream) and ONE fused pointwise kernel (pointwise.cu) on the same
// stream; no device allocation inside the loop.  Backward runs the reverse loop (fused gate
// grads, then the dh_{t-1} GEMM) and computes every weight gradient as one GEMM over all steps.
//
// Dtypes: float32, float64, float16, bfloat16.  Storage type T = x's dtype for everything a GEMM
// touches; the cell state, its gradient and the saved activations are float (double for double)
// — see cells.cuh.  So saved = {save [D, N, S*H] in A, hprev [D, N, Hout] in T, R [D, N, H] in T
// (proj only)}.
//
// Built with FASTRNN_CUDA_EMULATE, the same host code runs on CPU tensors against emulate.cpp's
// CPU implementation of launch.h: tests on machines without a GPU exercise this whole file.
#include <torch/extension.h>

#ifndef FASTRNN_CUDA_EMULATE
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <limits>
#include <string>
#include <vector>

#include "../layer_checks.h"
#include "../layer_grads.h"
#include "launch.h"

namespace fastrnn {
namespace cuda {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

#ifdef FASTRNN_CUDA_EMULATE
constexpr const char* kWhere = "fastrnn._cuda_ext (CPU emulation)";
bool on_device(const Tensor& t) { return t.device().is_cpu(); }
const char* kDeviceWord = "a CPU";
#else
constexpr const char* kWhere = "fastrnn._cuda_ext";
bool on_device(const Tensor& t) { return t.device().is_cuda(); }
const char* kDeviceWord = "a CUDA";
#endif

// Makes x's device current and yields its current torch stream (the one at::mm_out uses).
struct OnDevice {
#ifdef FASTRNN_CUDA_EMULATE
  explicit OnDevice(const Tensor&) {}
  void* stream() const { return nullptr; }
#else
  c10::cuda::CUDAGuard guard;
  explicit OnDevice(const Tensor& x) : guard(x.device()) {}
  void* stream() const { return c10::cuda::getCurrentCUDAStream(guard.current_device().index()).stream(); }
#endif
};

void check_launch(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, kWhere, ": ", what, " failed: ", err ? err : "");
}

// ---------------------------------------------------------------------------------------
// Validation (before any memory is touched).
int dtype_id(c10::ScalarType dt) {
  switch (dt) {
    case at::kFloat: return kFloat32;
    case at::kDouble: return kFloat64;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, kWhere, ": the cuda kernels run float32, float64, float16 and bfloat16, got ", dt);
  }
  return 0;
}

// The type of the cell state, its gradient and the saved activations.
c10::ScalarType acc_type(c10::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

using checks::given;

void check_tensor(const Tensor& t, const std::string& name, const Tensor& x, c10::ScalarType dt, int64_t dim) {
  checks::check_tensor(kWhere, t, name, x, dt, dim);
}

void check_shape(const Tensor& t, const std::string& name, at::IntArrayRef want) {
  checks::check_shape(kWhere, t, name, want);
}

// The shared checks (layer_checks.h) plus what this backend adds: the kernels' dtype id and the
// cell's traits (cell_math.h), which this loop reads at run time instead of per-cell templates.
struct Dims : checks::LayerDims {
  int S = 0, dtype = 0;
  CellTraits traits{};
};

Dims check_layer(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0,
                 const OptTensor& c0, const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                 const std::vector<OptTensor>& w_hr) {
  checks::check_x_2d(kWhere, x);
  TORCH_CHECK(on_device(x), kWhere, ": x must be ", kDeviceWord, " tensor, got device ", x.device());
  Dims d;
  d.dtype = dtype_id(x.scalar_type());
  static_cast<checks::LayerDims&>(d) = checks::check_layer(kWhere, cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  d.traits = cell_traits(d.cell);
  d.S = d.traits.S;
  return d;
}

// Output and work buffers.  The CPU emulation fills them with NaN, so tests see any element the
// loop fails to write (the GPU tests leave NaN in the caching allocator's free blocks instead).
Tensor uninit(at::IntArrayRef sizes, const at::TensorOptions& opt) {
#ifdef FASTRNN_CUDA_EMULATE
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), opt);
#else
  return at::empty(sizes, opt);
#endif
}

// Address of element `offset` of a contiguous tensor (the kernels take raw pointers).
void* at_elem(const Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data_ptr()) + offset * static_cast<int64_t>(t.element_size());
}

// Views of the first `bs` rows of `t` for every batch size a step uses, made before the loop.
std::vector<Tensor> row_views(const Tensor& t, const Dims& d) {
  std::vector<Tensor> v(d.B + 1);
  for (int64_t bs : d.sizes)
    if (!v[bs].defined()) v[bs] = t.narrow(0, 0, bs);
  return v;
}

// Views of the rows of every step of `t` (rows offs[t] .. offs[t] + sizes[t]), made before the loop.
std::vector<Tensor> step_views(const Tensor& t, const Dims& d) {
  std::vector<Tensor> v(d.T);
  for (int64_t s = 0; s < d.T; ++s) v[s] = t.narrow(0, d.offs[s], d.sizes[s]);
  return v;
}

// ---------------------------------------------------------------------------------------
// Forward of one layer.
std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward(
    const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih,
    const std::vector<OptTensor>& b_hh, const std::vector<OptTensor>& w_hr, bool train) {
  const Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  TORCH_CHECK((int64_t)b_ih.size() == d.D && (int64_t)b_hh.size() == d.D, kWhere,
              ": expected one b_ih and b_hh entry (a tensor or None) per direction");
  for (int64_t k = 0; k < d.D; ++k) {
    for (const OptTensor* b : {&b_ih[k], &b_hh[k]}) {
      if (given(*b)) {
        check_tensor(**b, "bias", x, x.scalar_type(), 1);
        check_shape(**b, "bias", {d.G * d.H});
      }
    }
  }
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = d.G * d.H, S = d.S, nT = d.T;
  const bool has_c = d.traits.has_c;
  const int split_gate = d.traits.split_gate;
  const auto optT = x.options();
  const auto optA = optT.dtype(acc_type(x.scalar_type()));
  OnDevice on(x);
  void* stream = on.stream();
  pybind11::gil_scoped_release no_gil;

  // Input projection of all steps and both directions: one GEMM with the biases folded in
  // (summed in A, rounded to T once).  The split gate's recurrent bias stays out (GRU: n =
  // tanh(gi_n + r * (W_hn h + b_hn))); cell_math.h's kSplitGate.
  Tensor wcat = D == 1 ? w_ih[0] : at::cat({w_ih[0], w_ih[1]}, 0);
  bool has_bias = false;
  std::vector<Tensor> bias_parts, bhn(D);
  for (int64_t k = 0; k < D; ++k) {
    Tensor b = at::zeros({GH}, optA);
    if (given(b_ih[k])) b.add_(b_ih[k]->to(optA.dtype()));
    if (given(b_hh[k])) {
      Tensor bh = b_hh[k]->to(optA.dtype());
      if (split_gate >= 0) {
        const int64_t s0 = split_gate * H, s1 = s0 + H;   // the split gate's block
        b.narrow(0, 0, s0).add_(bh.narrow(0, 0, s0));
        if (s1 < GH) b.narrow(0, s1, GH - s1).add_(bh.narrow(0, s1, GH - s1));
        bhn[k] = bh.narrow(0, s0, H).contiguous();
      } else {
        b.add_(bh);
      }
    }
    has_bias = has_bias || given(b_ih[k]) || given(b_hh[k]);
    bias_parts.push_back(b);
  }
  Tensor gi = uninit({N, D * GH}, optT);
  if (has_bias)
    at::addmm_out(gi, (D == 1 ? bias_parts[0] : at::cat(bias_parts, 0)).to(optT.dtype()), x, wcat.t());
  else
    at::mm_out(gi, x, wcat.t());

  Tensor out = uninit({N, D * Hout}, optT);
  Tensor hn = h0.clone();  // the state is updated in place: rows that ended keep their last h
  Tensor cn = has_c ? c0->to(optA, /*non_blocking=*/false, /*copy=*/true) : Tensor();
  Tensor save, hprev, R;
  if (train) {
    save = uninit({D, N, S * H}, optA);
    hprev = uninit({D, N, Hout}, optT);
    if (d.proj) R = uninit({D, N, H}, optT);
  }
  Tensor gh = uninit({B, GH}, optT);
  Tensor rbuf = (d.proj && !train) ? uninit({B, H}, optT) : Tensor();
  std::vector<Tensor> gh_rows = row_views(gh, d);
  std::vector<Tensor> rbuf_rows = rbuf.defined() ? row_views(rbuf, d) : std::vector<Tensor>();
  const int64_t esz = x.element_size();

  for (int64_t k = 0; k < D; ++k) {
    const bool rev = k == 1;
    const Tensor hs = hn[k];                    // [B, Hout], contiguous
    std::vector<Tensor> hs_rows = row_views(hs, d);
    const Tensor w_hh_t = w_hh[k].t();
    const Tensor w_hr_t = d.proj ? w_hr[k]->t() : Tensor();
    const std::vector<Tensor> r_steps = (train && d.proj) ? step_views(R[k], d) : std::vector<Tensor>();
    FwdArgs a{};
    a.ldgi = D * GH;
    a.gh = gh.data_ptr();
    a.ldgh = GH;
    a.bhn = bhn[k].defined() ? bhn[k].data_ptr() : nullptr;
    a.hin = hs.data_ptr();
    a.ldhin = Hout;
    a.c = has_c ? at_elem(cn, k * B * H) : nullptr;
    a.ldc = H;
    a.ldout = D * Hout;
    a.ldhprev = Hout;
    a.ldsave = S * H;
    a.H = H;
    for (int64_t s = 0; s < nT; ++s) {
      const int64_t t = rev ? nT - 1 - s : s;
      const int64_t bs = d.sizes[t], row0 = d.offs[t];
      if (train && d.proj)   // without proj the kernel copies h_{t-1} itself
        check_launch(copy_rows(at_elem(hprev, (k * N + row0) * Hout), Hout, hs.data_ptr(), Hout, bs, Hout, esz,
                               stream), "copying h_{t-1}");
      at::mm_out(gh_rows[bs], hs_rows[bs], w_hh_t);
      a.gi = at_elem(gi, row0 * D * GH + k * GH);
      a.save = train ? at_elem(save, (k * N + row0) * S * H) : nullptr;
      a.rows = bs;
      if (d.proj) {
        a.hout = train ? at_elem(R, (k * N + row0) * H) : rbuf.data_ptr();
        a.ldhout = H;
        a.hprev = nullptr;
        a.out = nullptr;
      } else {
        a.hout = hs.data_ptr();
        a.ldhout = Hout;
        a.hprev = train ? at_elem(hprev, (k * N + row0) * Hout) : nullptr;
        a.out = at_elem(out, row0 * D * Hout + k * Hout);
      }
      check_launch(launch_fwd(d.cell, d.dtype, a, stream), "the forward cell kernel");
      if (d.proj) {
        at::mm_out(hs_rows[bs], train ? r_steps[t] : rbuf_rows[bs], w_hr_t);
        check_launch(copy_rows(at_elem(out, row0 * D * Hout + k * Hout), D * Hout, hs.data_ptr(), Hout, bs, Hout,
                               esz, stream), "copying h_t to the output");
      }
    }
  }
  std::vector<Tensor> saved;
  if (train) {
    saved = {save, hprev};
    if (d.proj) saved.push_back(R);
  }
  OptTensor cn_out;
  if (has_c) cn_out = cn.to(optT.dtype());
  return {out, hn, cn_out, saved};
}

// ---------------------------------------------------------------------------------------
// Backward of one layer.
std::vector<OptTensor> backward(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes,
                                const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
                                const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                const OptTensor& dcn, bool need_dx, bool need_dw) {
  const Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  const auto dt = x.scalar_type(), adt = acc_type(dt);
  checks::check_backward(kWhere, d, x, d.S, adt, saved, dout, dhn, dcn);

  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = d.G * d.H, S = d.S, nT = d.T;
  const bool has_c = d.traits.has_c, split = d.traits.split_gate >= 0;
  const auto optT = x.options();
  const auto optA = optT.dtype(adt);
  const Tensor& save = saved[0];
  const Tensor& hprev = saved[1];
  OnDevice on(x);
  void* stream = on.stream();
  pybind11::gil_scoped_release no_gil;

  Tensor dgi = uninit({N, D * GH}, optT);
  Tensor dgh = split ? uninit({N, D * GH}, optT) : dgi;
  Tensor dh = dhn.clone();
  Tensor dc = has_c ? dcn->to(optA, /*non_blocking=*/false, /*copy=*/true) : Tensor();
  Tensor dHt = d.proj ? uninit({D, N, Hout}, optT) : Tensor();
  Tensor dr = d.proj ? uninit({B, H}, optT) : Tensor();
  std::vector<Tensor> dr_rows = d.proj ? row_views(dr, d) : std::vector<Tensor>();

  for (int64_t k = 0; k < D; ++k) {
    const bool rev = k == 1;
    const Tensor dhs = dh[k];                   // [B, Hout], contiguous
    std::vector<Tensor> dh_rows = row_views(dhs, d);
    const std::vector<Tensor> dg_steps = step_views(dgh.narrow(1, k * GH, GH), d);
    std::vector<Tensor> dht_steps, dout_steps;
    if (d.proj) {
      dht_steps = step_views(dHt[k], d);
      dout_steps = step_views(dout.narrow(1, k * Hout, Hout), d);
    }
    BwdArgs a{};
    a.lddout = D * Hout;
    a.dc = has_c ? at_elem(dc, k * B * H) : nullptr;
    a.lddc = H;
    a.ldsave = S * H;
    a.ldhp = Hout;
    a.lddgi = D * GH;
    a.lddgh = D * GH;
    a.H = H;
    for (int64_t s = 0; s < nT; ++s) {
      const int64_t t = rev ? s : nT - 1 - s;   // the forward's order, reversed
      const int64_t bs = d.sizes[t], row0 = d.offs[t];
      a.save = at_elem(save, (k * N + row0) * S * H);
      a.hprev = at_elem(hprev, (k * N + row0) * Hout);
      a.dgi = at_elem(dgi, row0 * D * GH + k * GH);
      a.dgh = at_elem(dgh, row0 * D * GH + k * GH);
      a.rows = bs;
      if (d.proj) {
        // dL/dh_t = carried + output grad (kept for dW_hr); dL/dr_t = dL/dh_t W_hr.
        at::add_out(dht_steps[t], dh_rows[bs], dout_steps[t]);
        at::mm_out(dr_rows[bs], dht_steps[t], *w_hr[k]);
        a.dh = dr.data_ptr();
        a.lddh = H;
        a.dout = nullptr;
      } else {
        a.dh = dhs.data_ptr();
        a.lddh = Hout;
        a.dout = at_elem(dout, row0 * D * Hout + k * Hout);
      }
      check_launch(launch_bwd(d.cell, d.dtype, a, stream), "the backward cell kernel");
      // dL/dh_{t-1} = dG_h W_hh (+ the direct term a kDirectPrevH cell's kernel left in dh).
      Tensor& dprev = dh_rows[bs];
      if (d.traits.direct_prev_h)
        at::addmm_out(dprev, dprev, dg_steps[t], w_hh[k]);
      else
        at::mm_out(dprev, dg_steps[t], w_hh[k]);
    }
  }

  // dx and the weight gradients: one GEMM each over all steps (layer_grads.h).
  std::vector<OptTensor> res;
  append_layer_grads(res, x, w_ih, dgi, dgh, hprev, dh, has_c ? OptTensor(dc.to(dt)) : OptTensor(), dHt,
                     d.proj ? saved[2] : Tensor(), D, GH, split, need_dx, need_dw);
  return res;
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _cuda_ext
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fastrnn cuda backend: fused CUDA cell kernels for LSTM/GRU/RNN layers (forward and backward)";
  m.def("forward", &fastrnn::cuda::forward, "One layer forward; see csrc/cuda/rnn.cpp", py::arg("cell"),
        py::arg("x"), py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"), py::arg("train"));
  m.def("backward", &fastrnn::cuda::backward, "One layer backward; see csrc/cuda/rnn.cpp", py::arg("cell"),
        py::arg("x"), py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("w_hr"), py::arg("saved"), py::arg("dout"), py::arg("dhn"), py::arg("dcn"), py::arg("need_dx"),
        py::arg("need_dw"));
#ifdef FASTRNN_CUDA_EMULATE
  m.attr("emulated") = true;
#else
  m.attr("emulated") = false;
#endif
}
