// The cpp backend's pointwise passes: the cells of cell_math.h over one row segment of one step.
//
//   fwd_row: pre-activations (gi from the input GEMM, gh from the recurrent GEMM) and the state
//            of row b, units [j0, j1), in; new state / output / saved values out;
//   bwd_row: grad of h_t (and c_t) plus the saved values in, grads of the pre-activations and of
//            the previous state out.
// The math is cell_math.h's; this header adds what is the CPU's own: the buffers' layout (RowFwd,
// RowBwd) and a sigmoid/tanh that GCC vectorises (each loop below compiles to SIMD lanes, one
// hidden unit a lane).  No torch dependency: pointwise.cpp includes it and is compiled once per ISA
// (baseline x86-64, AVX2+FMA and AVX-512, picked at run time).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cell_math.h"

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

// The cells' Act (cell_math.h) on the CPU.
struct VecAct {
  template <typename T> static inline T sigmoid(T x) { return fsigmoid<T>(x); }
  template <typename T> static inline T tanh(T x) { return ftanh<T>(x); }
};

// ---------------------------------------------------------------------------------------
// Arguments of one pointwise pass over the `bs` active rows of one step.  Row b of every
// matrix is at ptr + b * ld; gates are blocks of H columns in PyTorch's row order.
template <typename T>
struct FwdArgs {
  const T* gi; int64_t ldgi;     // W_ih x + biases (lstm/rnn: b_ih + b_hh; gru: b_ih + [b_hr, b_hz, 0])
  const T* gh; int64_t ldgh;     // W_hh h_{t-1} (no bias)
  const T* bhn;                  // the split gate's recurrent bias [H] (gru: b_hn) or nullptr
  T* h; int64_t ldh;             // in: h_{t-1} (gru reads it); out: h_t, or r_t = o*tanh(c_t) with proj
  T* c; int64_t ldc;             // lstm cell state, updated in place
  T* out; int64_t ldout;         // second copy of h_t (the output sequence) when kOut
  T* save; int64_t ldsave;       // S*H values per row for backward when kSave
  int64_t H;
};

template <typename T>
struct BwdArgs {
  T* dh; int64_t lddh;           // in: dL/dh_t (or dL/dr_t with proj); kDirectPrevH: out dh_t * z
  const T* dout; int64_t lddout; // added to dh when kDout (grad of the output sequence)
  T* dc; int64_t lddc;           // lstm: dL/dc_t in, dL/dc_{t-1} out
  const T* save; int64_t ldsave;
  const T* hprev; int64_t ldhp;  // h_{t-1} (read by kDirectPrevH cells: gru)
  T* dgi; int64_t lddgi;         // dL/d(pre-activation), input side
  T* dgh; int64_t lddgh;         // kSplitRecurrentBias (gru): dL/d(W_hh h + b_hh); others: not written
  int64_t H;
};

// ---------------------------------------------------------------------------------------
// The io of cell_math.h at unit j of one row (pointers already at the row).  Built inside the
// vectorised loops: after inlining they are plain loads and stores.
template <class Cell, typename T, bool kSave, bool kOut>
struct RowFwd {
  using A = T;
  const T* gi; const T* gh; const T* bhn;
  T* h; T* c; T* out; T* s;
  int64_t H, j;
  T pre(int k) const { return gi[k * H + j] + gh[k * H + j]; }
  T pre_input(int k) const { return gi[k * H + j]; }
  T pre_recurrent(int k) const { return bhn ? gh[k * H + j] + bhn[j] : gh[k * H + j]; }
  T h_prev() const { return h[j]; }
  T c_prev() const { return c[j]; }
  void set_c(T v) const { c[j] = v; }
  void set_h(T v) const {
    h[j] = v;
    if (kOut) out[j] = v;
  }
  void save(int k, T v) const {
    if (kSave) s[k * H + j] = v;
  }
};

template <class Cell, typename T, bool kDout>
struct RowBwd {
  using A = T;
  T* dh; const T* dout; T* dc; const T* s; const T* hp; T* dgi; T* dgh;
  int64_t H, j;
  T grad_h() const { return kDout ? dh[j] + dout[j] : dh[j]; }
  T grad_c() const { return dc[j]; }
  T saved(int k) const { return s[k * H + j]; }
  T h_prev() const { return hp[j]; }
  void set_grad(int k, T v) const {
    dgi[k * H + j] = v;
    if (Cell::kSplitRecurrentBias) dgh[k * H + j] = v;
  }
  void set_grad_split(int k, T input, T recurrent) const {
    dgi[k * H + j] = input;
    dgh[k * H + j] = recurrent;
  }
  void set_grad_c(T v) const { dc[j] = v; }
  void set_grad_h_direct(T v) const { dh[j] = v; }
};

// One row segment [j0, j1) of row b.  Pointers a cell does not use stay null (never offset).
template <class Cell, typename T, bool kSave, bool kOut>
inline void fwd_row(const FwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
  const int64_t H = a.H;
  const T* __restrict gi = a.gi + b * a.ldgi;
  const T* __restrict gh = a.gh + b * a.ldgh;
  const T* __restrict bhn = Cell::kSplitRecurrentBias ? a.bhn : nullptr;
  T* __restrict h = a.h + b * a.ldh;
  T* __restrict c = Cell::has_c ? a.c + b * a.ldc : nullptr;
  T* __restrict out = kOut ? a.out + b * a.ldout : nullptr;
  T* __restrict s = kSave ? a.save + b * a.ldsave : nullptr;
  FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j)
    Cell::template forward<VecAct>(RowFwd<Cell, T, kSave, kOut>{gi, gh, bhn, h, c, out, s, H, j});
}

template <class Cell, typename T, bool kDout>
inline void bwd_row(const BwdArgs<T>& a, int64_t b, int64_t j0, int64_t j1) {
  const int64_t H = a.H;
  T* __restrict dh = a.dh + b * a.lddh;
  const T* __restrict dout = kDout ? a.dout + b * a.lddout : nullptr;
  T* __restrict dc = Cell::has_c ? a.dc + b * a.lddc : nullptr;
  const T* __restrict s = a.save + b * a.ldsave;
  const T* __restrict hp = Cell::kDirectPrevH ? a.hprev + b * a.ldhp : nullptr;
  T* __restrict dgi = a.dgi + b * a.lddgi;
  T* __restrict dgh = Cell::kSplitRecurrentBias ? a.dgh + b * a.lddgh : nullptr;
  FASTRNN_IVDEP for (int64_t j = j0; j < j1; ++j)
    Cell::backward(RowBwd<Cell, T, kDout>{dh, dout, dc, s, hp, dgi, dgh, H, j});
}

}  // namespace fastrnn
