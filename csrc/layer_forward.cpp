// The forward pass of one layer (layer.h has the contract).
#include "layer.h"

#include <pybind11/pybind11.h>

#include <cstring>

#include "blas.h"
#include "kernel_table.h"
#include "scratch.h"

namespace fastrnn {
namespace layer {
namespace {

// ---------------------------------------------------------------------------------------
// Forward of one layer.
template <class Cell, typename T>
std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward_impl(
    const Dims& d, const Tensor& x, const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
    const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih, const std::vector<OptTensor>& b_hh,
    const std::vector<OptTensor>& w_hr, bool train) {
  constexpr int G = Cell::G, S = Cell::S;
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = G * H, nT = d.T;
  auto opt = x.options();
  // ATen needs no GIL: other Python threads run while this layer does (GEMMs included).
  pybind11::gil_scoped_release no_gil;

  // Input projection of all steps and both directions, biases folded in: gi rows start as the
  // summed biases, then one BLAS GEMM per direction adds x W_ih^T into its column block (no
  // concatenated copy of the weights, no ATen op per bias: a layer call of one step is a few
  // microseconds of work).  The split gate's recurrent bias stays out of it (GRU's b_hn: n =
  // tanh(gi_n + r * (W_hn h + b_hn)); cell_math.h's kSplitGate).
  std::vector<const T*> bhn(D, nullptr);
  bool has_bias = false;
  std::vector<T> bias(D * GH, T(0));
  for (int64_t k = 0; k < D; ++k) {
    T* bk = bias.data() + k * GH;
    if (given(b_ih[k])) {
      const T* p = b_ih[k]->data_ptr<T>();
      for (int64_t j = 0; j < GH; ++j) bk[j] += p[j];
      has_bias = true;
    }
    if (given(b_hh[k])) {
      const T* p = b_hh[k]->data_ptr<T>();
      const int64_t s0 = Cell::kSplitRecurrentBias ? Cell::kSplitGate * H : GH, s1 = s0 + H;
      for (int64_t j = 0; j < s0; ++j) bk[j] += p[j];
      for (int64_t j = s1; j < GH; ++j) bk[j] += p[j];
      if (Cell::kSplitRecurrentBias) bhn[k] = p + s0;
      has_bias = true;
    }
  }
  const LoopPlan plan = plan_for<T>(d, /*backward=*/false);
  const bool fused = plan.fused, step_input = plan.step_input;
  Tensor gi = step_input ? Tensor() : scratch({N, D * GH}, opt);
  T* gi_p = step_input ? nullptr : gi.data_ptr<T>();
  if (has_bias && !step_input)
    at::parallel_for(0, N, 1024, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(gi_p + r * D * GH, bias.data(), sizeof(T) * D * GH);
    });
  for (int64_t k = 0; k < D && !step_input; ++k) {
    if constexpr (std::is_same<T, float>::value) {
      if (plan.panel_input) {
        panel_input_projection(kernels(), N, d.I, x.data_ptr<float>(), w_ih[k].data_ptr<float>(), G, H,
                               gi_p + k * GH, D * GH, has_bias);
        continue;
      }
    }
    gemm<T>(false, true, N, GH, d.I, x.data_ptr<T>(), d.I, w_ih[k].data_ptr<T>(), d.I, has_bias ? T(1) : T(0),
            gi_p + k * GH, D * GH);
  }

  Tensor out = at::empty({N, D * Hout}, opt);
  Tensor hn = h0.clone();  // the state is updated in place: rows that ended keep their last h
  Tensor cn = Cell::has_c ? c0->clone() : Tensor();
  Tensor save, hprev, R;
  if (train) {
    save = scratch({D, N, S * H}, opt);
    hprev = scratch({D, N, Hout}, opt);
    if (d.proj) R = scratch({D, N, H}, opt);
  }
  Tensor gh = at::empty({D, B, GH}, opt);  // per direction: the fused loop may run both at once
  Tensor rbuf = (d.proj && !train) ? at::empty({B, H}, opt) : Tensor();

