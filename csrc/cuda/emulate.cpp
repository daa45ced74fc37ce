// A CPU implementation of launch.h, for tests on machines without a GPU.
//
// Built together with rnn.cpp under FASTRNN_CUDA_EMULATE (tests/test_cuda_build.py does this
// with torch.utils.cpp_extension), it runs the cuda backend's host time loop, its GEMM calls and
// the very cell definitions of cell_math.h (through cells.cuh) on CPU tensors, one element at a
// time in the kernels' (row, unit) order.  Only the launch mechanics (grid, stream, memcpy) differ from pointwise.cu.
// It is never part of a build that ships.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#include "cells.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <typename Fn>
const char* with_types(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: return fn(float{}, float{});
    case kFloat64: return fn(double{}, double{});
    case kFloat16: return fn(c10::Half{}, float{});
    case kBFloat16: return fn(c10::BFloat16{}, float{});
    default: return "fastrnn._cuda_ext: unknown dtype id";
  }
}

}  // namespace

const char* launch_fwd(int cell, int dtype, const FwdArgs& args, void*) {
  if (!known_cell(cell)) return "fastrnn._cuda_ext: unknown cell id";
  return with_cell(cell, [&](auto c) {
    return with_types(dtype, [&](auto t, auto acc) -> const char* {
      using Cell = decltype(c);
      const Fwd<decltype(t), decltype(acc)> a(args);
      for (int64_t b = 0; b < args.rows; ++b)
        for (int64_t j = 0; j < args.H; ++j) forward_unit<Cell>(a, b, j);
      return nullptr;
    });
  });
}

const char* launch_bwd(int cell, int dtype, const BwdArgs& args, void*) {
  if (!known_cell(cell)) return "fastrnn._cuda_ext: unknown cell id";
  return with_cell(cell, [&](auto c) {
    return with_types(dtype, [&](auto t, auto acc) -> const char* {
      using Cell = decltype(c);
      const Bwd<decltype(t), decltype(acc)> a(args);
      for (int64_t b = 0; b < args.rows; ++b)
        for (int64_t j = 0; j < args.H; ++j) backward_unit<Cell>(a, b, j);
      return nullptr;
    });
  });
}

const char* copy_rows(void* dst, int64_t lddst, const void* src, int64_t ldsrc, int64_t rows, int64_t cols,
                      int64_t elem_bytes, void*) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * lddst * elem_bytes,
                static_cast<const char*>(src) + r * ldsrc * elem_bytes, size_t(cols * elem_bytes));
  return nullptr;
}

}  // namespace cuda
}  // namespace fastrnn
