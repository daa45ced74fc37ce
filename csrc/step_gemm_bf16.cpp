// The bf16 panel GEMM (bf16.h) on AVX512_BF16: `vdpbf16ps` multiplies 16 column pairs by one
// broadcast pair of A and adds both products to 16 float32 sums, twice the multiply-adds of an
// fp32 FMA per instruction and half the bytes of weights per step.  Tiles as step_gemm_avx512.cpp:
// 8 rows x 16 columns, a remainder of 1-7 rows splitting k into partial sums so 8 dependency
// chains stay in flight.  Compiled with -mavx512bf16 and picked at run time (isa.cpp).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "kernel_table.h"

namespace fastrnn {
namespace isa_bf16 {
namespace {

inline __m512i pair_at(const uint16_t* a) {
  uint32_t v;
  std::memcpy(&v, a, sizeof(v));
  return _mm512_set1_epi32(static_cast<int>(v));
}

template <int MR, int KS>
inline void tile(const PanelBf16Args& g, const uint16_t* A, float* C) {
  __m512 acc[KS][MR];
#pragma GCC unroll 8
  for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[u][m] = _mm512_setzero_ps();
  const int64_t K2 = g.K / 2;
  const uint16_t* P = g.P;
  int64_t k = 0;
  for (; k + KS <= K2; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u) {
      const __m512bh b = (__m512bh)_mm512_loadu_si512(P + (k + u) * kPairPanel);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
        acc[u][m] = _mm512_dpbf16_ps(acc[u][m], (__m512bh)pair_at(A + m * g.lda + 2 * (k + u)), b);
    }
  }
  for (; k < K2; ++k) {
    const __m512bh b = (__m512bh)_mm512_loadu_si512(P + k * kPairPanel);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
      acc[0][m] = _mm512_dpbf16_ps(acc[0][m], (__m512bh)pair_at(A + m * g.lda + 2 * k), b);
  }
  if (g.K & 1) {  // the odd last k: A[m, K-1] in the pair's low half, zero in the high one
    const __m512bh b = (__m512bh)_mm512_loadu_si512(P + K2 * kPairPanel);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
      acc[0][m] = _mm512_dpbf16_ps(acc[0][m], (__m512bh)_mm512_set1_epi32(A[m * g.lda + g.K - 1]), b);
  }
#pragma GCC unroll 8
  for (int u = 1; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[0][m] = _mm512_add_ps(acc[0][m], acc[u][m]);
  const __mmask16 cols = g.ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << g.ncols) - 1u);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    __m512 r = acc[0][m];
    if (g.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(cols, C + m * g.ldc));
    _mm512_mask_storeu_ps(C + m * g.ldc, cols, r);
  }
}

}  // namespace

void panel_gemm(const PanelBf16Args& g) {
  for_row_tiles<8>(g.M, [&](auto rows, int64_t m) {
    constexpr int MR = decltype(rows)::value;
    tile<MR, (MR == 1 ? 8 : MR <= 3 ? 4 : MR <= 7 ? 2 : 1)>(g, g.A + m * g.lda, g.C + m * g.ldc);
  });
}

void to_bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

}  // namespace isa_bf16
}  // namespace fastrnn
