// The native bfloat16 forward of one layer (layer.h's contract, x and weights bf16): bf16 operands,
// float32 accumulation, float32 state and pointwise math (the fp32 cell passes of the kernel
// table), so h_t is rounded to bf16 only as the next step's GEMM operand, as oneDNN does.
//
//   input projection  gi [N, D*G*H] fp32 = bias + x W_ih^T: AMX tiles (oneDNN's brgemm through
//                     ATen) where the CPU has AMX-BF16, else the AVX512_BF16 pair-panel kernel;
//   recurrence        per step gh = bf16(h_{t-1}) W_hh^T on the pair panels (W_hh packed once per
//                     call), each thread owning a range of hidden blocks for the product and the
//                     cell pass (fused_steps.h's loop: one barrier a step);
//   proj_size         the projection h_t = W_hr (o*tanh(c_t)) on the same panels, step by step.
//
// Outputs and saved values are float32 (the op layer casts out/hn/cn to bf16; backward runs the
// float32 loops on the saved values: fastrnn/ops.py).
#include <ATen/native/CPUBlas.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>

#include "bf16.h"
#include "kernel_table.h"
#include "layer.h"
#include "scratch.h"

namespace fastrnn {
namespace layer {
namespace {

inline const uint16_t* bits(const Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// W [G*H, K] bf16 as pair panels (bf16.h): panel (jb, g) = gate g's columns for hidden units
// 16jb.., layout [nb][G][ceil(K/2)][16][2].  Packed once per call (not cached: see fused_steps.h).
Tensor pack_pair_panels(const uint16_t* W, int64_t G, int64_t H, int64_t K) {
  const int64_t nb = blocks_of(H), K2 = pairs_of(K);
  Tensor out = at::empty({nb, G, K2, kPairPanel}, at::kBFloat16);
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t panels = nb * G, grain = panels * K2 * kPairPanel >= 2 * kParallelPackFloats ? 1 : panels;
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t jb = p / G, g = p - jb * G, w = std::min(kPanel, H - jb * kPanel);
      uint16_t* panel = o + p * K2 * kPairPanel;
      const uint16_t* rows = W + (g * H + jb * kPanel) * K;
      for (int64_t k2 = 0; k2 < K2; ++k2) {
        uint16_t* dst = panel + k2 * kPairPanel;
        const int64_t k = 2 * k2;
        for (int64_t c = 0; c < w; ++c) {
          dst[2 * c] = rows[c * K + k];
          dst[2 * c + 1] = k + 1 < K ? rows[c * K + k + 1] : uint16_t(0);
        }
        std::fill(dst + 2 * w, dst + kPairPanel, uint16_t(0));
      }
    }
  });
  return out;
}

// gi[:, gate columns] += x W^T for all N rows (gi holds the biases), W [G*H, K].
void input_projection(const Bf16Kernels& bk, int64_t N, int64_t K, const uint16_t* x, const uint16_t* w, int64_t G,
                      int64_t H, float* gi, int64_t ldgi) {
  if (N == 0 || K == 0) return;
  const int64_t GH = G * H;
  if (amx_input_gemm()) {
    // oneDNN's brgemm on AMX tiles: W^T [K, GH] in its VNNI layout (cpublas::pack), then blocks of
    // kRows x kCols, each thread releasing the tile configuration it set (a call leaves the threads
    // as it found them).
    constexpr int64_t kRows = 32, kCols = 64;
    const int64_t nc = (GH + kCols - 1) / kCols, K2 = pairs_of(K) * 2;
    Tensor wt = at::zeros({K2, GH}, at::kBFloat16);  // W^T, K rounded up to even with a zero row
    wt.narrow(0, 0, K).copy_(at::from_blob(const_cast<uint16_t*>(w), {GH, K}, at::kBFloat16).t());
    Tensor xp;  // x with K even (a zero column), the VNNI pairs of A
    const uint16_t* xa = x;
    int64_t lda = K;
    if (K2 != K) {
      xp = at::zeros({N, K2}, at::kBFloat16);
      xp.narrow(1, 0, K).copy_(at::from_blob(const_cast<uint16_t*>(x), {N, K}, at::kBFloat16));
      xa = bits(xp);
      lda = K2;
    }
    Tensor packed = at::empty({nc, K2, kCols}, at::kBFloat16);
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t n = std::min(kCols, GH - c * kCols);
      Tensor blk = at::zeros({K2, kCols}, at::kBFloat16);
      blk.narrow(1, 0, n).copy_(wt.narrow(1, c * kCols, n));
      at::native::cpublas::pack(K2, kCols, kCols, kCols, at::kBFloat16, at::kBFloat16, blk.data_ptr(),
                                packed[c].data_ptr());
    }
    const at::BFloat16* pk = packed.data_ptr<at::BFloat16>();
    const int64_t rb = (N + kRows - 1) / kRows;
    at::parallel_for(0, rb * nc, 1, [&](int64_t i0, int64_t i1) {
      float tmp[kRows * kCols];
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / nc, c = i - r * nc, r0 = r * kRows, m = std::min(kRows, N - r0);
        const int64_t n = std::min(kCols, GH - c * kCols);
        const at::BFloat16* A = reinterpret_cast<const at::BFloat16*>(xa + r0 * lda);
        if (n == kCols) {  // straight into gi, added to the biases there
          at::native::cpublas::brgemm(m, kCols, K2, lda, kCols, ldgi, true, A, pk + c * K2 * kCols,
                                      gi + r0 * ldgi + c * kCols);
          continue;
        }
        at::native::cpublas::brgemm(m, kCols, K2, lda, kCols, kCols, false, A, pk + c * K2 * kCols, tmp);
        for (int64_t mm = 0; mm < m; ++mm) {
          float* dst = gi + (r0 + mm) * ldgi + c * kCols;
          const float* src = tmp + mm * kCols;
          for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
        }
      }
      at::native::cpublas::brgemm_release();
    });
    return;
  }
  const int64_t nb = blocks_of(H), panels = nb * G, K2 = pairs_of(K);
  constexpr int64_t kRows = 256;
  const int64_t row_blocks = (N + kRows - 1) / kRows;
  Tensor wp = pack_pair_panels(w, G, H, K);
  const uint16_t* P = bits(wp);
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t rb = i / panels, p = i - rb * panels, jb = p / G, g = p - jb * G;
      const int64_t r0 = rb * kRows, rows = std::min(kRows, N - r0);
      bk.panel(PanelBf16Args{rows, K, x + r0 * K, K, P + p * K2 * kPairPanel, gi + r0 * ldgi + g * H + jb * kPanel,
                             ldgi, std::min(kPanel, H - jb * kPanel), true});
    }
  });
}

