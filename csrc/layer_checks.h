// Validation of one layer call, shared by the CPU (csrc/rnn.cpp) and CUDA (csrc/cuda/rnn.cpp)
// extensions: every shape, dtype, device and index range is checked here before any kernel
// touches memory.  `where` names the extension in the messages.  What differs by backend (the
// device type of x, the dtypes its kernels run) each caller checks before check_layer.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "cell_math.h"

namespace fastrnn {
namespace checks {

using at::Tensor;
using OptTensor = c10::optional<at::Tensor>;

inline bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

inline int cell_id(const char* where, const std::string& cell) {
  if (cell == "lstm") return kLSTM;
  if (cell == "gru") return kGRU;
  if (cell == "rnn_tanh") return kRNNTanh;
  if (cell == "rnn_relu") return kRNNRelu;
  TORCH_CHECK_VALUE(false, where, ": unknown cell type '", cell, "'; expected 'lstm', 'gru', 'rnn_tanh' or 'rnn_relu'");
  return 0;
}

inline void check_x_2d(const char* where, const Tensor& x) {
  TORCH_CHECK(x.defined() && x.dim() == 2, where, ": x must be 2-D [N, I]");
}

inline void check_tensor(const char* where, const Tensor& t, const std::string& name, const Tensor& x,
                         c10::ScalarType dt, int64_t dim) {
  TORCH_CHECK(t.defined(), where, ": ", name, " is undefined");
  TORCH_CHECK(t.device() == x.device(), where, ": ", name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dt, where, ": ", name, " must have dtype ", dt, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, where, ": ", name, " must be ", dim, "-D, got ", t.dim(), "-D with shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), where, ": ", name, " must be contiguous");
}

inline void check_shape(const char* where, const Tensor& t, const std::string& name, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, where, ": ", name, " has the wrong shape. Expected ", want, ", got ", t.sizes());
}

struct LayerDims {
  int cell = 0, G = 0;
  int64_t N = 0, I = 0, D = 0, B = 0, H = 0, Hout = 0, T = 0;
  bool proj = false, packed = false;
  std::vector<int64_t> sizes, offs;  // per step: active rows and first row
};

// x: already checked by the caller to be 2-D, on its device type, of a dtype it runs.
inline LayerDims check_layer(const char* where, const std::string& cell, const Tensor& x,
                             const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                             const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                             const std::vector<OptTensor>& w_hr, c10::optional<c10::ScalarType> state_dtype = {}) {
  // state_dtype: h0/c0's dtype where it is not x's (native bf16: float32 state)
  LayerDims d;
  d.cell = cell_id(where, cell);
  d.G = cell_traits(d.cell).G;
  const auto dt = x.scalar_type();
  check_tensor(where, x, "x", x, dt, 2);
  const auto sdt = state_dtype.value_or(dt);
  check_tensor(where, h0, "h0", x, sdt, 3);
  d.N = x.size(0);
  d.I = x.size(1);
  d.D = h0.size(0);
  d.B = h0.size(1);
  d.Hout = h0.size(2);
  TORCH_CHECK(d.D == 1 || d.D == 2, where, ": h0.size(0) is the number of directions, 1 or 2; got ", d.D);
  TORCH_CHECK((int64_t)w_ih.size() == d.D && (int64_t)w_hh.size() == d.D && (int64_t)w_hr.size() == d.D, where,
              ": expected one w_ih, w_hh and w_hr entry per direction (", d.D, "), got ", w_ih.size(), ", ",
              w_hh.size(), ", ", w_hr.size());
  check_tensor(where, w_hh[0], "w_hh[0]", x, dt, 2);
  TORCH_CHECK(w_hh[0].size(0) % d.G == 0 && w_hh[0].size(0) > 0, where,
              ": w_hh.size(0) must be a positive multiple of ", d.G, " for ", cell, ", got ", w_hh[0].size(0));
  d.H = w_hh[0].size(0) / d.G;
  d.proj = given(w_hr[0]);
  TORCH_CHECK(!d.proj || d.cell == kLSTM, where, ": w_hr (proj_size) exists for lstm only");
  if (!d.proj)
    TORCH_CHECK(d.Hout == d.H, where, ": h0.size(2) must equal hidden_size. Expected ", d.H, ", got ", d.Hout);
  for (int64_t k = 0; k < d.D; ++k) {
    const std::string s = "[" + std::to_string(k) + "]";
    check_tensor(where, w_ih[k], "w_ih" + s, x, dt, 2);
    check_shape(where, w_ih[k], "w_ih" + s, {d.G * d.H, d.I});
    check_tensor(where, w_hh[k], "w_hh" + s, x, dt, 2);
    check_shape(where, w_hh[k], "w_hh" + s, {d.G * d.H, d.Hout});
    TORCH_CHECK(given(w_hr[k]) == d.proj, where, ": w_hr must be given for every direction or for none");
    if (d.proj) {
      check_tensor(where, *w_hr[k], "w_hr" + s, x, dt, 2);
      check_shape(where, *w_hr[k], "w_hr" + s, {d.Hout, d.H});
    }
  }
  TORCH_CHECK(given(c0) == cell_traits(d.cell).has_c, where, ": c0 must be given for lstm and only for lstm");
  if (given(c0)) {
    check_tensor(where, *c0, "c0", x, sdt, 3);
    check_shape(where, *c0, "c0", {d.D, d.B, d.H});
  }
  if (given(batch_sizes)) {
    const Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1, where,
                ": batch_sizes must be a 1-D int64 CPU tensor, got ", bs.scalar_type(), " ", bs.dim(), "-D on ",
                bs.device());
    const Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    d.packed = true;
    d.T = bs.numel();
    int64_t total = 0, prev = d.B;
    for (int64_t t = 0; t < d.T; ++t) {
      TORCH_CHECK(p[t] >= 1 && p[t] <= prev, where, ": batch_sizes must be positive, non-increasing and at most "
                  "h0.size(1) = ", d.B, "; got ", bs);
      prev = p[t];
      d.sizes.push_back(p[t]);
      d.offs.push_back(total);
      total += p[t];
    }
    TORCH_CHECK(total == d.N, where, ": batch_sizes must sum to x.size(0). Expected ", d.N, ", got ", total);
  } else {
    TORCH_CHECK(d.B > 0 ? d.N % d.B == 0 : d.N == 0, where, ": x.size(0) must be a multiple of the batch size "
                "h0.size(1) = ", d.B, ", got ", d.N);
    d.T = d.B > 0 ? d.N / d.B : 0;
    for (int64_t t = 0; t < d.T; ++t) {
      d.sizes.push_back(d.B);
      d.offs.push_back(t * d.B);
    }
  }
  return d;
}

// The backward call's own arguments: the forward's saved tensors ({save [D, N, S*H] of dtype
// save_dt, h_{t-1} [D, N, Hout], r_t [D, N, H] with proj}) and the incoming gradients.
inline void check_backward(const char* where, const LayerDims& d, const Tensor& x, int64_t S, c10::ScalarType save_dt,
                           const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                           const OptTensor& dcn) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(saved.size() == (d.proj ? 3u : 2u), where, ": saved must hold ", d.proj ? 3 : 2,
              " tensors from forward(train=True), got ", saved.size());
  check_tensor(where, saved[0], "saved[0]", x, save_dt, 3);
  check_shape(where, saved[0], "saved[0]", {d.D, d.N, S * d.H});
  check_tensor(where, saved[1], "saved[1]", x, dt, 3);
  check_shape(where, saved[1], "saved[1]", {d.D, d.N, d.Hout});
  if (d.proj) {
    check_tensor(where, saved[2], "saved[2]", x, dt, 3);
    check_shape(where, saved[2], "saved[2]", {d.D, d.N, d.H});
  }
  check_tensor(where, dout, "dout", x, dt, 2);
  check_shape(where, dout, "dout", {d.N, d.D * d.Hout});
  check_tensor(where, dhn, "dhn", x, dt, 3);
  check_shape(where, dhn, "dhn", {d.D, d.B, d.Hout});
  TORCH_CHECK(given(dcn) == cell_traits(d.cell).has_c, where, ": dcn must be given for lstm and only for lstm");
  if (given(dcn)) {
    check_tensor(where, *dcn, "dcn", x, dt, 3);
    check_shape(where, *dcn, "dcn", {d.D, d.B, d.H});
  }
}

}  // namespace checks
}  // namespace fastrnn
