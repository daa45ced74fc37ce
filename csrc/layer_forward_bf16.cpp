// The native bfloat16 forward of one layer (layer.h's contract, x and weights bf16): bf16 operands,
// float32 accumulation, float32 state and pointwise math (the fp32 cell passes of the kernel
// table), so h_t is rounded to bf16 only as the next step's GEMM operand, as oneDNN does.
//
//   recurrence        per step gh = bf16(h_{t-1}) W_hh^T on pair panels (bf16.h; W_hh packed once per
//                     call), each thread owning a range of hidden blocks for the product and the
//                     cell pass (fused_steps.h's loop: one barrier a step); AMX tiles where the CPU
//                     has AMX-BF16 (step_gemm_bf16.cpp), else vdpbf16ps;
//   input projection  made inside that loop, chunk by chunk (ChunkInput): each thread multiplies
//                     the next ~kChunkRows rows of x by its own blocks of W_ih into a ring of gi rows
//                     that stays in cache; LSTM and RNN then add the step's product onto those rows;
//   proj_size         the input projection of all steps first, then step by step gates, cell and
//                     the projection h_t = W_hr (o*tanh(c_t)) on the same kernels.
//
// The output is bf16, made from the h_t rows converted for the next step anyway; h_n, c_n and the
// saved values are float32 (the op layer casts hn/cn to bf16).  Backward runs the
// float32 loop on them with its per-step product on these kernels (Bf16Product, at the end of this
// file) and bf16 GEMM operands after the loop (layer_backward.cpp, layer_grads.h).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
#include "kernel_table.h"
#include "layer.h"
#include "overrides.h"
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
// 16jb.., layout [nb][G][Kp/2][16][2], zero past K (Kp: K rounded up to even, or to 32 for AMX
// tiles).  Packed once per call (not cached: see fused_steps.h).
Tensor pack_pair_panels(const uint16_t* W, int64_t G, int64_t H, int64_t K, int64_t Kp = 0) {
  const int64_t nb = blocks_of(H), K2 = std::max(pairs_of(K), Kp / 2);
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
        if (k >= K) {  // the padding to Kp: zero pairs (never a read past W's row)
          std::fill(dst, dst + kPairPanel, uint16_t(0));
          continue;
        }
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

// Steps of at least this many rows run their recurrent product on AMX tiles (where amx_steps()),
// fewer on vdpbf16ps.  A tile multiplies 16 rows whatever the live ones; measured below.
constexpr int64_t kAmxStepRows = 1;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The operand layout of one call's recurrent products: K padded to 32 and rows to 16 where AMX
// may run (so every tile is full), else K to even.
struct StepLayout {
  bool amx = false;
  int64_t amx_rows = 0;
  StepLayout() {
    amx = amx_steps();
    amx_rows = overrides().amx_step_rows.value_or(kAmxStepRows);
  }
  int64_t kpad(int64_t K) const { return amx ? round_up(K, 32) : pairs_of(K) * 2; }
  int64_t rows(int64_t B) const { return amx ? round_up(B, 16) : B; }
};

// The G gate panels of hidden block jb in one call (they share A's rows: one broadcast of A feeds
// G products), panel (jb, g) at P + (jb * G + g) * K2 pair rows, its columns at C + g * H + 16 jb.
inline void block_panels(const Bf16Kernels& bk, int64_t rows, int64_t K, const uint16_t* A, int64_t lda,
                         const uint16_t* P, int64_t K2, int64_t G, int64_t H, int64_t jb, float* C, int64_t ldc,
                         bool accumulate) {
  PanelBf16Args args{rows, K, A, lda, P + jb * G * K2 * kPairPanel, C + jb * kPanel, ldc,
                     std::min(kPanel, H - jb * kPanel), accumulate};
  args.panels = static_cast<int>(G);
  args.panel_stride = K2 * kPairPanel;
  args.c_stride = H;
  bk.panel(args);
}

// One step's product for hidden blocks [b0, b1): C[:bs, gate cols] = A[:bs, :K] W^T, A bf16 rows Kp
// apart (zero past K), P W's panels packed with Kp, C rows ldc apart (AMX writes rows up to bs
// rounded to 16: C and A have them).
inline void step_product_ld(const Bf16Kernels& bk, const StepLayout& L, int64_t G, int64_t H, int64_t K,
                            int64_t Kp, int64_t lda, int64_t bs, const uint16_t* A, const uint16_t* P, float* C,
                            int64_t ldc, int64_t b0, int64_t b1) {
  if (L.amx && bs >= L.amx_rows) {
    isa_bf16::amx_begin();
    isa_bf16::amx_step(AmxStepArgs{round_up(bs, 16), Kp, A, lda, P, G, H, b0, b1, C, ldc, false});
    isa_bf16::amx_end();
    return;
  }
  for (int64_t jb = b0; jb < b1; ++jb) block_panels(bk, bs, K, A, lda, P, Kp / 2, G, H, jb, C, ldc, false);
}

inline void step_product(const Bf16Kernels& bk, const StepLayout& L, int64_t G, int64_t H, int64_t K, int64_t Kp,
                         int64_t bs, const uint16_t* A, const uint16_t* P, float* C, int64_t ldc, int64_t b0,
                         int64_t b1) {
  step_product_ld(bk, L, G, H, K, Kp, Kp, bs, A, P, C, ldc, b0, b1);
}

// gi[:, gate columns] += x W^T for all N rows (gi holds the biases), W [G*H, K].  AMX: tiles over
// blocks of kRows rows x kBlocks hidden blocks (every gate of them), W packed with K padded to 32;
// x is read in place when K is a multiple of 32, and the last < 32 rows (or all of x, for another
// K) go through a zero-padded copy, so a tile never reads or writes past x or gi.
void input_projection(const Bf16Kernels& bk, bool amx, int64_t N, int64_t K, const uint16_t* x, const uint16_t* w,
                      int64_t G, int64_t H, float* gi, int64_t ldgi) {
  if (N == 0 || K == 0) return;
  const int64_t nb = blocks_of(H);
  if (amx) {
    constexpr int64_t kRows = 256, kBlocks = 8;
    const int64_t Kp = round_up(K, 32), Nmain = (K == Kp) ? N / 32 * 32 : 0;
    Tensor wp = pack_pair_panels(w, G, H, K, Kp);
    const uint16_t* P = bits(wp);
    const int64_t rb = (Nmain + kRows - 1) / kRows, cb = (nb + kBlocks - 1) / kBlocks;
    at::parallel_for(0, rb * cb, 1, [&](int64_t i0, int64_t i1) {
      isa_bf16::amx_begin();
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / cb, c = i - r * cb, r0 = r * kRows, rows = std::min(kRows, Nmain - r0);
        isa_bf16::amx_step(AmxStepArgs{rows, Kp, x + r0 * K, K, P, G, H, c * kBlocks, std::min(nb, (c + 1) * kBlocks),
                                       gi + r0 * ldgi, ldgi, true});
      }
      isa_bf16::amx_end();
    });
    const int64_t rest = N - Nmain;
    if (rest == 0) return;
    // The remaining rows through padded copies: A [rows rounded to 32, Kp], C [same rows, G*H].
    const int64_t Mp = round_up(rest, 32), GH = G * H;
    Tensor xa = at::zeros({Mp, Kp}, at::kBFloat16);
    xa.narrow(0, 0, rest).narrow(1, 0, K).copy_(at::from_blob(const_cast<uint16_t*>(x + Nmain * K), {rest, K}, at::kBFloat16));
    Tensor ca = at::zeros({Mp, GH}, at::kFloat);
    float* cp = ca.data_ptr<float>();
    const int64_t mb = Mp / 32;
    at::parallel_for(0, mb * cb, 1, [&](int64_t i0, int64_t i1) {
      isa_bf16::amx_begin();
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / cb, c = i - r * cb;
        isa_bf16::amx_step(AmxStepArgs{32, Kp, bits(xa) + r * 32 * Kp, Kp, P, G, H, c * kBlocks,
                                       std::min(nb, (c + 1) * kBlocks), cp + r * 32 * GH, GH, false});
      }
      isa_bf16::amx_end();
    });
    for (int64_t m = 0; m < rest; ++m) {
      float* dst = gi + (Nmain + m) * ldgi;
      const float* src = cp + m * GH;
      for (int64_t j = 0; j < GH; ++j) dst[j] += src[j];
    }
    return;
  }
  const int64_t K2 = pairs_of(K);
  constexpr int64_t kRows = 256;
  const int64_t row_blocks = (N + kRows - 1) / kRows;
  Tensor wp = pack_pair_panels(w, G, H, K);
  const uint16_t* P = bits(wp);
  at::parallel_for(0, row_blocks * nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t rb = i / nb, jb = i - rb * nb, r0 = rb * kRows, rows = std::min(kRows, N - r0);
      block_panels(bk, rows, K, x + r0 * K, K, P, K2, G, H, jb, gi + r0 * ldgi, ldgi, true);
    }
  });
}

