// The bf16 panel GEMM (bf16.h) on AVX512_BF16: `vdpbf16ps` multiplies 16 column pairs by one
// broadcast pair of A and adds both products to 16 float32 sums, twice the multiply-adds of an
// fp32 FMA per instruction and half the bytes of weights per step.  Tiles as step_gemm_avx512.cpp:
// up to 8 rows x 1 panel, or 6 rows x 4 panels where the caller hands over several panels that
// share their rows (a hidden block's gate panels), a few rows splitting k into partial sums so
// 8+ dependency chains stay in flight.  Compiled with -mavx512bf16 and picked at run time (isa.cpp).
#include <immintrin.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>

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

// Panel rows are fetched this many rows (64 B each) ahead, as in step_gemm_avx512.cpp.
constexpr int64_t kPrefetchRows = 8;

// Pair row k of a panel into a register, prefetching row k + kPrefetchRows.  `reused`: the row
// feeds several rows' products; GCC could otherwise fold the load into each of them.
template <bool reused>
inline __m512bh panel_row(const uint16_t* P, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(P + (k + kPrefetchRows) * kPairPanel), _MM_HINT_T0);
  __m512i b = _mm512_loadu_si512(P + k * kPairPanel);
  if constexpr (reused) asm("" : "+v"(b));
  return (__m512bh)b;
}

// C[m, p's columns] (+)= A[m, :K] panel p for m < MR and NP panels sharing the rows (panel p at
// P + p * panel_stride, its columns at C + p * c_stride): each broadcast pair of A feeds NP
// products and each panel row MR.  KS partial sums over k keep 8+ dependency chains in flight.
template <int MR, int NP, int KS>
inline void tile(const PanelBf16Args& g, const uint16_t* A, const uint16_t* P, float* C) {
  __m512 acc[KS][MR][NP];
#pragma GCC unroll 8
  for (int u = 0; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[u][m][p] = _mm512_setzero_ps();
  const int64_t K2 = g.K / 2;
  auto product = [&](int u, int64_t k, auto a_of) {
    __m512bh b[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) b[p] = panel_row<(MR > 1)>(P + p * g.panel_stride, k);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512bh a = (__m512bh)a_of(m);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[u][m][p] = _mm512_dpbf16_ps(acc[u][m][p], a, b[p]);
    }
  };
  int64_t k = 0;
  for (; k + KS <= K2; k += KS) {
#pragma GCC unroll 8
    for (int u = 0; u < KS; ++u)
      product(u, k + u, [&](int m) { return pair_at(A + m * g.lda + 2 * (k + u)); });
  }
  for (; k < K2; ++k) product(0, k, [&](int m) { return pair_at(A + m * g.lda + 2 * k); });
  if (g.K & 1)  // the odd last k: A[m, K-1] in the pair's low half, zero in the high one
    product(0, K2, [&](int m) { return _mm512_set1_epi32(A[m * g.lda + g.K - 1]); });
#pragma GCC unroll 8
  for (int u = 1; u < KS; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[0][m][p] = _mm512_add_ps(acc[0][m][p], acc[u][m][p]);
  const __mmask16 cols = g.ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << g.ncols) - 1u);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      float* c = C + p * g.c_stride + m * g.ldc;
      __m512 r = acc[0][m][p];
      if (g.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(cols, c));
      _mm512_mask_storeu_ps(c, cols, r);
    }
}

// NP panels at a time: tiles of up to 8 rows x 1 panel, or 6 rows x 2-4 panels (24 sums, NP panel
// rows and a broadcast in the 32 zmm registers).
template <int NP>
void panels_of(const PanelBf16Args& g, const uint16_t* P, float* C) {
  if constexpr (NP == 1) {
    for_row_tiles<8>(g.M, [&](auto rows, int64_t m) {
      constexpr int MR = decltype(rows)::value;
      tile<MR, 1, (MR == 1 ? 8 : MR <= 3 ? 4 : MR <= 7 ? 2 : 1)>(g, g.A + m * g.lda, P, C + m * g.ldc);
    });
  } else {
    for_row_tiles<6>(g.M, [&](auto rows, int64_t m) {
      constexpr int MR = decltype(rows)::value;
      constexpr int KS = (8 + MR * NP - 1) / (MR * NP);
      tile<MR, NP, KS>(g, g.A + m * g.lda, P, C + m * g.ldc);
    });
  }
}

}  // namespace

