// Cell definitions for the cuda backend: each cell type is data (DESIGN §4b).
//
// The same math as csrc/cells.h (the cpp backend) and fastrnn/backends/reference.py, written
// per element: thread (b, j) of a step computes hidden unit j of active row b.  A cell is a
// struct with its gate count G, the values per hidden unit it saves for backward (S), and
//   fwd: pre-activations (gi from the input GEMM, gh from the recurrent GEMM) and the state in,
//        new state / output / saved values out;
//   bwd: grad of h_t (and c_t) plus the saved values in, grads of the pre-activations and of
//        the previous state out.
// The kernels (pointwise.cu) and the host loop (rnn.cpp) are written once against this.
//
// Precision: values are loaded from the storage type T into A (float, or double for double),
// all math is in A, and results are rounded to T once when stored.  The cell state c, dc and
// the saved activations stay in A across steps, so half-precision runs keep an fp32 cell state
// and differentiate through unrounded activations (torch's autocast policy for RNNs keeps
// fp32 accumulation; cuDNN's half LSTM rounds c_t to half every step, we do not).
//
// This header compiles as CUDA (pointwise.cu) and as plain C++ (emulate.cpp, the CPU
// stand-in used by tests on machines without a GPU).
#pragma once

#include <math.h>
#include <stdint.h>

#include "launch.h"

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline
#endif

namespace fastrnn {
namespace cuda {

// Loads and stores between the storage type T and the math type A.  pointwise.cu specialises
// these for __half and __nv_bfloat16 with the round-to-nearest intrinsics.
template <typename T, typename A>
struct Conv {
  static FASTRNN_HD A load(T v) { return static_cast<A>(v); }
  static FASTRNN_HD T store(A v) { return static_cast<T>(v); }
};

// torch's own formulas: sigmoid(x) = 1 / (1 + exp(-x)) and tanh in the math type (no fast-math:
// expf/tanhf are the accurate CUDA versions, <= 2 ulp).
FASTRNN_HD float fexp(float x) { return expf(x); }
FASTRNN_HD double fexp(double x) { return exp(x); }
FASTRNN_HD float ftanh(float x) { return tanhf(x); }
FASTRNN_HD double ftanh(double x) { return tanh(x); }
template <typename A> FASTRNN_HD A fsigmoid(A x) { return A(1) / (A(1) + fexp(-x)); }

// The FwdArgs/BwdArgs of launch.h with typed pointers.
template <typename T, typename A>
struct Fwd {
  const T* gi; int64_t ldgi;
  const T* gh; int64_t ldgh;
  const A* bhn;
  const T* hin; int64_t ldhin;
  T* hout; int64_t ldhout;        // may alias hin: each element is read before it is written
  T* hprev; int64_t ldhprev;
  A* c; int64_t ldc;
  T* out; int64_t ldout;
  A* save; int64_t ldsave;
  int64_t H;
  FASTRNN_HD explicit Fwd(const FwdArgs& a)
      : gi(static_cast<const T*>(a.gi)), ldgi(a.ldgi), gh(static_cast<const T*>(a.gh)), ldgh(a.ldgh),
        bhn(static_cast<const A*>(a.bhn)), hin(static_cast<const T*>(a.hin)), ldhin(a.ldhin),
        hout(static_cast<T*>(a.hout)), ldhout(a.ldhout), hprev(static_cast<T*>(a.hprev)), ldhprev(a.ldhprev),
        c(static_cast<A*>(a.c)), ldc(a.ldc), out(static_cast<T*>(a.out)), ldout(a.ldout),
        save(static_cast<A*>(a.save)), ldsave(a.ldsave), H(a.H) {}
  FASTRNN_HD A gate(int k, int64_t b, int64_t j) const {   // gi + gh of gate block k
    return Conv<T, A>::load(gi[b * ldgi + k * H + j]) + Conv<T, A>::load(gh[b * ldgh + k * H + j]);
  }
  // h_{t-1}, also copied for backward when asked; read before hout (which may alias) is written.
  FASTRNN_HD T take_hprev(int64_t b, int64_t j) const {
    const T hp = hin[b * ldhin + j];
    if (hprev) hprev[b * ldhprev + j] = hp;
    return hp;
  }
  FASTRNN_HD void put_h(int64_t b, int64_t j, A h) const {
    const T v = Conv<T, A>::store(h);
    hout[b * ldhout + j] = v;
    if (out) out[b * ldout + j] = v;
  }
};

template <typename T, typename A>
struct Bwd {
  T* dh; int64_t lddh;
  const T* dout; int64_t lddout;
  A* dc; int64_t lddc;
  const A* save; int64_t ldsave;
  const T* hprev; int64_t ldhp;
  T* dgi; int64_t lddgi;
  T* dgh; int64_t lddgh;
  int64_t H;
  FASTRNN_HD explicit Bwd(const BwdArgs& a)
      : dh(static_cast<T*>(a.dh)), lddh(a.lddh), dout(static_cast<const T*>(a.dout)), lddout(a.lddout),
        dc(static_cast<A*>(a.dc)), lddc(a.lddc), save(static_cast<const A*>(a.save)), ldsave(a.ldsave),
        hprev(static_cast<const T*>(a.hprev)), ldhp(a.ldhp), dgi(static_cast<T*>(a.dgi)), lddgi(a.lddgi),
        dgh(static_cast<T*>(a.dgh)), lddgh(a.lddgh), H(a.H) {}
  // dL/dh_t: the carried gradient plus the output sequence's, summed in A.
  FASTRNN_HD A grad_h(int64_t b, int64_t j) const {
    const A d = Conv<T, A>::load(dh[b * lddh + j]);
    return dout ? d + Conv<T, A>::load(dout[b * lddout + j]) : d;
  }
};

// ---------------------------------------------------------------------------------------
// The cells.  Saved layout per row (blocks of H): see S and the comments.
struct LSTM {
  static constexpr int kId = kLSTM, G = 4, S = 6;    // saved: i f g o c_{t-1} tanh(c_t)

