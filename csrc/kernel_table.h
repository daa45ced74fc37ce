// The interface of the kernels compiled once per ISA (pointwise.cpp, step_gemm*.cpp): the table
// of pointwise passes and panel GEMMs that isa.cpp picks at run time, and the row-tile dispatch
// the micro-kernels share.  No torch dependency.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cells.h"

namespace fastrnn {

// The kernel table pointwise.cpp exports once per ISA.  A pass covers the flat element
// range [begin, end) of the bs x H active block, so callers can split it across threads.
template <typename T> using FwdFn = void (*)(const FwdArgs<T>&, int64_t begin, int64_t end);
template <typename T> using BwdFn = void (*)(const BwdArgs<T>&, int64_t begin, int64_t end);
// C[m, :ncols] (+)= A[m, :K] P for m < M, P one packed K x 16 panel (step_gemm.cpp).
using PanelGemmFn = void (*)(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C,
                             int64_t ldc, int64_t ncols, bool accumulate);

// The two-operand form, for a step that also does its input projection:
// C[m, :ncols] (+)= bias[:ncols] + A1[m, :K1] P[:K1] + A2[m, :K2] P[K1:K1+K2], P one packed
// (K1 + K2) x 16 panel, bias optional (nullptr: zero).
// With panels = NP > 1, NP such products at once (panel p at P + p * panel_stride, its bias at
// bias + p * bias_stride, its columns at C + p * c_stride), all of width ncols: at a few rows
// one broadcast of A then feeds NP FMAs instead of one (a step's G gate panels of one hidden
// block, or consecutive blocks of a one-gate cell).
struct PanelArgs {
  int64_t M, K1;
  const float* A1; int64_t lda1;
  int64_t K2;
  const float* A2; int64_t lda2;
  const float* P;
  const float* bias;
  float* C; int64_t ldc;
  int64_t ncols;
  bool accumulate;
  int panels = 1;
  int64_t panel_stride = 0, bias_stride = 0, c_stride = 0;
  // The panel row where A2's k starts (-1: K1, right after A1's): a step that multiplies by part of
  // h first (fused_steps.h: its own units, then the other threads' once they are written).
  int64_t k2_row = -1;
};
using PanelGemm2Fn = void (*)(const PanelArgs&);

// A rank-K update of an M x N block, for weight gradients accumulated over chunks of steps:
// C[m, n] += sum_k A[k * lda + m] * X[k * ldx + n] for m < M, n < N.  A is read transposed (the
// step's dG columns of M gate rows), X's rows unpacked (the step's x_t or h_{t-1} rows).
struct RankUpdateArgs {
  int64_t M, N, K;
  const float* A; int64_t lda;
  const float* X; int64_t ldx;
  float* C; int64_t ldc;
};
using RankUpdateFn = void (*)(const RankUpdateArgs&);

// The row dispatch of the micro-kernels (step_gemm*.cpp), written once: f(rows, m) with rows a
// std::integral_constant<int, R>, for tiles of R = kMax rows over [0, M), then once for the
// remainder of 1 .. kMax - 1 rows, so each tile size is its own instantiation.
template <int R, typename F>
inline void remainder_tile(int64_t rows, int64_t m, F& f) {
  if constexpr (R > 0) {
    if (rows == R)
      f(std::integral_constant<int, R>{}, m);
    else
      remainder_tile<R - 1>(rows, m, f);
  }
}

template <int kMax, typename F>
inline void for_row_tiles(int64_t M, F&& f) {
  int64_t m = 0;
  for (; m + kMax <= M; m += kMax) f(std::integral_constant<int, kMax>{}, m);
  remainder_tile<kMax - 1>(M - m, m, f);
}

struct KernelTable {
  FwdFn<float> fwd_f[kNumCells][2][2];   // [cell][kSave][kOut]
  FwdFn<double> fwd_d[kNumCells][2][2];
  BwdFn<float> bwd_f[kNumCells][2];      // [cell][kDout]
  BwdFn<double> bwd_d[kNumCells][2];
  PanelGemmFn panel_f;           // float32 recurrent product; nullptr where the ISA has no kernel
  PanelGemm2Fn panel2_f;         // the same with a second operand and a bias row
  RankUpdateFn rank_update_f;    // float32 weight-gradient update; AVX-512 only (AVX2's measured
                                 // slower than MKL's GEMMs after the loop: 75 vs ~85 GFLOP/s a core)
  const char* isa;
};

// The table of this CPU (isa.cpp), and its pointwise passes by cell id and dtype.
const KernelTable& kernels();
template <typename T> FwdFn<T> fwd_kernel(int cell, bool save, bool out);
template <> inline FwdFn<float> fwd_kernel<float>(int c, bool s, bool o) { return kernels().fwd_f[c][s][o]; }
template <> inline FwdFn<double> fwd_kernel<double>(int c, bool s, bool o) { return kernels().fwd_d[c][s][o]; }
template <typename T> BwdFn<T> bwd_kernel(int cell, bool dout);
template <> inline BwdFn<float> bwd_kernel<float>(int c, bool d) { return kernels().bwd_f[c][d]; }
template <> inline BwdFn<double> bwd_kernel<double>(int c, bool d) { return kernels().bwd_d[c][d]; }

// The tables compiled once per ISA (pointwise.cpp, step_gemm*.cpp).
namespace isa_base { const KernelTable& kernels(); }
namespace isa_avx2 {
const KernelTable& kernels();
void panel_gemm(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                int64_t ncols, bool accumulate);
void panel_gemm2(const PanelArgs& g);
}
namespace isa_avx512 {  // step_gemm_avx512.cpp: the same contract with zmm tiles
const KernelTable& kernels();
void panel_gemm(int64_t M, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                int64_t ncols, bool accumulate);
void panel_gemm2(const PanelArgs& g);
void rank_update(const RankUpdateArgs& r);
}

}  // namespace fastrnn
