// The backward pass of one layer (layer.h has the contract).
#include "layer.h"

#include <pybind11/pybind11.h>

#include <memory>

#include "blas.h"
#include "kernel_table.h"
#include "layer_grads.h"
#include "scratch.h"

namespace fastrnn {
namespace layer {
namespace {

// ---------------------------------------------------------------------------------------
// Backward of one layer.
template <class Cell, typename T>
std::vector<OptTensor> backward_impl(const Dims& d, const Tensor& x, const std::vector<Tensor>& w_ih,
                                     const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                     const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                     const OptTensor& dcn, bool need_dx, bool need_dw, bool bf16_gemms) {
  constexpr int G = Cell::G, S = Cell::S;
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = G * H, nT = d.T;
  constexpr bool kSplit = Cell::kSplitRecurrentBias;
  auto opt = x.options();
  const Tensor& save = saved[0];
  const Tensor& hprev = saved[1];
  pybind11::gil_scoped_release no_gil;

  Tensor dgi = scratch({N, D * GH}, opt);
  Tensor dgh = kSplit ? scratch({N, D * GH}, opt) : dgi;
  Tensor dh = dhn.clone();
  Tensor dc = Cell::has_c ? dcn->clone() : Tensor();
  Tensor dHt = d.proj ? scratch({D, N, Hout}, opt) : Tensor();
  Tensor dr = d.proj ? at::empty({B, H}, opt) : Tensor();

  const auto bwd_dout = bwd_kernel<T>(Cell::kId, true);
  const auto bwd_plain = bwd_kernel<T>(Cell::kId, false);
  const LoopPlan plan = plan_for<T>(d, /*backward=*/true);
  // bf16_gemms (a bf16 layer, where this CPU has the native kernels): the BLAS loop with each
  // step's dh = dG_h W_hh on the bf16 kernels (Bf16Product), dx and the weight gradients after it.
  const bool bf16_steps = bf16_gemms && std::is_same<T, float>::value && bf16_kernels() != nullptr && !d.proj;
  const bool fused = plan.fused && !bf16_steps;
  // The fused loop's steps compute their dx rows where the forward's steps did their input
  // projection; the second direction's into its own buffer, added after (the directions may run
  // at once).
  // (bf16_gemms: after the loop, on bf16 GEMMs, instead.)
  const bool step_dx = need_dx && plan.step_input && !bf16_gemms;
  Tensor dx = step_dx ? at::empty({N, d.I}, opt) : Tensor();
  Tensor dx1 = step_dx && D == 2 ? scratch({N, d.I}, opt) : Tensor();
  // ... and each direction's weight and bias gradients, accumulated over the steps (AVX-512).
  const bool step_dw = need_dw && plan.step_weight_grads && !bf16_gemms;
  std::vector<Tensor> dw;  // per direction: dw_ih, dw_hh, db_ih, db_hh (kSplit only: the others' is db_ih)
  if (step_dw)
    for (int64_t k = 0; k < D; ++k)
      dw.insert(dw.end(), {at::zeros({GH, d.I}, opt), at::zeros({GH, H}, opt), at::zeros({GH}, opt),
                           kSplit ? at::zeros({GH}, opt) : Tensor()});
  {
    auto direction = [&](int64_t k, bool split) {
      const bool rev = k == 1;
      const StepGemm<T> rec(false, Hout, GH, w_hh[k].data_ptr<T>(), Hout,
                            fused || nT <= 1 || bf16_steps ? 0 : B);  // 0: no packing
      std::unique_ptr<Bf16Product> brec;
      if constexpr (std::is_same<T, float>::value) {
        if (bf16_steps) {  // W_hh^T [Hout, GH]: dh = dG_h (W_hh^T)^T
          const Tensor wt = w_hh[k].t().contiguous();
          brec = std::make_unique<Bf16Product>(wt.data_ptr<float>(), Hout, GH, B);
        }
      }
      T* dhs = dh.data_ptr<T>() + k * B * Hout;
      T* dcs = Cell::has_c ? dc.data_ptr<T>() + k * B * H : nullptr;
      const StepGemm<T> prj(false, H, Hout, d.proj ? w_hr[k]->data_ptr<T>() : nullptr, H, d.proj ? B : 0);
      const T* save_k = save.data_ptr<T>() + k * N * S * H;
      const T* hprev_k = hprev.data_ptr<T>() + k * N * Hout;
      const T* dout_p = dout.data_ptr<T>() + k * Hout;
      T* dgi_p = dgi.data_ptr<T>() + k * GH;
      T* dgh_p = dgh.data_ptr<T>() + k * GH;
      BwdArgs<T> a{};
      a.lddout = D * Hout;
      a.dc = dcs;
      a.lddc = H;
      a.ldsave = S * H;
      a.ldhp = Hout;
      a.lddgi = D * GH;
      a.lddgh = D * GH;
      a.H = H;
      if constexpr (std::is_same<T, float>::value) {
        if (fused) {
          StepInputGrad in;
          in.I = d.I;
          in.w_ih = w_ih[k].data_ptr<float>();
          if (step_dx) in.dx = (k == 0 ? dx : dx1).data_ptr<float>();
          if (step_dw) {
            in.x = x.data_ptr<float>();
            in.dw_ih = dw[4 * k].data_ptr<float>();
            in.dw_hh = dw[4 * k + 1].data_ptr<float>();
            in.db_ih = dw[4 * k + 2].data_ptr<float>();
            in.db_hh = kSplit ? dw[4 * k + 3].data_ptr<float>() : nullptr;
          }
          fused_backward<Cell>(kernels(), bwd_dout, a, step_spans(d.sizes, d.offs, rev), dhs, w_hh[k].data_ptr<T>(),
                               in, save_k, hprev_k, dout_p, dgi_p, dgh_p, D * GH, split);
          return;
        }
      }
      for (int64_t s = 0; s < nT; ++s) {
        const int64_t t = rev ? s : nT - 1 - s;   // the forward's order, reversed
        const int64_t bs = d.sizes[t], row0 = d.offs[t];
        a.save = save_k + row0 * S * H;
        a.hprev = hprev_k + row0 * Hout;
        a.dgi = dgi_p + row0 * D * GH;
        a.dgh = dgh_p + row0 * D * GH;
        a.dout = dout_p + row0 * D * Hout;
        BwdFn<T> fn = bwd_dout;
        if (d.proj) {
          // dL/dh_t = carried + output grad; dL/dr_t = dL/dh_t W_hr.
          T* dht = dHt.data_ptr<T>() + (k * N + row0) * Hout;
          for (int64_t b = 0; b < bs; ++b) {
            const T* x1 = dhs + b * Hout;
            const T* x2 = a.dout + b * D * Hout;
            T* y = dht + b * Hout;
            for (int64_t j = 0; j < Hout; ++j) y[j] = x1[j] + x2[j];
          }
          prj(bs, dht, Hout, T(0), dr.data_ptr<T>(), H);
          a.dh = dr.data_ptr<T>();
          a.lddh = H;
          fn = bwd_plain;
        } else {
          a.dh = dhs;
          a.lddh = Hout;
        }
        run_pointwise<T>(fn, a, bs * H, kGrain / G);
        // dL/dh_{t-1} = dG_h W_hh (+ the direct term a kDirectPrevH cell's pass left in dh).
        if constexpr (std::is_same<T, float>::value) {
          if (brec) {
            (*brec)(bs, a.dgh, D * GH, dhs, Hout, Cell::kDirectPrevH);
            continue;
          }
        }
        rec(bs, a.dgh, D * GH, Cell::kDirectPrevH ? T(1) : T(0), dhs, Hout);
      }
    };
    run_directions(D, fused, direction);
  }

  // dx (unless the steps made it) and the weight gradients: one GEMM each over all steps
  // (layer_grads.h).
  if (dx1.defined()) dx.add_(dx1);
  std::vector<OptTensor> res;
  append_layer_grads(res, x, w_ih, dgi, dgh, hprev, dh, Cell::has_c ? OptTensor(dc) : OptTensor(), dHt,
                     d.proj ? saved[2] : Tensor(), D, GH, kSplit, need_dx, need_dw, dx, dw,
                     bf16_gemms && std::is_same<T, float>::value);
  return res;
}

}  // namespace
}  // namespace layer

std::vector<OptTensor> backward(const std::string& cell, const Tensor& x, const OptTensor& batch_sizes,
                                const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
                                const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& w_hr,
                                const std::vector<Tensor>& saved, const Tensor& dout, const Tensor& dhn,
                                const OptTensor& dcn, bool need_dx, bool need_dw, bool bf16_gemms) {
  using namespace layer;
  TORCH_CHECK(x.scalar_type() != at::kBFloat16, kWhere, ": backward runs float32 and float64 (bfloat16 "
              "layers run backward upcast to float32: fastrnn/ops.py), got x of dtype ", x.scalar_type());
  Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  const auto dt = x.scalar_type();
  checks::check_backward(kWhere, d, x, cell_traits(d.cell).S, dt, saved, dout, dhn, dcn);
  // A small call's products after the loop (dx, dW_ih, dW_hh: at::mm on MKL) each as small as the
  // per-step ones blas.h keeps on this thread: these too (a one-step LSTM H64 backward spent ~45%
  // of its time in OpenMP's fork and barrier)
  const int64_t G = cell_traits(d.cell).G;
  const SerialBlas serial(d.N * G * d.H * std::max(d.I, d.Hout) <= kSerialGemmMacs);
  return layer::with_cell_and_type(d.cell, dt, [&](auto c, auto t) {
    return layer::backward_impl<decltype(c), decltype(t)>(d, x, w_ih, w_hh, w_hr, saved, dout, dhn, dcn, need_dx,
                                                   need_dw, bf16_gemms);
  });
}

}  // namespace fastrnn