  template <typename T, typename A>
  static FASTRNN_HD void fwd(const Fwd<T, A>& a, int64_t b, int64_t j) {
    const int64_t H = a.H;
    const A i = fsigmoid(a.gate(0, b, j));
    const A f = fsigmoid(a.gate(1, b, j));
    const A g = ftanh(a.gate(2, b, j));
    const A o = fsigmoid(a.gate(3, b, j));
    if (a.hprev) a.take_hprev(b, j);
    A* c = a.c + b * a.ldc;
    const A cp = c[j];
    const A cn = f * cp + i * g;
    const A tc = ftanh(cn);
    c[j] = cn;
    a.put_h(b, j, o * tc);
    if (a.save) {
      A* s = a.save + b * a.ldsave;
      s[j] = i; s[H + j] = f; s[2 * H + j] = g; s[3 * H + j] = o;
      s[4 * H + j] = cp; s[5 * H + j] = tc;
    }
  }

  template <typename T, typename A>
  static FASTRNN_HD void bwd(const Bwd<T, A>& a, int64_t b, int64_t j) {
    const int64_t H = a.H;
    const A d = a.grad_h(b, j);
    const A* s = a.save + b * a.ldsave;
    const A i = s[j], f = s[H + j], g = s[2 * H + j], o = s[3 * H + j];
    const A cp = s[4 * H + j], tc = s[5 * H + j];
    A* dc = a.dc + b * a.lddc;
    const A dcs = dc[j] + d * o * (A(1) - tc * tc);
    T* dg = a.dgi + b * a.lddgi;
    dg[j] = Conv<T, A>::store(dcs * g * i * (A(1) - i));
    dg[H + j] = Conv<T, A>::store(dcs * cp * f * (A(1) - f));
    dg[2 * H + j] = Conv<T, A>::store(dcs * i * (A(1) - g * g));
    dg[3 * H + j] = Conv<T, A>::store(d * tc * o * (A(1) - o));
    dc[j] = dcs * f;
  }
};

struct GRU {
  static constexpr int kId = kGRU, G = 3, S = 4;     // saved: r z n (W_hn h + b_hn)