// The recurrent products of one step for hidden blocks [b0, b1): gh[:, gate cols] = hb W^T.
inline void step_product(const Bf16Kernels& bk, int64_t G, int64_t H, int64_t K, int64_t bs, const uint16_t* hb,
                         const uint16_t* P, float* gh, int64_t b0, int64_t b1) {
  const int64_t K2 = pairs_of(K), GH = G * H;
  for (int64_t jb = b0; jb < b1; ++jb)
    for (int64_t g = 0; g < G; ++g)
      bk.panel(PanelBf16Args{bs, K, hb, K, P + (jb * G + g) * K2 * kPairPanel, gh + g * H + jb * kPanel, GH,
                             std::min(kPanel, H - jb * kPanel), false});
}

// One direction without proj_size: fused_steps.h's loop shape (threads own hidden blocks; one
// barrier a step) with bf16 operands.  h_state [B, H] fp32 holds h0 on entry and h_n on exit.
template <class Cell>
void recurrence(const Bf16Kernels& bk, FwdFn<float> fwd, FwdArgs<float> a, const std::vector<StepSpan>& steps,
                float* h_state, int64_t B, const uint16_t* P, float* gi, int64_t ldgi, float* out,
                int64_t ldout, float* save, float* hprev, float* gh, bool split) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kReadsH = Cell::kDirectPrevH;
  const int64_t H = a.H, GH = G * H, nb = blocks_of(H);
  Tensor spare = at::empty({B, H}, at::kFloat);
  Tensor hbt = at::empty({2, B, H}, at::kBFloat16);
  float* hbuf[2] = {h_state, spare.data_ptr<float>()};
  uint16_t* hb[2] = {reinterpret_cast<uint16_t*>(hbt.data_ptr<at::BFloat16>()), nullptr};
  hb[1] = hb[0] + B * H;
  bk.to_bf16(h_state, hb[0], B * H);
  const bool train = save != nullptr;
  const int64_t n = static_cast<int64_t>(steps.size()), min_split = parallel_step_macs();
  auto step = [&](int64_t si, int64_t b0, int64_t b1) {
    const StepSpan& st = steps[si];
    const float* hc = hbuf[si & 1];
    float* hn = hbuf[(si & 1) ^ 1];
    const uint16_t* hbc = hb[si & 1];
    uint16_t* hbn = hb[(si & 1) ^ 1];
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H), w = j1 - j0;
    if (w <= 0) return;
    for (int64_t b = kReadsH ? 0 : st.bs; b < B; ++b) std::memcpy(hn + b * H + j0, hc + b * H + j0, sizeof(float) * w);
    if (train)
      for (int64_t b = 0; b < st.bs; ++b)
        std::memcpy(hprev + (st.row0 + b) * H + j0, hc + b * H + j0, sizeof(float) * w);
    step_product(bk, G, H, H, st.bs, hbc, P, gh, b0, b1);
    FwdArgs<float> s = a;
    s.gi = gi + st.row0 * ldgi;
    s.ldgi = ldgi;
    s.gh = gh;
    s.ldgh = GH;
    s.h = hn;
    s.ldh = H;
    s.out = out + st.row0 * ldout;
    s.save = train ? save + st.row0 * S * H : nullptr;
    for (int64_t b = 0; b < st.bs; ++b) fwd(s, b * H + j0, b * H + j1);
    for (int64_t b = 0; b < B; ++b) bk.to_bf16(hn + b * H + j0, hbn + b * H + j0, w);
  };
  run_steps(n, nb, [&](int64_t si) { return split && steps[si].bs * GH * H >= min_split; }, step);
  if (n & 1) std::memcpy(h_state, hbuf[1], sizeof(float) * B * H);
}