  T* out_p = out.data_ptr<T>();
  T* gh_p = gh.data_ptr<T>();
  const auto fwd = fwd_kernel<T>(Cell::kId, train, !d.proj);
  {
    auto direction = [&](int64_t k, bool split) {
      const bool rev = k == 1;
      const StepGemm<T> rec(true, GH, Hout, w_hh[k].data_ptr<T>(), Hout, fused || nT <= 1 ? 0 : B);  // 0: no packing
      T* hs = hn.data_ptr<T>() + k * B * Hout;
      T* cs = Cell::has_c ? cn.data_ptr<T>() + k * B * H : nullptr;
      const StepGemm<T> prj(true, Hout, H, d.proj ? w_hr[k]->data_ptr<T>() : nullptr, H, d.proj ? B : 0);
      T* save_k = train ? save.data_ptr<T>() + k * N * S * H : nullptr;
      T* hprev_k = train ? hprev.data_ptr<T>() + k * N * Hout : nullptr;
      T* R_k = (train && d.proj) ? R.data_ptr<T>() + k * N * H : nullptr;
      FwdArgs<T> a{};
      a.ldgi = D * GH;
      a.gh = gh_p;
      a.ldgh = GH;
      a.bhn = bhn[k];
      a.c = cs;
      a.ldc = H;
      a.ldout = D * Hout;
      a.ldsave = S * H;
      a.H = H;
      if constexpr (std::is_same<T, float>::value) {
        if (fused) {
          StepInput in;
          if (step_input) {
            in.x = x.data_ptr<float>();
            in.I = d.I;
            in.w_ih = w_ih[k].data_ptr<float>();
            in.bias = has_bias ? bias.data() + k * GH : nullptr;
          }
          fused_forward<Cell>(kernels(), fwd, a, step_spans(d.sizes, d.offs, rev), hs, B, w_hh[k].data_ptr<T>(), in,
                              step_input ? nullptr : gi_p + k * GH, D * GH, out_p + k * Hout, D * Hout, save_k,
                              hprev_k, gh_p + k * B * GH, split);
          return;
        }
      }
      for (int64_t s = 0; s < nT; ++s) {
        const int64_t t = rev ? nT - 1 - s : s;
        const int64_t bs = d.sizes[t], row0 = d.offs[t];
        if (train) std::memcpy(hprev_k + row0 * Hout, hs, sizeof(T) * bs * Hout);
        rec(bs, hs, Hout, T(0), gh_p, GH);
        a.gi = gi_p + row0 * D * GH + k * GH;
        a.out = out_p + row0 * D * Hout + k * Hout;
        a.save = train ? save_k + row0 * S * H : nullptr;
        if (d.proj) {
          a.h = train ? R_k + row0 * H : rbuf.data_ptr<T>();
          a.ldh = H;
        } else {
          a.h = hs;
          a.ldh = Hout;
        }
        run_pointwise<T>(fwd, a, bs * H, kGrain / G);
        if (d.proj) {
          prj(bs, a.h, H, T(0), hs, Hout);
          for (int64_t b = 0; b < bs; ++b)
            std::memcpy(a.out + b * D * Hout, hs + b * Hout, sizeof(T) * Hout);
        }
      }
    };
    run_directions(D, fused, direction);
  }
  std::vector<Tensor> saved;
  if (train) {
    saved = {save, hprev};
    if (d.proj) saved.push_back(R);
  }
  return {out, hn, Cell::has_c ? OptTensor(cn) : OptTensor(), saved};
}

}  // namespace
}  // namespace layer

std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward(
    const std::string& cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih,
    const std::vector<OptTensor>& b_hh, const std::vector<OptTensor>& w_hr, bool train) {
  using namespace layer;
  Dims d = check_layer(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr);
  TORCH_CHECK((int64_t)b_ih.size() == d.D && (int64_t)b_hh.size() == d.D,
              "fastrnn._ext: expected one b_ih and b_hh entry (a tensor or None) per direction");
  for (int64_t k = 0; k < d.D; ++k) {
    for (const auto* b : {&b_ih[k], &b_hh[k]}) {
      if (given(*b)) {
        check_tensor(**b, "bias", x, x.scalar_type(), 1);
        check_shape(**b, "bias", {d.G * d.H});
      }
    }
  }
  if (x.scalar_type() == at::kBFloat16) return forward_bf16(d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train);
  return layer::with_cell_and_type(d.cell, x.scalar_type(), [&](auto c, auto t) {
    return layer::forward_impl<decltype(c), decltype(t)>(d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train);
  });
}

}  // namespace fastrnn
