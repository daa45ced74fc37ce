// The per-step recurrent product as register-blocked AVX2+FMA micro-kernels (float32).
//
// Why not MKL here: the per-step product is a short-and-wide GEMM (M = batch, often 1-64 rows)
// and MKL reaches only 15-65 GFLOP/s on such shapes on the 2-core EPYC (torch.mm [16,256]x[256,1024]:
// 42 GFLOP/s; the same library does 145 on [1600,256]x[256,1024]).  With the weight packed once
// per layer call into 16-column panels (fused_steps.h), one tile here streams its panel row by row
// (64 contiguous bytes per k) and keeps MR x 16 results in registers.  Compiled only into the
// AVX2 object library; the baseline kernel table has no panel GEMM and the loops then use MKL.
#include <immintrin.h>

#include <cstdint>

#include "kernel_table.h"

namespace fastrnn {
namespace isa_avx2 {
namespace {

// Panel rows are fetched this many rows (64 B each) ahead, as in step_gemm_avx512.cpp: at a few
// rows a step streams its panels from L2 and the L1 prefetchers alone leave the loads waiting.
constexpr int64_t kPrefetchRows = 8;

// Row k of a panel as two registers, prefetching row k + kPrefetchRows.  `reused`: the row feeds
// several rows' FMAs; GCC would otherwise fold the loads into each of them (one load per tile row
// and half-register).  Measured with FASTRNN_ISA=avx2 on the Xeon (Sapphire Rapids class), one
// thread, T=100, H=256 forward: 2 rows LSTM 3.16 -> 2.46 ms, GRU 2.30 -> 1.82, RNN 0.76 -> 0.63;
// 1, 3, 4, 8 and 16 rows within +-4% (the prefetch alone: 0-3%).
template <bool reused>
inline void panel_row(const float* P, int64_t k, __m256& b0, __m256& b1) {
  _mm_prefetch(reinterpret_cast<const char*>(P + (k + kPrefetchRows) * 16), _MM_HINT_T0);
  b0 = _mm256_loadu_ps(P + k * 16);
  b1 = _mm256_loadu_ps(P + k * 16 + 8);
  if constexpr (reused) asm("" : "+x"(b0), "+x"(b1));
}

// lo/hi[u][m] += sum over k (step KS, offset u) of A[m, k] * P[k, :] for m < MR, k < K.
template <int MR, int KS>
inline void segment(__m256 (&lo)[KS][MR], __m256 (&hi)[KS][MR], int64_t K, const float* A, int64_t lda,
                    const float* P) {
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u) {
      __m256 b0, b1;
      panel_row<(MR > 1)>(P, k + u, b0, b1);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m256 a = _mm256_broadcast_ss(A + m * lda + k + u);
        lo[u][m] = _mm256_fmadd_ps(a, b0, lo[u][m]);
        hi[u][m] = _mm256_fmadd_ps(a, b1, hi[u][m]);
      }
    }
  }
  for (; k < K; ++k) {
    __m256 b0, b1;
    panel_row<(MR > 1)>(P, k, b0, b1);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(A + m * lda + k);
      lo[0][m] = _mm256_fmadd_ps(a, b0, lo[0][m]);
      hi[0][m] = _mm256_fmadd_ps(a, b1, hi[0][m]);
    }
  }
}

// C[m, :ncols] (+)= bias + A1[m, :K1] P[:K1] + A2[m, :K2] P[K1:] for m < MR.  KS partial sums
// over k keep at least eight FMA chains in flight (FMA latency 4 x 2 pipes) when MR is small.
template <int MR, int KS>
inline void tile(const PanelArgs& g, const float* A1, const float* A2, float* C) {
  __m256 lo[KS][MR], hi[KS][MR];
  alignas(32) float b16[16] = {};
  if (g.bias)
    for (int64_t j = 0; j < g.ncols && j < 16; ++j) b16[j] = g.bias[j];
  const __m256 b_lo = _mm256_load_ps(b16), b_hi = _mm256_load_ps(b16 + 8);
#pragma GCC unroll 8
  for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      lo[u][m] = u == 0 ? b_lo : _mm256_setzero_ps();
      hi[u][m] = u == 0 ? b_hi : _mm256_setzero_ps();
    }
  segment<MR, KS>(lo, hi, g.K1, A1, g.lda1, g.P);
  if (g.K2 > 0) segment<MR, KS>(lo, hi, g.K2, A2, g.lda2, g.P + (g.k2_row < 0 ? g.K1 : g.k2_row) * 16);
#pragma GCC unroll 8
  for (int u = 1; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      lo[0][m] = _mm256_add_ps(lo[0][m], lo[u][m]);
      hi[0][m] = _mm256_add_ps(hi[0][m], hi[u][m]);
    }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    float* c = C + m * g.ldc;
    if (g.ncols == 16) {
      __m256 r0 = lo[0][m], r1 = hi[0][m];
      if (g.accumulate) {
        r0 = _mm256_add_ps(r0, _mm256_loadu_ps(c));
        r1 = _mm256_add_ps(r1, _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, r0);
      _mm256_storeu_ps(c + 8, r1);
    } else {  // the last panel of a matrix whose width is not a multiple of 16
      alignas(32) float tmp[16];
      _mm256_store_ps(tmp, lo[0][m]);
      _mm256_store_ps(tmp + 8, hi[0][m]);
      for (int64_t j = 0; j < g.ncols; ++j) c[j] = g.accumulate ? c[j] + tmp[j] : tmp[j];
    }
  }
}

}  // namespace

// Tiles of 6 rows (12 accumulators of 16 registers); a remainder of 1-3 rows splits k to keep
// at least eight FMA chains in flight.
void panel_gemm2(const PanelArgs& g) {
  if (g.panels > 1) {  // 16 ymm registers hold no multi-panel tile: one panel at a time
    PanelArgs one = g;
    one.panels = 1;
    for (int p = 0; p < g.panels; ++p, one.P += g.panel_stride, one.C += g.c_stride) {
      one.bias = g.bias ? g.bias + p * g.bias_stride : nullptr;
      panel_gemm2(one);
    }
    return;
  }
  for_row_tiles<6>(g.M, [&](auto rows, int64_t m) {
    constexpr int MR = decltype(rows)::value;
    tile<MR, (MR == 1 ? 4 : MR <= 3 ? 2 : 1)>(g, g.A1 + m * g.lda1, g.A2 + m * g.lda2, g.C + m * g.ldc);
  });
}

void panel_gemm(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                int64_t ncols, bool accumulate) {
  panel_gemm2(PanelArgs{M, K, A, lda, 0, A, lda, P, nullptr, C, ldc, ncols, accumulate});
}

}  // namespace isa_avx2
}  // namespace fastrnn
