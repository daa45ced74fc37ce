// The per-step recurrent product (float32) as AVX-512 micro-kernels: the same packed 16-column
// panels as step_gemm.cpp (AVX2), where one panel row is exactly one zmm register.
//
// Why a second kernel: AVX2 has 16 ymm registers, so its tiles are at most 6 rows x 16 columns
// and a 16-row step runs as 6 + 6 + 4 rows (the 4-row tile loses ~10%); with 32 zmm registers
// a tile holds 8 rows x 16 columns in 8 accumulators and every remainder of 1-7 rows keeps 8+
// FMA chains in flight by splitting k.  Measured single-thread on the 2-core AMD EPYC Zen4
// (which runs a zmm FMA as two 256-bit halves, so the peak is AVX2's), GFLOP/s for
// [M, 256] x [256, 1024] AVX2 / AVX-512: M=4 99 / 112, M=16 88-110 / 115, M=32 106 / 116,
// M=64 (K=512, N=2048) 110 / 115.  On Intel server parts with two 512-bit FMA units the
// peak itself doubles.  Compiled into the AVX-512 table with pointwise.cpp; isa.cpp picks it at run time.
//
// The callers (fused_steps.h) hand over several panels that share their rows at once where they
// can (PanelArgs::panels: a hidden block's gate panels, or consecutive blocks): a tile of up to
// 6 rows x 4 panels then loads each broadcast of A once for 4 FMAs, and every panel row once
// (an 8-row single-panel tile loads one panel row and 8 broadcasts for 8 FMAs).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernel_table.h"

namespace fastrnn {
namespace isa_avx512 {
namespace {

// Panel rows are fetched this many rows (64 B each) ahead: at a few rows a step streams its
// panels from L2, and the L1 prefetchers alone leave the loads waiting.  Measured single-thread,
// LSTM H=256 gate panels from L2 (1 MiB): 1 row 11.4 -> 9.7 us a step, 4 rows 16.7 -> 13.7
// (8 rows ahead; 16 and 32 measured 1-8% slower).
constexpr int64_t kPrefetchRows = 8;

// Row k of a panel into a register, prefetching row k + kPrefetchRows.  `reused`: the row feeds
// several FMAs; GCC would otherwise fold the load into each of them (one load per tile row:
// 2-row tiles ran at 54 GB/s instead of 77).
template <bool reused>
inline __m512 panel_row(const float* P, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(P + (k + kPrefetchRows) * 16), _MM_HINT_T0);
  __m512 b = _mm512_loadu_ps(P + k * 16);
  if constexpr (reused) asm("" : "+v"(b));
  return b;
}

// acc[u][m] += sum over k (step KS, offset u) of A[m, k] * P[k, :] for m < MR, k < K.
template <int MR, int KS>
inline void segment(__m512 (&acc)[KS][MR], int64_t K, const float* A, int64_t lda, const float* P) {
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u) {
      const __m512 b = panel_row<(MR > 1)>(P, k + u);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[u][m] = _mm512_fmadd_ps(_mm512_set1_ps(A[m * lda + k + u]), b, acc[u][m]);
    }
  }
  for (; k < K; ++k) {
    const __m512 b = panel_row<(MR > 1)>(P, k);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[0][m] = _mm512_fmadd_ps(_mm512_set1_ps(A[m * lda + k]), b, acc[0][m]);
  }
}

// C[m, :ncols] (+)= bias + A1[m, :K1] P[:K1] + A2[m, :K2] P[K1:] for m < MR, with KS partial sums
// over k (FMA chains in flight when MR is small).
template <int MR, int KS>
inline void tile(const PanelArgs& g, const float* A1, const float* A2, float* C) {
  __m512 acc[KS][MR];
  const __mmask16 cols = g.ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << g.ncols) - 1u);
  const __m512 init = g.bias ? _mm512_maskz_loadu_ps(cols, g.bias) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[u][m] = u == 0 ? init : _mm512_setzero_ps();
  segment<MR, KS>(acc, g.K1, A1, g.lda1, g.P);
  if (g.K2 > 0) segment<MR, KS>(acc, g.K2, A2, g.lda2, g.P + (g.k2_row < 0 ? g.K1 : g.k2_row) * 16);
#pragma GCC unroll 8
  for (int u = 1; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[0][m] = _mm512_add_ps(acc[0][m], acc[u][m]);
  // The last panel of a matrix whose width is not a multiple of 16 stores only its ncols.
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    __m512 r = acc[0][m];
    if (g.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(cols, C + m * g.ldc));
    _mm512_mask_storeu_ps(C + m * g.ldc, cols, r);
  }
}

// The NP-panel tile (PanelArgs::panels): acc[u][p][m] over panels p < NP, KS partial sums.
template <int MR, int NP, int KS>
inline void multi_segment(__m512 (&acc)[KS][NP][MR], int64_t K, const float* A, int64_t lda, const float* P,
                          int64_t pstride) {
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u) {
      __m512 b[NP];
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) b[p] = panel_row<(MR > 1)>(P + p * pstride, k + u);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 a = _mm512_set1_ps(A[m * lda + k + u]);
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) acc[u][p][m] = _mm512_fmadd_ps(a, b[p], acc[u][p][m]);
      }
    }
  }
  for (; k < K; ++k) {
    __m512 b[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) b[p] = panel_row<(MR > 1)>(P + p * pstride, k);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(A[m * lda + k]);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[0][p][m] = _mm512_fmadd_ps(a, b[p], acc[0][p][m]);
    }
  }
}

