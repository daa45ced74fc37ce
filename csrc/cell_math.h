// Every cell's pointwise math, written once for the cpp kernels (cells.h) and the cuda kernels
// (cuda/cells.cuh): DESIGN §4b.  Plain C++ with no torch or CUDA types; under nvcc the math is
// __host__ __device__.
//
// A cell is a struct with its traits and two functions over ONE hidden unit of one row:
//   forward<Act>(io): gate pre-activations (and h_{t-1}, c_{t-1} where the cell uses them) in,
//                     h_t (and c_t) and the values backward needs out;
//   backward(io):     dL/dh_t (dL/dc_t) and the saved values in, dL/d(pre-activation) of every
//                     gate (and dL/dc_{t-1}, the direct part of dL/dh_{t-1}) out.
// `io` is a backend's view of its buffers at that unit (row pointers on the CPU; a (row, unit)
// thread with storage-type conversions in CUDA) and `Act` its sigmoid and tanh (the vectorisable
// ones of cells.h on the CPU, libdevice's in CUDA).  The loops, GEMMs, packing and directions of
// both backends read only the traits, so a new cell is a struct here and one line in with_cell.
//
// io, forward:   pre(k)            gi_k + gh_k, both halves of gate k (biases already in gi)
//                pre_input(k)      gi_k alone, for the split gate (see kSplitGate)
//                pre_recurrent(k)  W_h h + b_h of the split gate (its bias kept out of gi)
//                h_prev(), c_prev(), set_h(v), set_c(v), save(k, v) (k < S; a no-op unless training)
// io, backward:  grad_h() (dL/dh_t, output-sequence grad included), grad_c(), saved(k), h_prev(),
//                set_grad(k, v) (both halves of gate k), set_grad_split(k, input, recurrent),
//                set_grad_c(v), set_grad_h_direct(v) (only with kDirectPrevH)
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline
#endif

namespace fastrnn {

// The ids the Python side and the kernel tables use (cell names map to them in layer_checks.h).
enum CellId : int { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNRelu = 3 };
constexpr int kNumCells = 4;

// Traits every cell struct defines as static members:
//   kId, G (gate blocks of H rows in W_ih / W_hh, PyTorch's row order), S (values per hidden unit
//   saved for backward), has_c (an LSTM-style cell state),
//   kSplitGate: the gate whose recurrent half enters the cell apart from its input half (GRU's n:
//     tanh(gi_n + r * (W_hn h + b_hn))), or -1.  Its recurrent bias is not folded into the input
//     projection, and its dL/d(pre-activation) differs between the two halves, so the loops keep
//     a separate recurrent-side gradient (and db_hh) for such a cell: kSplitRecurrentBias.
//   kDirectPrevH: h_t depends on h_{t-1} outside the gates (GRU: z * h).  The forward cell pass
//     reads h_{t-1}; the backward pass leaves that part of dL/dh_{t-1} in dh, and the recurrent
//     GEMM adds W_hh^T dG to it instead of overwriting it.
// The same facts as a value, for code that picks the cell at run time (the cuda host loop, the
// checks).
struct CellTraits {
  int id, G, S;
  bool has_c;
  int split_gate;
  bool direct_prev_h;
};

template <class Cell>
constexpr CellTraits traits_of() {
  return CellTraits{Cell::kId, Cell::G, Cell::S, Cell::has_c, Cell::kSplitGate, Cell::kDirectPrevH};
}

// ---------------------------------------------------------------------------------------
struct LSTM {
  static constexpr int kId = kLSTM, G = 4, S = 6;    // saved: i f g o c_{t-1} tanh(c_t)
  static constexpr bool has_c = true, kDirectPrevH = false;
  static constexpr int kSplitGate = -1;
  static constexpr bool kSplitRecurrentBias = kSplitGate >= 0;

  template <class Act, class IO>
  static FASTRNN_HD void forward(const IO& io) {
    using A = typename IO::A;
    const A i = Act::sigmoid(io.pre(0));
    const A f = Act::sigmoid(io.pre(1));
    const A g = Act::tanh(io.pre(2));
    const A o = Act::sigmoid(io.pre(3));
    const A cp = io.c_prev();
    const A cn = f * cp + i * g;
    const A tc = Act::tanh(cn);
    io.set_c(cn);
    io.set_h(o * tc);
    io.save(0, i); io.save(1, f); io.save(2, g); io.save(3, o);
    io.save(4, cp); io.save(5, tc);
  }

