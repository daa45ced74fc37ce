// The cuda backend's device code: one fused pointwise kernel per cell and direction of pass,
// instantiated from the cells of ../cell_math.h (through cells.cuh) for float, double, half and
// bfloat16.
//
// A step's kernel covers the rows x H active block with one thread per (row, hidden unit): it
// reads the G gate pre-activations of that unit from the input projection (gi) and the recurrent
// GEMM (gh), applies the cell, and writes h_t (twice: the state and the output sequence), c_t and
// what backward needs, all in one pass.  Consecutive threads take consecutive hidden units, so
// every gate block is read and written coalesced.  The GEMMs around it are torch's (cuBLAS),
// launched by the host loop on the same stream.
//
// No torch headers here: the host passes a cudaStream_t and untyped pointers (launch.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cells.cuh"

namespace fastrnn {
namespace cuda {

template <>
struct Conv<__half, float> {
  static __host__ __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __host__ __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16, float> {
  static __host__ __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __host__ __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

namespace {

constexpr int kThreads = 256;
// Grid-stride loops past this many blocks: any rows x H fits, and a launch never asks for more
// blocks than keep every SM busy several times over.
constexpr int64_t kMaxBlocks = 65536;

// Element e of the rows x H block is row e / H, unit e % H; 64-bit because rows * H * G can
// exceed 2^31 at large batch.
template <class Cell, typename T, typename A>
__global__ void __launch_bounds__(kThreads) fwd_kernel(FwdArgs args) {
  const Fwd<T, A> a(args);
  const int64_t n = args.rows * args.H;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t b = e / args.H;
    forward_unit<Cell>(a, b, e - b * args.H);
  }
}

template <class Cell, typename T, typename A>
__global__ void __launch_bounds__(kThreads) bwd_kernel(BwdArgs args) {
  const Bwd<T, A> a(args);
  const int64_t n = args.rows * args.H;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t b = e / args.H;
    backward_unit<Cell>(a, b, e - b * args.H);
  }
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Calls fn(T{}, A{}) for a runtime dtype.
template <typename Fn>
const char* with_types(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: return fn(float{}, float{});
    case kFloat64: return fn(double{}, double{});
    case kFloat16: return fn(__half{}, float{});
    case kBFloat16: return fn(__nv_bfloat16{}, float{});
    default: return "fastrnn._cuda_ext: unknown dtype id";
  }
}

}  // namespace

const char* launch_fwd(int cell, int dtype, const FwdArgs& a, void* stream) {
  if (!known_cell(cell)) return "fastrnn._cuda_ext: unknown cell id";
  const int64_t n = a.rows * a.H;
  if (n <= 0) return nullptr;
  return with_cell(cell, [&](auto c) {
    return with_types(dtype, [&](auto t, auto acc) {
      fwd_kernel<decltype(c), decltype(t), decltype(acc)>
          <<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
      return last_error();
    });
  });
}

const char* launch_bwd(int cell, int dtype, const BwdArgs& a, void* stream) {
  if (!known_cell(cell)) return "fastrnn._cuda_ext: unknown cell id";
  const int64_t n = a.rows * a.H;
  if (n <= 0) return nullptr;
  return with_cell(cell, [&](auto c) {
    return with_types(dtype, [&](auto t, auto acc) {
      bwd_kernel<decltype(c), decltype(t), decltype(acc)>
          <<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
      return last_error();
    });
  });
}

const char* copy_rows(void* dst, int64_t lddst, const void* src, int64_t ldsrc, int64_t rows, int64_t cols,
                      int64_t elem_bytes, void* stream) {
  if (rows <= 0 || cols <= 0) return nullptr;
  const cudaError_t err =
      cudaMemcpy2DAsync(dst, size_t(lddst * elem_bytes), src, size_t(ldsrc * elem_bytes), size_t(cols * elem_bytes),
                        size_t(rows), cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream));
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace fastrnn
