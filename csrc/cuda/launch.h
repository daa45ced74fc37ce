// The interface between the host time loop (rnn.cpp) and the device kernels (pointwise.cu).
//
// Plain C++ with no CUDA or torch types (cell_math.h is plain C++ too), so the host file compiles
// with only ATen's generic API plus c10/cuda (no cuBLAS headers: the GEMMs go through
// at::mm_out), and so a CPU implementation of the same interface (emulate.cpp) can drive the whole
// host loop in tests on machines without a GPU.
//
// Pointers are untyped; `dtype` says what the storage type T is.  T is the type of everything a
// GEMM reads or writes (pre-activations, h, outputs, gradients of pre-activations); A ("acc") is
// float for float/half/bfloat16 and double for double: the type of the cell state c, its
// gradient and the saved activations.  All math is done in A.  Leading dimensions (ld*) are in
// elements.  Row b of every matrix starts at ptr + b * ld.
#pragma once

#include <cstdint>

#include "../cell_math.h"

namespace fastrnn {
namespace cuda {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One step of one direction, forward: `rows` active rows x H hidden units.  `cell` is a CellId
// (cell_math.h).
struct FwdArgs {
  const void* gi; int64_t ldgi;   // T: W_ih x + biases (lstm/rnn: b_ih + b_hh; gru: b_ih + [b_hr, b_hz, 0])
  const void* gh; int64_t ldgh;   // T: W_hh h_{t-1} (no bias)
  const void* bhn;                // A: the split gate's recurrent bias [H] (gru: b_hn), or nullptr
  const void* hin; int64_t ldhin; // T: h_{t-1} (gru reads it; copied to hprev when hprev != nullptr)
  void* hout; int64_t ldhout;     // T: h_t, or r_t = o * tanh(c_t) with proj; may alias hin
  void* hprev; int64_t ldhprev;   // T: copy of h_{t-1} for backward (needs Hout == H), or nullptr
  void* c; int64_t ldc;           // A: lstm cell state, updated in place
  void* out; int64_t ldout;       // T: second copy of h_t (the output sequence), or nullptr
  void* save; int64_t ldsave;     // A: S*H values per row for backward, or nullptr
  int64_t rows, H;
};

// One step of one direction, backward.
struct BwdArgs {
  void* dh; int64_t lddh;         // T: dL/dh_t (or dL/dr_t with proj); gru: overwritten with dL/dh_t * z
  const void* dout; int64_t lddout;  // T: added to dh (grad of the output sequence), or nullptr
  void* dc; int64_t lddc;         // A: lstm dL/dc_t in, dL/dc_{t-1} out
  const void* save; int64_t ldsave;  // A
  const void* hprev; int64_t ldhp;   // T: gru h_{t-1}
  void* dgi; int64_t lddgi;       // T: dL/d(pre-activation), input side
  void* dgh; int64_t lddgh;       // T: gru dL/d(W_hh h + b_hh); other cells: not written
  int64_t rows, H;
};

// Each returns nullptr on success, else a static error text.  `stream` is a cudaStream_t (ignored
// by the CPU emulation).  A call with rows * H == 0 does nothing.
const char* launch_fwd(int cell, int dtype, const FwdArgs& a, void* stream);
const char* launch_bwd(int cell, int dtype, const BwdArgs& a, void* stream);
// dst[r, :cols] = src[r, :cols] for r < rows (elements of `elem_bytes` bytes).
const char* copy_rows(void* dst, int64_t lddst, const void* src, int64_t ldsrc, int64_t rows, int64_t cols,
                      int64_t elem_bytes, void* stream);

}  // namespace cuda
}  // namespace fastrnn
