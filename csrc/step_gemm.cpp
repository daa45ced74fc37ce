// The per-step recurrent product as register-blocked AVX2+FMA micro-kernels (float32).
//
// Why not MKL here: the per-step product is a short-and-wide GEMM (M = batch, often 1-64 rows)
// and MKL reaches only 15-65 GFLOP/s on such shapes on the 2-core EPYC (torch.mm [16,256]x[256,1024]:
// 42 GFLOP/s; the same library does 145 on [1600,256]x[256,1024]).  With the weight packed once
// per layer call into 16-column panels (rnn.cpp), one tile here streams its panel row by row
// (64 contiguous bytes per k) and keeps MR x 16 results in registers.  Compiled only into the
// AVX2 object library; the baseline kernel table has no panel GEMM and rnn.cpp then uses MKL.
#include <immintrin.h>

#include <cstdint>

#include "cells.h"

namespace fastrnn {
namespace isa_avx2 {
namespace {

// C[m, :ncols] (+)= sum_k A[m, k] * P[k, :] for m < MR.  KS partial sums over k keep at least
// eight FMA chains in flight (FMA latency 4 x 2 pipes) when MR is small.
template <int MR, int KS>
inline void tile(int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc, int64_t ncols,
                 bool accumulate) {
  __m256 lo[KS][MR], hi[KS][MR];
#pragma GCC unroll 8
  for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) lo[u][m] = hi[u][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u) {
      const __m256 b0 = _mm256_loadu_ps(P + (k + u) * 16);
      const __m256 b1 = _mm256_loadu_ps(P + (k + u) * 16 + 8);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m256 a = _mm256_broadcast_ss(A + m * lda + k + u);
        lo[u][m] = _mm256_fmadd_ps(a, b0, lo[u][m]);
        hi[u][m] = _mm256_fmadd_ps(a, b1, hi[u][m]);
      }
    }
  }
  for (; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(P + k * 16);
    const __m256 b1 = _mm256_loadu_ps(P + k * 16 + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(A + m * lda + k);
      lo[0][m] = _mm256_fmadd_ps(a, b0, lo[0][m]);
      hi[0][m] = _mm256_fmadd_ps(a, b1, hi[0][m]);
    }
  }
#pragma GCC unroll 8
  for (int u = 1; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      lo[0][m] = _mm256_add_ps(lo[0][m], lo[u][m]);
      hi[0][m] = _mm256_add_ps(hi[0][m], hi[u][m]);
    }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    float* c = C + m * ldc;
    if (ncols == 16) {
      __m256 r0 = lo[0][m], r1 = hi[0][m];
      if (accumulate) {
        r0 = _mm256_add_ps(r0, _mm256_loadu_ps(c));
        r1 = _mm256_add_ps(r1, _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, r0);
      _mm256_storeu_ps(c + 8, r1);
    } else {  // the last panel of a matrix whose width is not a multiple of 16
      alignas(32) float tmp[16];
      _mm256_store_ps(tmp, lo[0][m]);
      _mm256_store_ps(tmp + 8, hi[0][m]);
      for (int64_t j = 0; j < ncols; ++j) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];
    }
  }
}

}  // namespace

void panel_gemm(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                int64_t ncols, bool accumulate) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) tile<6, 1>(K, A + m * lda, lda, P, C + m * ldc, ldc, ncols, accumulate);
  const float* a = A + m * lda;
  float* c = C + m * ldc;
  switch (M - m) {
    case 1: tile<1, 4>(K, a, lda, P, c, ldc, ncols, accumulate); break;
    case 2: tile<2, 2>(K, a, lda, P, c, ldc, ncols, accumulate); break;
    case 3: tile<3, 2>(K, a, lda, P, c, ldc, ncols, accumulate); break;
    case 4: tile<4, 1>(K, a, lda, P, c, ldc, ncols, accumulate); break;
    case 5: tile<5, 1>(K, a, lda, P, c, ldc, ncols, accumulate); break;
    default: break;
  }
}

}  // namespace isa_avx2
}  // namespace fastrnn