template <class Cell>
std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward_bf16_impl(
    const Dims& d, const Tensor& x, const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
    const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih, const std::vector<OptTensor>& b_hh,
    const std::vector<OptTensor>& w_hr, bool train) {
  constexpr int G = Cell::G, S = Cell::S;
  const int64_t N = d.N, D = d.D, B = d.B, H = d.H, Hout = d.Hout, GH = G * H, nT = d.T;
  const Bf16Kernels& bk = *bf16_kernels();
  auto opt = x.options().dtype(at::kFloat);
  pybind11::gil_scoped_release no_gil;

  // The summed biases (bf16 values, exact in fp32) fill gi's rows; GRU's b_hn stays apart.
  std::vector<float> bias(D * GH, 0.f), bhn_store(D * H, 0.f);
  std::vector<float*> bhn(D, nullptr);
  for (int64_t k = 0; k < D; ++k) {
    float* bk_ = bias.data() + k * GH;
    if (given(b_ih[k])) {
      const uint16_t* p = bits(*b_ih[k]);
      for (int64_t j = 0; j < GH; ++j) bk_[j] += bf16_to_float(p[j]);
    }
    if (given(b_hh[k])) {
      const uint16_t* p = bits(*b_hh[k]);
      const int64_t s0 = Cell::kSplitRecurrentBias ? Cell::kSplitGate * H : GH, s1 = s0 + H;
      for (int64_t j = 0; j < s0; ++j) bk_[j] += bf16_to_float(p[j]);
      for (int64_t j = s1; j < GH; ++j) bk_[j] += bf16_to_float(p[j]);
      if (Cell::kSplitRecurrentBias) {
        for (int64_t j = 0; j < H; ++j) bhn_store[k * H + j] = bf16_to_float(p[s0 + j]);
        bhn[k] = bhn_store.data() + k * H;
      }
    }
  }
  Tensor gi = scratch({N, D * GH}, opt);
  float* gi_p = gi.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(gi_p + r * D * GH, bias.data(), sizeof(float) * D * GH);
  });
  for (int64_t k = 0; k < D; ++k)
    input_projection(bk, N, d.I, bits(x), bits(w_ih[k]), G, H, gi_p + k * GH, D * GH);

  Tensor out = at::empty({N, D * Hout}, opt);
  Tensor hn = h0.clone();
  Tensor cn = Cell::has_c ? c0->clone() : Tensor();
  Tensor save, hprev, R;
  if (train) {
    save = scratch({D, N, S * H}, opt);
    hprev = scratch({D, N, Hout}, opt);
    if (d.proj) R = scratch({D, N, H}, opt);
  }
  Tensor gh = at::empty({D, B, GH}, opt);
  float* out_p = out.data_ptr<float>();
  const auto fwd = fwd_kernel<float>(Cell::kId, train, !d.proj);
  auto direction = [&](int64_t k, bool split) {
    const bool rev = k == 1;
    Tensor wp = pack_pair_panels(bits(w_hh[k]), G, H, Hout);
    const uint16_t* P = bits(wp);
    float* hs = hn.data_ptr<float>() + k * B * Hout;
    float* gh_k = gh.data_ptr<float>() + k * B * GH;
    FwdArgs<float> a{};
    a.gh = gh_k;
    a.ldgh = GH;
    a.bhn = bhn[k];
    a.c = Cell::has_c ? cn.data_ptr<float>() + k * B * H : nullptr;
    a.ldc = H;
    a.ldout = D * Hout;
    a.ldsave = S * H;
    a.H = H;
    a.ldgi = D * GH;
    float* save_k = train ? save.data_ptr<float>() + k * N * S * H : nullptr;
    float* hprev_k = train ? hprev.data_ptr<float>() + k * N * Hout : nullptr;
    const auto steps = step_spans(d.sizes, d.offs, rev);
    if (!d.proj) {
      recurrence<Cell>(bk, fwd, a, steps, hs, B, P, gi_p + k * GH, D * GH, out_p + k * Hout, D * Hout, save_k,
                       hprev_k, gh_k, split);
      return;
    }
    // proj_size (LSTM): gates on Hout-wide h, then h_t = W_hr r_t; each product split over its
    // column blocks when a step is large enough.
    Tensor wr = pack_pair_panels(bits(*w_hr[k]), 1, Hout, H);
    const uint16_t* PR = bits(wr);
    Tensor rbuf = at::empty({B, H}, opt);
    Tensor bt = at::empty({B, std::max(H, Hout)}, at::kBFloat16);
    uint16_t* bb = reinterpret_cast<uint16_t*>(bt.data_ptr<at::BFloat16>());
    float* R_k = train ? R.data_ptr<float>() + k * N * H : nullptr;
    const int64_t nb = blocks_of(H), nbo = blocks_of(Hout), min_split = split ? parallel_step_macs() : INT64_MAX;
    for (int64_t s = 0; s < nT; ++s) {
      const StepSpan st = steps[s];
      if (train) std::memcpy(hprev_k + st.row0 * Hout, hs, sizeof(float) * st.bs * Hout);
      bk.to_bf16(hs, bb, st.bs * Hout);
      const int64_t g1 = st.bs * GH * Hout >= min_split ? 1 : nb;
      at::parallel_for(0, nb, g1, [&](int64_t b0, int64_t b1) { step_product(bk, G, H, Hout, st.bs, bb, P, gh_k, b0, b1); });
      FwdArgs<float> f = a;
      f.gi = gi_p + st.row0 * D * GH + k * GH;
      f.out = nullptr;
      f.save = train ? save_k + st.row0 * S * H : nullptr;
      f.h = train ? R_k + st.row0 * H : rbuf.data_ptr<float>();
      f.ldh = H;
      run_pointwise<float>(fwd, f, st.bs * H, kGrain / G);
      bk.to_bf16(f.h, bb, st.bs * H);
      const int64_t g2 = st.bs * Hout * H >= min_split ? 1 : nbo;
      at::parallel_for(0, nbo, g2, [&](int64_t b0, int64_t b1) { step_product(bk, 1, Hout, H, st.bs, bb, PR, hs, b0, b1); });
      float* o = out_p + st.row0 * D * Hout + k * Hout;
      for (int64_t b = 0; b < st.bs; ++b) std::memcpy(o + b * D * Hout, hs + b * Hout, sizeof(float) * Hout);
    }
  };
  run_directions(D, true, direction);
  std::vector<Tensor> saved;
  if (train) {
    saved = {save, hprev};
    if (d.proj) saved.push_back(R);
  }
  return {out, hn, Cell::has_c ? OptTensor(cn) : OptTensor(), saved};
}

}  // namespace
}  // namespace layer

std::tuple<Tensor, Tensor, OptTensor, std::vector<Tensor>> forward_bf16(
    const layer::Dims& d, const Tensor& x, const Tensor& h0, const OptTensor& c0, const std::vector<Tensor>& w_ih,
    const std::vector<Tensor>& w_hh, const std::vector<OptTensor>& b_ih, const std::vector<OptTensor>& b_hh,
    const std::vector<OptTensor>& w_hr, bool train) {
  TORCH_CHECK(bf16_kernels() != nullptr, "fastrnn._ext: this CPU has no native bfloat16 kernels (AVX512_BF16); "
              "run bfloat16 upcast to float32 (fastrnn/ops.py does when _ext.native_bf16() is empty)");
  return with_cell(d.cell, [&](auto cell_tag) {
    return layer::forward_bf16_impl<decltype(cell_tag)>(d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train);
  });
}

}  // namespace fastrnn