  template <class IO>
  static FASTRNN_HD void backward(const IO& io) {
    using A = typename IO::A;
    const A d = io.grad_h();
    const A i = io.saved(0), f = io.saved(1), g = io.saved(2), o = io.saved(3);
    const A cp = io.saved(4), tc = io.saved(5);
    const A dcs = io.grad_c() + d * o * (A(1) - tc * tc);
    io.set_grad(0, dcs * g * i * (A(1) - i));
    io.set_grad(1, dcs * cp * f * (A(1) - f));
    io.set_grad(2, dcs * i * (A(1) - g * g));
    io.set_grad(3, d * tc * o * (A(1) - o));
    io.set_grad_c(dcs * f);
  }
};

struct GRU {
  static constexpr int kId = kGRU, G = 3, S = 4;     // saved: r z n (W_hn h + b_hn)
  static constexpr bool has_c = false, kDirectPrevH = true;
  static constexpr int kSplitGate = 2;
  static constexpr bool kSplitRecurrentBias = kSplitGate >= 0;

  template <class Act, class IO>
  static FASTRNN_HD void forward(const IO& io) {
    using A = typename IO::A;
    const A r = Act::sigmoid(io.pre(0));
    const A z = Act::sigmoid(io.pre(1));
    const A ghn = io.pre_recurrent(2);
    const A n = Act::tanh(io.pre_input(2) + r * ghn);
    const A hp = io.h_prev();
    io.set_h(n + z * (hp - n));                      // (1 - z) * n + z * h
    io.save(0, r); io.save(1, z); io.save(2, n); io.save(3, ghn);
  }

  template <class IO>
  static FASTRNN_HD void backward(const IO& io) {
    using A = typename IO::A;
    const A d = io.grad_h();
    const A r = io.saved(0), z = io.saved(1), n = io.saved(2), ghn = io.saved(3);
    const A hp = io.h_prev();
    const A dan = d * (A(1) - z) * (A(1) - n * n);
    const A dar = dan * ghn * r * (A(1) - r);
    const A daz = d * (hp - n) * z * (A(1) - z);
    io.set_grad(0, dar);
    io.set_grad(1, daz);
    io.set_grad_split(2, dan, dan * r);
    io.set_grad_h_direct(d * z);   // the direct path h_{t-1} -> h_t; the GEMM adds W_hh^T dgh
  }
};

template <bool kRelu>
struct RNN {
  static constexpr int kId = kRelu ? kRNNRelu : kRNNTanh, G = 1, S = 1;   // saved: h_t
  static constexpr bool has_c = false, kDirectPrevH = false;
  static constexpr int kSplitGate = -1;
  static constexpr bool kSplitRecurrentBias = kSplitGate >= 0;

  template <class Act, class IO>
  static FASTRNN_HD void forward(const IO& io) {
    using A = typename IO::A;
    const A p = io.pre(0);
    const A h = kRelu ? (p > A(0) ? p : A(0)) : Act::tanh(p);
    io.set_h(h);
    io.save(0, h);
  }

  template <class IO>
  static FASTRNN_HD void backward(const IO& io) {
    using A = typename IO::A;
    const A d = io.grad_h();
    const A h = io.saved(0);
    io.set_grad(0, kRelu ? (h > A(0) ? d : A(0)) : d * (A(1) - h * h));
  }
};

using RNN_TANH = RNN<false>;
using RNN_RELU = RNN<true>;

// Calls fn(Cell{}) for a cell id the caller has validated (layer_checks.h: cell_id); every cell
// type is listed here and nowhere else.
template <typename Fn>
inline auto with_cell(int id, Fn&& fn) {
  switch (id) {
    case kLSTM: return fn(LSTM{});
    case kGRU: return fn(GRU{});
    case kRNNTanh: return fn(RNN_TANH{});
    default: return fn(RNN_RELU{});
  }
}

inline CellTraits cell_traits(int id) {
  return with_cell(id, [](auto c) { return traits_of<decltype(c)>(); });
}

}  // namespace fastrnn
