// The end of a layer's backward, shared by the CPU (csrc/layer.cpp) and CUDA (csrc/cuda/rnn.cpp)
// host code: after the reverse time loop has left dL/d(pre-activation) of every step in dgi
// (input side) and dgh (recurrent side; the same tensor unless the cell has kSplitRecurrentBias,
// cell_math.h: GRU), the input gradient and every weight gradient is one GEMM (or one reduction)
// over all steps.  Only ATen calls, so the same code serves both devices.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fastrnn {

// Appends to `res`: dx (or None; `dx_done` when the loop made it), dh0, dc0 (or None), then,
// when need_dw, per direction dw_ih, dw_hh, db_ih, db_hh, dw_hr (None without proj; all of them
// from `dw_done` when the loop made them).
//   x [N, I]; dgi, dgh [N, D*GH]; hprev [D, N, Hout]; w_ih[k] [GH, I]
//   proj: dht [D, N, Hout] (dL/dh_t of every step) and r [D, N, H] (the projected r_t)
inline void append_layer_grads(std::vector<c10::optional<at::Tensor>>& res, const at::Tensor& x,
                               const std::vector<at::Tensor>& w_ih, const at::Tensor& dgi, const at::Tensor& dgh,
                               const at::Tensor& hprev, const at::Tensor& dh0, const c10::optional<at::Tensor>& dc0,
                               const at::Tensor& dht, const at::Tensor& r, int64_t D, int64_t GH, bool split_recurrent,
                               bool need_dx, bool need_dw, const at::Tensor& dx_done = at::Tensor(),
                               const std::vector<at::Tensor>& dw_done = {}, bool bf16_gemms = false) {
  using OptTensor = c10::optional<at::Tensor>;
  // bf16_gemms: a bf16 layer's gradients (returned in bf16): the products over all steps take bf16
  // operands with fp32 accumulation (oneDNN's AMX / AVX512_BF16 GEMMs, as torch's bf16 backward),
  // the result rounded once; bias sums stay fp32.  Measured: the three fp32 GEMMs were ~60% of a
  // bf16 LSTM B64 H512 fwd+bwd upcast.
  // Each operand is converted once (dG feeds dx, dW_ih and, unless split, dW_hh), and the products
  // stay bf16: the op layer returns the gradients in the layer's dtype.
  auto bf16 = [&](const at::Tensor& t) { return bf16_gemms ? t.to(at::kBFloat16) : t; };
  const at::Tensor dgi_m = bf16(dgi);
  const at::Tensor dgh_m = split_recurrent ? bf16(dgh) : dgi_m;
  auto mm = [&](const at::Tensor& a, const at::Tensor& b) { return at::mm(a, bf16(b)); };
  if (need_dx && dx_done.defined()) {  // the time loop computed it step by step
    res.push_back(dx_done);
  } else if (need_dx) {
    const at::Tensor wcat = D == 1 ? w_ih[0] : at::cat({w_ih[0], w_ih[1]}, 0);
    res.push_back(mm(dgi_m, wcat));
  } else {
    res.push_back(OptTensor());
  }
  res.push_back(dh0);
  res.push_back(dc0);
  if (!need_dw) return;
  if (!dw_done.empty()) {  // per direction dw_ih, dw_hh, db_ih, db_hh (split_recurrent; else db_ih again)
    for (int64_t k = 0; k < D; ++k) {
      res.push_back(dw_done[4 * k]);
      res.push_back(dw_done[4 * k + 1]);
      res.push_back(dw_done[4 * k + 2]);
      res.push_back(split_recurrent ? dw_done[4 * k + 3] : dw_done[4 * k + 2].clone());
      res.push_back(OptTensor());  // no proj in the loops that make them
    }
    return;
  }
  const at::Tensor dwih = mm(dgi_m.t(), x);  // [D*GH, I]: both directions in one GEMM
  for (int64_t k = 0; k < D; ++k) {
    const at::Tensor dgi_k = dgi.narrow(1, k * GH, GH);
    const at::Tensor dgh_k = dgh.narrow(1, k * GH, GH);
    res.push_back(dwih.narrow(0, k * GH, GH));
    res.push_back(mm(dgh_m.narrow(1, k * GH, GH).t(), hprev[k]));
    const at::Tensor dbi = dgi_k.sum(0);  // the bias sums from the float32 dG
    res.push_back(dbi);
    res.push_back(split_recurrent ? dgh_k.sum(0) : dbi.clone());  // distinct tensors: each becomes a .grad
    res.push_back(dht.defined() ? OptTensor(mm(bf16(dht[k]).t(), r[k])) : OptTensor());
  }
}

}  // namespace fastrnn