// The input side of a direction's loop: each thread makes the input projection of its own hidden
// blocks for the next chunk of steps when the chunk starts, into a ring of chunk rows, so gi stays
// in cache instead of a [N, G*H] float32 buffer written, re-read and read again from memory
// (LSTM B=64 H=512: 52 MB a call, measured 31 ms of a 61 ms single-thread call).
struct ChunkInput {
  const uint16_t* x; int64_t N, I;  // x [N, I] bf16
  const uint16_t* P; int64_t Kp;  // W_ih pair panels, K padded to Kp
  const float* bias;              // [G*H] summed biases (GRU: without b_hn)
};

// Rows of a chunk of this many (or one step of more) run each input projection; measured on the
// 2-core Xeon (single-thread CPU time, LSTM B64 H512): see the notes in the report.
constexpr int64_t kChunkRows = 64;

// A folded step makes its input projection itself (one_pass below) from this many rows, and only
// where [W_ih; W_hh] (bf16) is at most this many bytes a row: it reads W_ih every step, where the
// chunked projection reads it once per kChunkRows rows.  2-core Xeon, LSTM T=100 fwd, ms one pass /
// chunked: H128 B1 0.63/0.49, B2 0.58/0.56, B4 0.67/0.68, B8 0.85/1.05; H256 B2 1.26/0.97, B4
// 1.32/1.30, B8 1.65/1.99; H512 B1 7.1/2.7, B8 8.1/5.5, B16 8.96/8.85, B32 13.3/15.6.
constexpr int64_t kOnePassMinRows = 4, kOnePassBytesPerRow = 128 << 10;
// One-pass steps make the product and then the cell pass one hidden block (16 units, every gate) at
// a time, so the pass reads its gates while the tiles' stores are still in L1 (2-core Xeon, torch /
// ours, bf16 LSTM fwd T=100 I=H: B64 H128 1.09-1.19 against 0.85-0.91 block range at once, B64 H256
// 0.96-0.99 against 0.91-0.94; B64 H512 and B8-16 alike within the runs' spread).  Their gate rows
// are kGhPad floats longer than G*H: G*H*4 bytes is a multiple of 4 KiB from H=256, which maps a
// tile's 16 rows onto one L1 set.
constexpr int64_t kCellGroupBlocks = 1;
constexpr int64_t kGhPad = 16;  // B64 H256-512: 1-5% over unpadded rows

