// Cell definitions for the cpp backend: each cell type is data (DESIGN §4b).
//
// A cell is a policy struct with its gate count G, the number of values per hidden
// unit it saves for backward (S), and two pointwise functions over one row segment:
//   fwd: pre-activations (gi from the input GEMM, gh from the recurrent GEMM) and the
//        state in, new state / output / saved values out;
//   bwd: grad of h_t (and c_t) plus the saved values in, grads of the pre-activations
//        and of the previous state out.
// The time loop, the GEMMs, packing and directions (rnn.cpp) are written once against
// this interface.  This header has no torch dependency: pointwise.cpp includes it and is
// compiled once per ISA (baseline x86-64, AVX2+FMA and AVX-512, picked at run time).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

// Rows are split into gate blocks H apart inside one buffer, which GCC's dependence analysis
// cannot prove disjoint; no element is read after another iteration writes it, so say so.
#if defined(__clang__)
#define FASTRNN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FASTRNN_IVDEP _Pragma("GCC ivdep")
#else
#define FASTRNN_IVDEP
#endif

namespace fastrnn {

// ---------------------------------------------------------------------------------------
// Vectorisable math.  libm's exp/tanh are scalar calls that stop GCC from vectorising the
// pointwise loops (and -ffast-math is not an option: torch's numerics must hold), so exp
// is written out with Cody-Waite range reduction and a Taylor polynomial that is accurate
// to ~1-2 ulp in float and double; every operation maps to SIMD lanes.
template <typename T> struct ExpTraits;
template <> struct ExpTraits<float> {
  using I = int32_t;
  static constexpr float hi = 88.0f, lo = -87.0f;              // keeps 2^k a normal number
  static constexpr float magic = 12582912.0f;                   // 1.5 * 2^23: round to integer
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr int mant = 23, bias = 127;
};
template <> struct ExpTraits<double> {
  using I = int64_t;
  static constexpr double hi = 708.0, lo = -708.0;
  static constexpr double magic = 6755399441055744.0;           // 1.5 * 2^52
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr int mant = 52, bias = 1023;
};

template <typename To, typename From>
static inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

template <typename T>
static inline T fexp(T x) {
  using E = ExpTraits<T>;
  // Exponent bits are built in unsigned arithmetic: a NaN input skips the clamps below and
  // yields an arbitrary k (the result is NaN through p anyway), and signed overflow or a
  // shift of a negative value would be undefined behaviour (found by `make sanitize`).
  using U = std::make_unsigned_t<typename E::I>;
  x = x < E::lo ? E::lo : x;
  x = x > E::hi ? E::hi : x;
  const T kd = x * T(1.44269504088896340736) + E::magic;       // round(x / ln2) + magic
  const U k = bits_as<U>(kd) - bits_as<U>(E::magic);
  const T n = kd - E::magic;
  const T r = (x - n * E::ln2_hi) - n * E::ln2_lo;              // |r| <= ln2/2
  T p;
  if constexpr (std::is_same<T, float>::value) {
    p = T(1.0 / 5040);
    p = p * r + T(1.0 / 720);
    p = p * r + T(1.0 / 120);
    p = p * r + T(1.0 / 24);
    p = p * r + T(1.0 / 6);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  } else {
    p = T(1.0 / 6227020800.0);
    p = p * r + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  }
  const T scale = bits_as<T>(static_cast<U>((k + static_cast<U>(E::bias)) << E::mant));
  return p * scale;
}

template <typename T>
static inline T fsigmoid(T x) {
  return T(1) / (T(1) + fexp<T>(-x));
}

template <typename T>
static inline T ftanh(T x) {
  const T a = x < T(0) ? -x : x;
  const T e = fexp<T>(T(-2) * a);
  T t = (T(1) - e) / (T(1) + e);
  // Near 0, 1 - e cancels; the odd Taylor series is exact to rounding below 1/16.
  const T x2 = a * a;
  const T s = a * (T(1) + x2 * (T(-1.0 / 3) + x2 * (T(2.0 / 15) + x2 * (T(-17.0 / 315) +
                                                                       x2 * T(62.0 / 2835)))));
  t = a < T(0.0625) ? s : t;
  return x < T(0) ? -t : t;
}

// ---------------------------------------------------------------------------------------
// Arguments of one pointwise pass over the `bs` active rows of one step.  Row b of every
// matrix is at ptr + b * ld; gates are blocks of H columns in PyTorch's row order.
template <typename T>
struct FwdArgs {
  const T* gi; int64_t ldgi;     // W_ih x + biases (lstm/rnn: b_ih + b_hh; gru: b_ih + [b_hr, b_hz, 0])
  const T* gh; int64_t ldgh;     // W_hh h_{t-1} (no bias)
  const T* bhn;                  // gru: b_hn [H] or nullptr
  T* h; int64_t ldh;             // in: h_{t-1} (gru reads it); out: h_t, or r_t = o*tanh(c_t) with proj
  T* c; int64_t ldc;             // lstm cell state, updated in place
  T* out; int64_t ldout;         // second copy of h_t (the output sequence) when kOut
  T* save; int64_t ldsave;       // S*H values per row for backward when kSave
  int64_t H;
};

template <typename T>
struct BwdArgs {
  T* dh; int64_t lddh;           // in: dL/dh_t (or dL/dr_t with proj); gru: out dh_t * z
  const T* dout; int64_t lddout; // added to dh when kDout (grad of the output sequence)
  T* dc; int64_t lddc;           // lstm: dL/dc_t in, dL/dc_{t-1} out
  const T* save; int64_t ldsave;
  const T* hprev; int64_t ldhp;  // gru: h_{t-1}
  T* dgi; int64_t lddgi;         // dL/d(pre-activation), input side
  T* dgh; int64_t lddgh;         // gru: dL/d(W_hh h + b_hh); others: same as dgi (not written)
  int64_t H;
};

// ---------------------------------------------------------------------------------------
// The cells.  Saved layout per row (blocks of H): see S and the comments.
struct LSTM {
  static constexpr int kId = 0, G = 4, S = 6;    // saved: i f g o c_{t-1} tanh(c_t)
  static constexpr bool has_c = true;