template <int MR, int NP, int KS>
inline void multi_tile(const PanelArgs& g, const float* A1, const float* A2, float* C) {
  __m512 acc[KS][NP][MR];
  const __mmask16 cols = g.ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << g.ncols) - 1u);
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) {
    const __m512 init = g.bias ? _mm512_maskz_loadu_ps(cols, g.bias + p * g.bias_stride) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[u][p][m] = u == 0 ? init : _mm512_setzero_ps();
  }
  multi_segment<MR, NP, KS>(acc, g.K1, A1, g.lda1, g.P, g.panel_stride);
  if (g.K2 > 0) multi_segment<MR, NP, KS>(acc, g.K2, A2, g.lda2, g.P + (g.k2_row < 0 ? g.K1 : g.k2_row) * 16, g.panel_stride);
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      __m512 r = acc[0][p][m];
#pragma GCC unroll 8
      for (int u = 1; u < KS; ++u) r = _mm512_add_ps(r, acc[u][p][m]);
      float* c = C + p * g.c_stride + m * g.ldc;
      if (g.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(cols, c));
      _mm512_mask_storeu_ps(c, cols, r);
    }
}

// NP panels over tiles of at most 6 rows (NP x 6 accumulators, KS partial sums where that leaves
// fewer than 8 FMA chains).  Measured single-thread against one panel at a time in 8-row tiles,
// LSTM H=256 with W_ih, one thread's half of the blocks (1 MiB, in L2), us a step: 1 row 11.4 ->
// 9.5, 4 rows 17.7 -> 14.4, 16 rows 60 -> 51, 64 rows 244 -> 199; 8 rows (6 + 2) 32 -> 31.
template <int NP>
void multi_panel(const PanelArgs& g) {
  for_row_tiles<6>(g.M, [&](auto rows, int64_t m) {
    constexpr int MR = decltype(rows)::value;
    constexpr int KS = MR * NP >= 8 ? 1 : MR * NP >= 4 ? 2 : 4;
    multi_tile<MR, NP, KS>(g, g.A1 + m * g.lda1, g.A2 + m * g.lda2, g.C + m * g.ldc);
  });
}

// C[m, n0 + :16] += sum_k Ap[k * 8 + m] * X[k * ldx + n0 + :16] for m < MR (masked to `cols`),
// Ap the tile's A values packed k-major.
template <int MR>
inline void rank_tile(const RankUpdateArgs& r, const float* Ap, int64_t K, const float* X, float* C, int64_t n0,
                      __mmask16 cols) {
  __m512 acc[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) acc[m] = _mm512_maskz_loadu_ps(cols, C + m * r.ldc + n0);
  for (int64_t k = 0; k < K; ++k) {
    const __m512 x = _mm512_maskz_loadu_ps(cols, X + k * r.ldx + n0);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(Ap[k * 8 + m]), x, acc[m]);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(C + m * r.ldc + n0, cols, acc[m]);
}

template <int MR>
void rank_rows(const RankUpdateArgs& r, const float* A, float* C) {
  // A's rows are lda apart (a whole gate row of dG: often a multiple of 4 KiB, so K of them share
  // one L1 set); the tile's MR columns are copied k-major once and reused for every column block.
  constexpr int64_t kK = 512;
  alignas(64) float Ap[kK * 8];
  for (int64_t k0 = 0; k0 < r.K; k0 += kK) {
    const int64_t K = std::min(kK, r.K - k0);
    for (int64_t k = 0; k < K; ++k)
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) Ap[k * 8 + m] = A[(k0 + k) * r.lda + m];
    const float* X = r.X + k0 * r.ldx;
    for (int64_t n0 = 0; n0 < r.N; n0 += 16) {
      const int64_t w = r.N - n0;
      const __mmask16 cols = w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
      rank_tile<MR>(r, Ap, K, X, C, n0, cols);
    }
  }
}

}  // namespace

// Row tiles of 8 (8 FMA chains) over 16-column blocks, the last one masked.
void rank_update(const RankUpdateArgs& r) {
  for_row_tiles<8>(r.M, [&](auto rows, int64_t m) { rank_rows<decltype(rows)::value>(r, r.A + m, r.C + m * r.ldc); });
}

// Tiles of 8 rows; a remainder of MR rows splits k into enough partial sums to keep 8 FMA chains
// in flight.
void panel_gemm2(const PanelArgs& g) {
  switch (g.panels) {
    case 1: break;
    case 2: return multi_panel<2>(g);
    case 3: return multi_panel<3>(g);
    case 4: return multi_panel<4>(g);
    default: {  // more than a tile holds: four at a time
      PanelArgs part = g;
      for (int p = 0; p < g.panels; p += 4) {
        part.panels = std::min(4, g.panels - p);
        part.P = g.P + p * g.panel_stride;
        part.C = g.C + p * g.c_stride;
        part.bias = g.bias ? g.bias + p * g.bias_stride : nullptr;
        panel_gemm2(part);
      }
      return;
    }
  }
  for_row_tiles<8>(g.M, [&](auto rows, int64_t m) {
    constexpr int MR = decltype(rows)::value;
    tile<MR, (MR == 1 ? 8 : MR <= 3 ? 4 : MR <= 7 ? 2 : 1)>(g, g.A1 + m * g.lda1, g.A2 + m * g.lda2, g.C + m * g.ldc);
  });
}

void panel_gemm(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                int64_t ncols, bool accumulate) {
  panel_gemm2(PanelArgs{M, K, A, lda, 0, A, lda, P, nullptr, C, ldc, ncols, accumulate});
}

}  // namespace isa_avx512
}  // namespace fastrnn