// One direction without proj_size: fused_steps.h's loop shape (threads own hidden blocks; one
// barrier a step) with bf16 operands.  h_state [B, H] fp32 holds h0 on entry and h_n on exit.
// `fold`: the step's product accumulates onto its gi rows (gh = gi + h W^T, one buffer read by the
// cell pass), for cells whose gates take one sum and unpacked input (rows past bs would add their
// h into the next step's rows).
template <class Cell>
void recurrence(const Bf16Kernels& bk, const StepLayout& L, FwdFn<float> fwd, FwdArgs<float> a,
                const std::vector<StepSpan>& steps, float* h_state, int64_t B, const uint16_t* P,
                const ChunkInput& in, bool packed, uint16_t* out, int64_t ldout, float* save, float* hprev, float* gh,
                bool split) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kReadsH = Cell::kDirectPrevH;
  const int64_t H = a.H, GH = G * H, nb = blocks_of(H);
  const bool fold = Cell::kSplitGate < 0 && !packed;
  // On AMX a folded step makes its input projection and recurrent product in the same tiles
  // (C = bias + x_t W_ih^T + h W_hh^T, stored once) instead of a chunk's projection ahead into
  // the ring and the product added onto it: each gate tile is loaded and stored once a step, not
  // twice, and no bias rows are copied (LSTM B64 H512: see the report's bf16 notes).
  const int64_t weight_bytes = 2 * GH * (in.I + H);
  const bool one_pass = fold && L.amx && B >= kOnePassMinRows && weight_bytes <= kOnePassBytesPerRow * B;
  Tensor spare = at::empty({B, H}, at::kFloat);
  const int64_t Kp = L.kpad(H), Bp = L.rows(B);
  Tensor hbt = at::zeros({2, Bp, Kp}, at::kBFloat16);  // bf16 h_{t-1} / h_t, zero past H and B
  float* hbuf[2] = {h_state, spare.data_ptr<float>()};
  uint16_t* hb[2] = {reinterpret_cast<uint16_t*>(hbt.data_ptr<at::BFloat16>()), nullptr};
  hb[1] = hb[0] + Bp * Kp;
  for (int64_t b = 0; b < B; ++b) bk.to_bf16(h_state + b * H, hb[0] + b * Kp, H);
  const bool train = save != nullptr;
  const int64_t n = static_cast<int64_t>(steps.size()), min_split = parallel_step_macs();
  // Chunks of steps: [chunk_start, +chunk) and their rows [lo, hi) (consecutive steps hold
  // consecutive rows, in either direction).
  const int64_t chunk = std::max<int64_t>(1, overrides().bf16_chunk_rows.value_or(kChunkRows) / std::max<int64_t>(B, 1));
  int64_t max_rows = 0;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    int64_t rows = 0;
    for (int64_t si = c0; si < std::min(n, c0 + chunk); ++si) rows += steps[si].bs;
    max_rows = std::max(max_rows, rows);
  }
  const int64_t ring_rows = round_up(max_rows, 16) + 16;
  Tensor ring = at::empty({ring_rows, GH}, at::kFloat);
  float* gic = ring.data_ptr<float>();
  const int64_t team = std::max<int64_t>(1, at::get_num_threads());
  Tensor xat = at::zeros({team, ring_rows, in.Kp}, at::kBFloat16);  // per thread: the chunk's x, padded
  uint16_t* xa = reinterpret_cast<uint16_t*>(xat.data_ptr<at::BFloat16>());
  std::vector<float> zero_row(fold ? GH : 0, 0.f);
  const int64_t ldg1 = GH + kGhPad;  // one_pass: gate rows, padded
  Tensor g1buf = one_pass ? at::empty({Bp, ldg1}, at::kFloat) : Tensor();
  float* g1 = one_pass ? g1buf.data_ptr<float>() : nullptr;
  auto chunk_lo = [&](int64_t si) {
    const int64_t c0 = si - si % chunk, c1 = std::min(n, c0 + chunk);
    int64_t lo = INT64_MAX;
    for (int64_t c = c0; c < c1; ++c) lo = std::min(lo, steps[c].row0);
    return lo;
  };
  auto thread_x_rows = [&]() {  // this thread's zero-padded copy of x rows [ring_rows, Kp]
#ifdef _OPENMP
    const int64_t tid = std::min<int64_t>(omp_get_thread_num(), team - 1);
#else
    const int64_t tid = 0;
#endif
    return xa + tid * ring_rows * in.Kp;
  };
  auto project = [&](int64_t si, int64_t b0, int64_t b1, int64_t j0, int64_t w) {
    const int64_t c1 = std::min(n, si + chunk), lo = chunk_lo(si);
    int64_t rows = 0;
    for (int64_t c = si; c < c1; ++c) rows += steps[c].bs;
    uint16_t* xt = thread_x_rows();
    for (int64_t r = 0; r < rows; ++r) std::memcpy(xt + r * in.Kp, in.x + (lo + r) * in.I, sizeof(uint16_t) * in.I);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < G; ++g) std::memcpy(gic + r * GH + g * H + j0, in.bias + g * H + j0, sizeof(float) * w);
    if (L.amx) {
      isa_bf16::amx_begin();
      isa_bf16::amx_step(AmxStepArgs{round_up(rows, 16), in.Kp, xt, in.Kp, in.P, G, H, b0, b1, gic, GH, true});
      isa_bf16::amx_end();
      return;
    }
    for (int64_t jb = b0; jb < b1; ++jb) block_panels(bk, rows, in.I, xt, in.Kp, in.P, in.Kp / 2, G, H, jb, gic, GH, true);
  };
  auto step = [&](int64_t si, int64_t b0, int64_t b1) {
    const StepSpan& st = steps[si];
    const float* hc = hbuf[si & 1];
    float* hn = hbuf[(si & 1) ^ 1];
    const uint16_t* hbc = hb[si & 1];
    uint16_t* hbn = hb[(si & 1) ^ 1];
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, H), w = j1 - j0;
    if (w <= 0) return;
    if (!one_pass && si % chunk == 0) project(si, b0, b1, j0, w);
    float* gi_rows = gic + (st.row0 - chunk_lo(si)) * GH;
    for (int64_t b = kReadsH ? 0 : st.bs; b < B; ++b) std::memcpy(hn + b * H + j0, hc + b * H + j0, sizeof(float) * w);
    if (train)
      for (int64_t b = 0; b < st.bs; ++b)
        std::memcpy(hprev + (st.row0 + b) * H + j0, hc + b * H + j0, sizeof(float) * w);
    FwdArgs<float> s = a;
    AmxStepArgs m{};
    if (one_pass) {
      // x_t's rows in place where whole tiles of them can be read (K a multiple of 32, Bp rows
      // inside x), else through this thread's zero-padded copy.
      const int64_t Bp = round_up(st.bs, 16);
      const uint16_t* xr = in.x + st.row0 * in.I;
      int64_t ldx = in.I;
      if (in.Kp != in.I || st.row0 + Bp > in.N) {
        uint16_t* xt = thread_x_rows();
        for (int64_t r = 0; r < st.bs; ++r) std::memcpy(xt + r * in.Kp, xr + r * in.I, sizeof(uint16_t) * in.I);
        xr = xt;
        ldx = in.Kp;
      }
      m = AmxStepArgs{Bp, in.Kp, xr, ldx, in.P, G, H, b0, b1, g1, ldg1, false};
      m.A2 = hbc;
      m.lda2 = Kp;
      m.P2 = P;
      m.K2 = Kp;
      m.bias = in.bias;
      s.gi = zero_row.data();
      s.ldgi = 0;
      s.gh = g1;
    } else if (fold) {
      if (L.amx && st.bs >= L.amx_rows) {
        isa_bf16::amx_begin();
        isa_bf16::amx_step(AmxStepArgs{round_up(st.bs, 16), Kp, hbc, Kp, P, G, H, b0, b1, gi_rows, GH, true});
        isa_bf16::amx_end();
      } else {
        for (int64_t jb = b0; jb < b1; ++jb) block_panels(bk, st.bs, H, hbc, Kp, P, Kp / 2, G, H, jb, gi_rows, GH, true);
      }
      s.gi = zero_row.data();
      s.ldgi = 0;
      s.gh = gi_rows;
    } else {
      step_product(bk, L, G, H, H, Kp, st.bs, hbc, P, gh, GH, b0, b1);
      s.gi = gi_rows;
      s.ldgi = GH;
      s.gh = gh;
    }
    s.ldgh = one_pass ? ldg1 : GH;
    s.h = hn;
    s.ldh = H;
    s.out = nullptr;  // the cell pass writes h only; out gets its bf16 rows below
    s.save = train ? save + st.row0 * S * H : nullptr;
    if (one_pass) {
      // A few hidden blocks at a time, product then cell pass, so the pass reads its gates while
      // the tiles' stores are still in L1.
      isa_bf16::amx_begin();
      for (int64_t g0 = b0; g0 < b1; g0 += kCellGroupBlocks) {
        const int64_t g1 = std::min(b1, g0 + kCellGroupBlocks), c0 = g0 * kPanel, c1 = std::min(g1 * kPanel, H);
        m.b0 = g0;
        m.b1 = g1;
        isa_bf16::amx_step(m);
        for (int64_t b = 0; b < st.bs; ++b) fwd(s, b * H + c0, b * H + c1);
      }
      isa_bf16::amx_end();
    } else {
      for (int64_t b = 0; b < st.bs; ++b) fwd(s, b * H + j0, b * H + j1);
    }
    for (int64_t b = 0; b < B; ++b) bk.to_bf16(hn + b * H + j0, hbn + b * Kp + j0, w);
    for (int64_t b = 0; b < st.bs; ++b)
      std::memcpy(out + (st.row0 + b) * ldout + j0, hbn + b * Kp + j0, sizeof(uint16_t) * w);
  };
  run_steps(n, nb, [&](int64_t si) { return split && steps[si].bs * GH * (H + in.I) >= min_split; }, step);
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
  // proj_size: the input projection of all steps first (the loop below runs step by step);
  // otherwise each direction's loop makes it chunk by chunk (ChunkInput).
  const StepLayout L;
  Tensor gi = d.proj ? scratch({N, D * GH}, opt) : Tensor();
  float* gi_p = d.proj ? gi.data_ptr<float>() : nullptr;
  if (d.proj) {
    at::parallel_for(0, N, 1024, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(gi_p + r * D * GH, bias.data(), sizeof(float) * D * GH);
    });
    for (int64_t k = 0; k < D; ++k)
      input_projection(bk, L.amx, N, d.I, bits(x), bits(w_ih[k]), G, H, gi_p + k * GH, D * GH);
  }

  Tensor out = at::empty({N, D * Hout}, x.options());  // bf16
  Tensor hn = h0.clone();
  Tensor cn = Cell::has_c ? c0->clone() : Tensor();
  Tensor save, hprev, R;
  if (train) {
    save = scratch({D, N, S * H}, opt);
    hprev = scratch({D, N, Hout}, opt);
    if (d.proj) R = scratch({D, N, H}, opt);
  }
  const int64_t Bp = L.rows(B);
  Tensor gh = at::empty({D, Bp, GH}, opt);
  uint16_t* out_p = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const auto fwd = fwd_kernel<float>(Cell::kId, train, false);
  auto direction = [&](int64_t k, bool split) {
    const bool rev = k == 1;
    const int64_t Kp = L.kpad(Hout);
    Tensor wp = pack_pair_panels(bits(w_hh[k]), G, H, Hout, Kp);
    const uint16_t* P = bits(wp);
    float* hs = hn.data_ptr<float>() + k * B * Hout;
    float* gh_k = gh.data_ptr<float>() + k * Bp * GH;
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
      const int64_t Kpi = L.kpad(d.I);
      Tensor wi = pack_pair_panels(bits(w_ih[k]), G, H, d.I, Kpi);
      const ChunkInput in{bits(x), N, d.I, bits(wi), Kpi, bias.data() + k * GH};
      recurrence<Cell>(bk, L, fwd, a, steps, hs, B, P, in, d.packed, out_p + k * Hout, D * Hout, save_k, hprev_k, gh_k,
                       split);
      return;
    }
    // proj_size (LSTM): gates on Hout-wide h, then h_t = W_hr r_t; each product split over its
    // column blocks when a step is large enough.
    const int64_t KpH = L.kpad(H);
    Tensor wr = pack_pair_panels(bits(*w_hr[k]), 1, Hout, H, KpH);
    const uint16_t* PR = bits(wr);
    Tensor rbuf = at::empty({B, H}, opt);
    Tensor hpad = at::empty({Bp, Hout}, opt);  // the projection's rows (AMX writes Bp)
    Tensor bt = at::zeros({Bp, std::max(Kp, KpH)}, at::kBFloat16);  // bf16 operand, zero padding
    uint16_t* bb = reinterpret_cast<uint16_t*>(bt.data_ptr<at::BFloat16>());
    const int64_t ldb = std::max(Kp, KpH);
    float* R_k = train ? R.data_ptr<float>() + k * N * H : nullptr;
    const int64_t nb = blocks_of(H), nbo = blocks_of(Hout), min_split = split ? parallel_step_macs() : INT64_MAX;
    for (int64_t s = 0; s < nT; ++s) {
      const StepSpan st = steps[s];
      if (train) std::memcpy(hprev_k + st.row0 * Hout, hs, sizeof(float) * st.bs * Hout);
      for (int64_t b = 0; b < st.bs; ++b) {
        bk.to_bf16(hs + b * Hout, bb + b * ldb, Hout);
        std::fill(bb + b * ldb + Hout, bb + b * ldb + ldb, uint16_t(0));
      }
      const int64_t g1 = st.bs * GH * Hout >= min_split ? 1 : nb;
      at::parallel_for(0, nb, g1, [&](int64_t b0, int64_t b1) {
        step_product_ld(bk, L, G, H, Hout, Kp, ldb, st.bs, bb, P, gh_k, GH, b0, b1);
      });
      FwdArgs<float> f = a;
      f.gi = gi_p + st.row0 * D * GH + k * GH;
      f.out = nullptr;
      f.save = train ? save_k + st.row0 * S * H : nullptr;
      f.h = train ? R_k + st.row0 * H : rbuf.data_ptr<float>();
      f.ldh = H;
      run_pointwise<float>(fwd, f, st.bs * H, kGrain / G);
      for (int64_t b = 0; b < st.bs; ++b) {
        bk.to_bf16(f.h + b * H, bb + b * ldb, H);
        std::fill(bb + b * ldb + H, bb + b * ldb + ldb, uint16_t(0));
      }
      const int64_t g2 = st.bs * Hout * H >= min_split ? 1 : nbo;
      float* hp = hpad.data_ptr<float>();
      at::parallel_for(0, nbo, g2, [&](int64_t b0, int64_t b1) {
        step_product_ld(bk, L, 1, Hout, H, KpH, ldb, st.bs, bb, PR, hp, Hout, b0, b1);
      });
      std::memcpy(hs, hp, sizeof(float) * st.bs * Hout);
      uint16_t* o = out_p + st.row0 * D * Hout + k * Hout;
      for (int64_t b = 0; b < st.bs; ++b) bk.to_bf16(hs + b * Hout, o + b * D * Hout, Hout);
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

Bf16Product::Bf16Product(const float* W, int64_t N, int64_t K, int64_t max_rows) : N_(N), K_(K) {
  const layer::StepLayout L;
  amx_ = L.amx;
  Kp_ = L.kpad(K);
  rows_ = L.rows(max_rows);
  Tensor wb = at::from_blob(const_cast<float*>(W), {N, K}, at::kFloat).to(at::kBFloat16);
  panels_ = layer::pack_pair_panels(layer::bits(wb), 1, N, K, Kp_);
  a_ = at::zeros({rows_, Kp_}, at::kBFloat16);
  c_ = at::empty({rows_, N}, at::kFloat);
}

void Bf16Product::operator()(int64_t bs, const float* A, int64_t lda, float* C, int64_t ldc, bool accumulate) const {
  if (bs == 0) return;
  const Bf16Kernels& bk = *bf16_kernels();
  uint16_t* a = reinterpret_cast<uint16_t*>(a_.data_ptr<at::BFloat16>());
  float* c = c_.data_ptr<float>();
  for (int64_t b = 0; b < bs; ++b) bk.to_bf16(A + b * lda, a + b * Kp_, K_);
  const int64_t nb = blocks_of(N_);
  // whole tiles of rows through the padded C; the live rows copied (added) into C after
  const int64_t grain = bs * N_ * K_ >= parallel_step_macs() ? 1 : nb;
  const uint16_t* P = layer::bits(panels_);
  at::parallel_for(0, nb, grain, [&](int64_t b0, int64_t b1) {
    if (amx_) {
      isa_bf16::amx_begin();
      isa_bf16::amx_step(AmxStepArgs{layer::round_up(bs, 16), Kp_, a, Kp_, P, 1, N_, b0, b1, c, N_, false});
      isa_bf16::amx_end();
    } else {
      // up to four whole blocks a call (one broadcast of A feeds four products); a partial one alone
      const int64_t K2 = Kp_ / 2, whole = N_ / kPanel;
      for (int64_t jb = b0; jb < b1;) {
        const int n = jb < whole ? static_cast<int>(std::min<int64_t>(4, std::min(b1, whole) - jb)) : 1;
        PanelBf16Args args{bs, K_, a, Kp_, P + jb * K2 * kPairPanel, c + jb * kPanel, N_,
                           std::min(kPanel, N_ - jb * kPanel), false};
        args.panels = n;
        args.panel_stride = K2 * kPairPanel;
        args.c_stride = kPanel;
        bk.panel(args);
        jb += n;
      }
    }
    const int64_t j0 = b0 * kPanel, j1 = std::min(b1 * kPanel, N_);
    for (int64_t b = 0; b < bs; ++b) {
      float* dst = C + b * ldc;
      const float* src = c + b * N_;
      if (accumulate)
        for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
      else
        std::memcpy(dst + j0, src + j0, sizeof(float) * (j1 - j0));
    }
  });
}

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