  template <typename T, typename A>
  static FASTRNN_HD void fwd(const Fwd<T, A>& a, int64_t b, int64_t j) {
    const int64_t H = a.H;
    const A r = fsigmoid(a.gate(0, b, j));
    const A z = fsigmoid(a.gate(1, b, j));
    // b_hn sits inside r * (...): it is not folded into gi like the other hidden biases.
    const A ghn = Conv<T, A>::load(a.gh[b * a.ldgh + 2 * H + j]) + (a.bhn ? a.bhn[j] : A(0));
    const A n = ftanh(Conv<T, A>::load(a.gi[b * a.ldgi + 2 * H + j]) + r * ghn);
    const A hp = Conv<T, A>::load(a.take_hprev(b, j));
    a.put_h(b, j, n + z * (hp - n));              // (1 - z) * n + z * h
    if (a.save) {
      A* s = a.save + b * a.ldsave;
      s[j] = r; s[H + j] = z; s[2 * H + j] = n; s[3 * H + j] = ghn;
    }
  }

  template <typename T, typename A>
  static FASTRNN_HD void bwd(const Bwd<T, A>& a, int64_t b, int64_t j) {
    const int64_t H = a.H;
    const A d = a.grad_h(b, j);
    const A* s = a.save + b * a.ldsave;
    const A r = s[j], z = s[H + j], n = s[2 * H + j], ghn = s[3 * H + j];
    const A hp = Conv<T, A>::load(a.hprev[b * a.ldhp + j]);
    const A dan = d * (A(1) - z) * (A(1) - n * n);
    const A dar = dan * ghn * r * (A(1) - r);
    const A daz = d * (hp - n) * z * (A(1) - z);
    T* dgi = a.dgi + b * a.lddgi;
    T* dgh = a.dgh + b * a.lddgh;
    dgi[j] = Conv<T, A>::store(dar);
    dgi[H + j] = Conv<T, A>::store(daz);
    dgi[2 * H + j] = Conv<T, A>::store(dan);
    dgh[j] = Conv<T, A>::store(dar);
    dgh[H + j] = Conv<T, A>::store(daz);
    dgh[2 * H + j] = Conv<T, A>::store(dan * r);
    a.dh[b * a.lddh + j] = Conv<T, A>::store(d * z);  // the direct path h_{t-1} -> h_t; the GEMM adds W_hh^T dgh
  }
};

template <bool kRelu>
struct RNN {
  static constexpr int kId = kRelu ? kRNNRelu : kRNNTanh, G = 1, S = 1;   // saved: h_t

  template <typename T, typename A>
  static FASTRNN_HD void fwd(const Fwd<T, A>& a, int64_t b, int64_t j) {
    const A p = a.gate(0, b, j);
    const A h = kRelu ? (p > A(0) ? p : A(0)) : ftanh(p);
    if (a.hprev) a.take_hprev(b, j);
    a.put_h(b, j, h);
    if (a.save) a.save[b * a.ldsave + j] = h;
  }

  template <typename T, typename A>
  static FASTRNN_HD void bwd(const Bwd<T, A>& a, int64_t b, int64_t j) {
    const A d = a.grad_h(b, j);
    const A h = a.save[b * a.ldsave + j];
    a.dgi[b * a.lddgi + j] = Conv<T, A>::store(kRelu ? (h > A(0) ? d : A(0)) : d * (A(1) - h * h));
  }
};

using RNN_TANH = RNN<false>;
using RNN_RELU = RNN<true>;

// Calls fn(Cell{}) for a runtime cell id (host side: the launchers pick their kernel with it).
template <typename Fn>
inline const char* with_cell(int cell, Fn&& fn) {
  switch (cell) {
    case kLSTM: return fn(LSTM{});
    case kGRU: return fn(GRU{});
    case kRNNTanh: return fn(RNN_TANH{});
    case kRNNRelu: return fn(RNN_RELU{});
    default: return "fastrnn._cuda_ext: unknown cell id";
  }
}

}  // namespace cuda
}  // namespace fastrnn