  template <typename T, bool kSave, bool kOut>
  static inline void fwd(const FwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const int64_t H = a.H;
    const T* __restrict gi = a.gi + b * a.ldgi;
    const T* __restrict gh = a.gh + b * a.ldgh;
    T* __restrict h = a.h + b * a.ldh;
    T* __restrict c = a.c + b * a.ldc;
    T* __restrict out = kOut ? a.out + b * a.ldout : nullptr;
    T* __restrict s = kSave ? a.save + b * a.ldsave : nullptr;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T i = fsigmoid<T>(gi[j] + gh[j]);
      const T f = fsigmoid<T>(gi[H + j] + gh[H + j]);
      const T g = ftanh<T>(gi[2 * H + j] + gh[2 * H + j]);
      const T o = fsigmoid<T>(gi[3 * H + j] + gh[3 * H + j]);
      const T cp = c[j];
      const T cn = f * cp + i * g;
      const T tc = ftanh<T>(cn);
      const T hn = o * tc;
      c[j] = cn;
      h[j] = hn;
      if (kOut) out[j] = hn;
      if (kSave) {
        s[j] = i; s[H + j] = f; s[2 * H + j] = g; s[3 * H + j] = o;
        s[4 * H + j] = cp; s[5 * H + j] = tc;
      }
    }
  }

  template <typename T, bool kDout>
  static inline void bwd(const BwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const int64_t H = a.H;
    const T* __restrict dh = a.dh + b * a.lddh;
    const T* __restrict dout = kDout ? a.dout + b * a.lddout : nullptr;
    T* __restrict dc = a.dc + b * a.lddc;
    const T* __restrict s = a.save + b * a.ldsave;
    T* __restrict dg = a.dgi + b * a.lddgi;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T d = kDout ? dh[j] + dout[j] : dh[j];
      const T i = s[j], f = s[H + j], g = s[2 * H + j], o = s[3 * H + j];
      const T cp = s[4 * H + j], tc = s[5 * H + j];
      const T dcs = dc[j] + d * o * (T(1) - tc * tc);
      dg[j] = dcs * g * i * (T(1) - i);
      dg[H + j] = dcs * cp * f * (T(1) - f);
      dg[2 * H + j] = dcs * i * (T(1) - g * g);
      dg[3 * H + j] = d * tc * o * (T(1) - o);
      dc[j] = dcs * f;
    }
  }
};

struct GRU {
  static constexpr int kId = 1, G = 3, S = 4;    // saved: r z n (W_hn h + b_hn)
  static constexpr bool has_c = false;

