// The cuda backend's side of the cells of ../cell_math.h (DESIGN §4b): the math is written there
// once for both backends; this header adds what is CUDA's own, per element: thread (b, j) of a
// step computes hidden unit j of active row b (forward_unit, backward_unit), reading and writing
// through the FwdArgs/BwdArgs of launch.h.  The kernels (pointwise.cu) and the host loop (rnn.cpp)
// are written once against this.
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

#include "../cell_math.h"
#include "launch.h"

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

// The cells' Act (cell_math.h) on the device.
struct DeviceAct {
  template <typename A> static FASTRNN_HD A sigmoid(A x) { return fsigmoid(x); }
  template <typename A> static FASTRNN_HD A tanh(A x) { return ftanh(x); }
};

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
// The io of cell_math.h at thread (b, j).
template <class Cell, typename T, typename A_>
struct UnitFwd {
  using A = A_;
  const Fwd<T, A>& a;
  int64_t b, j;
  A hp;   // h_{t-1}, read before h_t is written (hout may alias hin)
  FASTRNN_HD A pre(int k) const { return a.gate(k, b, j); }
  FASTRNN_HD A pre_input(int k) const { return Conv<T, A>::load(a.gi[b * a.ldgi + k * a.H + j]); }
  // The split gate's bias sits inside r * (...): it is not folded into gi like the other hidden biases.
  FASTRNN_HD A pre_recurrent(int k) const {
    return Conv<T, A>::load(a.gh[b * a.ldgh + k * a.H + j]) + (a.bhn ? a.bhn[j] : A(0));
  }
  FASTRNN_HD A h_prev() const { return hp; }
  FASTRNN_HD A c_prev() const { return a.c[b * a.ldc + j]; }
  FASTRNN_HD void set_c(A v) const { a.c[b * a.ldc + j] = v; }
  FASTRNN_HD void set_h(A v) const { a.put_h(b, j, v); }
  FASTRNN_HD void save(int k, A v) const {
    if (a.save) a.save[b * a.ldsave + k * a.H + j] = v;
  }
};

template <class Cell, typename T, typename A_>
struct UnitBwd {
  using A = A_;
  const Bwd<T, A>& a;
  int64_t b, j;
  FASTRNN_HD A grad_h() const { return a.grad_h(b, j); }
  FASTRNN_HD A grad_c() const { return a.dc[b * a.lddc + j]; }
  FASTRNN_HD A saved(int k) const { return a.save[b * a.ldsave + k * a.H + j]; }
  FASTRNN_HD A h_prev() const { return Conv<T, A>::load(a.hprev[b * a.ldhp + j]); }
  FASTRNN_HD void set_grad(int k, A v) const {
    a.dgi[b * a.lddgi + k * a.H + j] = Conv<T, A>::store(v);
    if (Cell::kSplitRecurrentBias) a.dgh[b * a.lddgh + k * a.H + j] = Conv<T, A>::store(v);
  }
  FASTRNN_HD void set_grad_split(int k, A input, A recurrent) const {
    a.dgi[b * a.lddgi + k * a.H + j] = Conv<T, A>::store(input);
    a.dgh[b * a.lddgh + k * a.H + j] = Conv<T, A>::store(recurrent);
  }
  FASTRNN_HD void set_grad_c(A v) const { a.dc[b * a.lddc + j] = v; }
  FASTRNN_HD void set_grad_h_direct(A v) const { a.dh[b * a.lddh + j] = Conv<T, A>::store(v); }
};

// Hidden unit j of row b, one step.  h_{t-1} is copied for backward here (when asked) for every
// cell, and read by the cells whose h_t depends on it directly.
template <class Cell, typename T, typename A>
FASTRNN_HD void forward_unit(const Fwd<T, A>& a, int64_t b, int64_t j) {
  A hp = A(0);
  if (Cell::kDirectPrevH)
    hp = Conv<T, A>::load(a.take_hprev(b, j));
  else if (a.hprev)
    a.take_hprev(b, j);
  Cell::template forward<DeviceAct>(UnitFwd<Cell, T, A>{a, b, j, hp});
}

template <class Cell, typename T, typename A>
FASTRNN_HD void backward_unit(const Bwd<T, A>& a, int64_t b, int64_t j) {
  Cell::backward(UnitBwd<Cell, T, A>{a, b, j});
}

// The cell ids launch_fwd/launch_bwd accept (the host checks cell names before any launch).
inline bool known_cell(int cell) { return cell >= 0 && cell < kNumCells; }

}  // namespace cuda
}  // namespace fastrnn