void panel_gemm(const PanelBf16Args& g) {
  for (int p0 = 0; p0 < g.panels; p0 += 4) {
    const uint16_t* P = g.P + p0 * g.panel_stride;
    float* C = g.C + p0 * g.c_stride;
    switch (std::min(4, g.panels - p0)) {
      case 1: panels_of<1>(g, P, C); break;
      case 2: panels_of<2>(g, P, C); break;
      case 3: panels_of<3>(g, P, C); break;
      default: panels_of<4>(g, P, C); break;
    }
  }
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

namespace fastrnn {
namespace isa_bf16 {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// 2 x 2 register blocking: tmm0-3 hold C of two 16-row blocks x two panels, tmm4-5 the two A
// blocks (16 rows x 32 bf16), tmm6-7 the two B panels (16 pairs x 16 columns): per 32 k, four
// tile loads feed four multiplies.  Panels are the outer loop so each pair of panels is read from
// L2 once per step for all row blocks (W_hh of LSTM H=512 is 2 MiB: a loop over row blocks
// outside would stream it from L3 once per 16 rows).
const TileConfig& tile_config() {
  static const TileConfig cfg = [] {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.colsb[t] = 64;
      c.rows[t] = 16;
    }
    return c;
  }();
  return cfg;
}

// C tiles += the A blocks (rows m0.., and m0 + 16..) times panels p, p + 1 of one operand, K/32
// steps of 32 k.  Inlined into amx_block: the tile registers live across it.
template <int NM, int NP>
__attribute__((always_inline)) inline void amx_k_loop(const uint16_t* A, int64_t lda, const uint16_t* P,
                                                      int64_t K) {
  const int64_t stride_p = K * 16;
  for (int64_t k = 0; k < K; k += 32) {
    _tile_loadd(4, A + k, lda * 2);
    _tile_loadd(6, P + k * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (NP > 1) {
      _tile_loadd(7, P + stride_p + k * 16, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (NM > 1) {
      _tile_loadd(5, A + 16 * lda + k, lda * 2);
      _tile_dpbf16ps(2, 5, 6);
      if (NP > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
}

template <int NM, int NP>
inline void amx_block(const AmxStepArgs& a, int64_t m0, int64_t p, float* tmp) {
  // GCC's tile intrinsics are macros that paste the tile number: literal numbers only.
  auto column = [&](int pi, int64_t& ncols) {  // offset of panel p + pi's columns in a row of C
    const int64_t q = p + pi, jb = q / a.G, g = q - jb * a.G;
    ncols = std::min<int64_t>(16, a.H - jb * 16);
    return g * a.H + jb * 16;
  };
  auto target = [&](int mi, int pi, int64_t& ncols) { return a.C + (m0 + 16 * mi) * a.ldc + column(pi, ncols); };
  auto spill = [&](float* C, int64_t ncols) {
    for (int r = 0; r < 16; ++r) std::memcpy(C + r * a.ldc, tmp + r * 16, sizeof(float) * ncols);
  };
  auto gather = [&](const float* C, int64_t ldc, int64_t ncols) {  // ldc 0: one row for all 16
    for (int r = 0; r < 16; ++r) {
      std::memcpy(tmp + r * 16, C + r * ldc, sizeof(float) * ncols);
      std::fill(tmp + r * 16 + ncols, tmp + r * 16 + 16, 0.f);
    }
  };
  // A bias tile is one row read 16 times (stride 0).
#define FASTRNN_AMX_INIT(t, mi, pi)               \
  if (NM > mi && NP > pi) {                       \
    int64_t ncols;                                \
    if (a.bias != nullptr) {                      \
      const float* b = a.bias + column(pi, ncols); \
      if (ncols == 16) {                          \
        _tile_loadd(t, b, 0);                     \
      } else {                                    \
        gather(b, 0, ncols);                      \
        _tile_loadd(t, tmp, 64);                  \
      }                                           \
    } else if (!a.load_c) {                       \
      _tile_zero(t);                              \
    } else {                                      \
      float* C = target(mi, pi, ncols);           \
      if (ncols == 16) {                          \
        _tile_loadd(t, C, a.ldc * 4);             \
      } else {                                    \
        gather(C, a.ldc, ncols);                  \
        _tile_loadd(t, tmp, 64);                  \
      }                                           \
    }                                             \
  }
  FASTRNN_AMX_INIT(0, 0, 0)
  FASTRNN_AMX_INIT(1, 0, 1)
  FASTRNN_AMX_INIT(2, 1, 0)
  FASTRNN_AMX_INIT(3, 1, 1)
#undef FASTRNN_AMX_INIT
  amx_k_loop<NM, NP>(a.A + m0 * a.lda, a.lda, a.P + p * a.K * 16, a.K);
  if (a.K2 > 0) amx_k_loop<NM, NP>(a.A2 + m0 * a.lda2, a.lda2, a.P2 + p * a.K2 * 16, a.K2);
#define FASTRNN_AMX_STORE(t, mi, pi)              \
  if (NM > mi && NP > pi) {                       \
    int64_t ncols;                                \
    float* C = target(mi, pi, ncols);             \
    if (ncols == 16) {                            \
      _tile_stored(t, C, a.ldc * 4);              \
    } else {                                      \
      _tile_stored(t, tmp, 64);                   \
      spill(C, ncols);                            \
    }                                             \
  }
  FASTRNN_AMX_STORE(0, 0, 0)
  FASTRNN_AMX_STORE(1, 0, 1)
  FASTRNN_AMX_STORE(2, 1, 0)
  FASTRNN_AMX_STORE(3, 1, 1)
#undef FASTRNN_AMX_STORE
}

template <int NP>
inline void amx_panels(const AmxStepArgs& a, int64_t p, float* tmp) {
  int64_t m0 = 0;
  for (; m0 + 32 <= a.Mp; m0 += 32) amx_block<2, NP>(a, m0, p, tmp);
  if (m0 < a.Mp) amx_block<1, NP>(a, m0, p, tmp);
}

}  // namespace

void amx_begin() { _tile_loadconfig(&tile_config()); }
void amx_end() { _tile_release(); }

void amx_step(const AmxStepArgs& a) {
  alignas(64) float tmp[16 * 16];
  const int64_t p0 = a.b0 * a.G, p1 = a.b1 * a.G;
  int64_t p = p0;
  for (; p + 2 <= p1; p += 2) amx_panels<2>(a, p, tmp);
  if (p < p1) amx_panels<1>(a, p, tmp);
}

}  // namespace isa_bf16
}  // namespace fastrnn