  template <typename T, bool kSave, bool kOut>
  static inline void fwd(const FwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const int64_t H = a.H;
    const T* __restrict gi = a.gi + b * a.ldgi;
    const T* __restrict gh = a.gh + b * a.ldgh;
    const T* __restrict bhn = a.bhn;
    T* __restrict h = a.h + b * a.ldh;
    T* __restrict out = kOut ? a.out + b * a.ldout : nullptr;
    T* __restrict s = kSave ? a.save + b * a.ldsave : nullptr;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T r = fsigmoid<T>(gi[j] + gh[j]);
      const T z = fsigmoid<T>(gi[H + j] + gh[H + j]);
      const T ghn = bhn ? gh[2 * H + j] + bhn[j] : gh[2 * H + j];
      const T n = ftanh<T>(gi[2 * H + j] + r * ghn);
      const T hn = n + z * (h[j] - n);
      h[j] = hn;
      if (kOut) out[j] = hn;
      if (kSave) { s[j] = r; s[H + j] = z; s[2 * H + j] = n; s[3 * H + j] = ghn; }
    }
  }

  template <typename T, bool kDout>
  static inline void bwd(const BwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const int64_t H = a.H;
    T* __restrict dh = a.dh + b * a.lddh;
    const T* __restrict dout = kDout ? a.dout + b * a.lddout : nullptr;
    const T* __restrict s = a.save + b * a.ldsave;
    const T* __restrict hp = a.hprev + b * a.ldhp;
    T* __restrict dgi = a.dgi + b * a.lddgi;
    T* __restrict dgh = a.dgh + b * a.lddgh;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T d = kDout ? dh[j] + dout[j] : dh[j];
      const T r = s[j], z = s[H + j], n = s[2 * H + j], ghn = s[3 * H + j];
      const T dan = d * (T(1) - z) * (T(1) - n * n);
      const T dar = dan * ghn * r * (T(1) - r);
      const T daz = d * (hp[j] - n) * z * (T(1) - z);
      dgi[j] = dar; dgi[H + j] = daz; dgi[2 * H + j] = dan;
      dgh[j] = dar; dgh[H + j] = daz; dgh[2 * H + j] = dan * r;
      dh[j] = d * z;   // the direct path h_{t-1} -> h_t; the GEMM adds W_hh^T dgh
    }
  }
};

template <bool kRelu>
struct RNN {
  static constexpr int kId = kRelu ? 3 : 2, G = 1, S = 1;   // saved: h_t
  static constexpr bool has_c = false;

  template <typename T, bool kSave, bool kOut>
  static inline void fwd(const FwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const T* __restrict gi = a.gi + b * a.ldgi;
    const T* __restrict gh = a.gh + b * a.ldgh;
    T* __restrict h = a.h + b * a.ldh;
    T* __restrict out = kOut ? a.out + b * a.ldout : nullptr;
    T* __restrict s = kSave ? a.save + b * a.ldsave : nullptr;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T p = gi[j] + gh[j];
      const T hn = kRelu ? (p > T(0) ? p : T(0)) : ftanh<T>(p);
      h[j] = hn;
      if (kOut) out[j] = hn;
      if (kSave) s[j] = hn;
    }
  }

  template <typename T, bool kDout>
  static inline void bwd(const BwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
    const T* __restrict dh = a.dh + b * a.lddh;
    const T* __restrict dout = kDout ? a.dout + b * a.lddout : nullptr;
    const T* __restrict s = a.save + b * a.ldsave;
    T* __restrict dg = a.dgi + b * a.lddgi;
    FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j) {
      const T d = kDout ? dh[j] + dout[j] : dh[j];
      const T hn = s[j];
      dg[j] = kRelu ? (hn > T(0) ? d : T(0)) : d * (T(1) - hn * hn);
    }
  }
};

using RNN_TANH = RNN<false>;
using RNN_RELU = RNN<true>;

// ---------------------------------------------------------------------------------------
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
  FwdFn<float> fwd_f[4][2][2];   // [cell][kSave][kOut]
  FwdFn<double> fwd_d[4][2][2];
  BwdFn<float> bwd_f[4][2];      // [cell][kDout]
  BwdFn<double> bwd_d[4][2];
  PanelGemmFn panel_f;           // float32 recurrent product; nullptr where the ISA has no kernel
  PanelGemm2Fn panel2_f;         // the same with a second operand and a bias row
  RankUpdateFn rank_update_f;    // float32 weight-gradient update; AVX-512 only (AVX2's measured
                                 // slower than MKL's GEMMs after the loop: 75 vs ~85 GFLOP/s a core)
  const char* isa;
};

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
