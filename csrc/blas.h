// The BLAS shim of the cpp backend: row-major GEMMs on raw pointers for the per-step products.
//
// GEMMs go through torch's own BLAS (MKL in the x86 wheels): it is the fastest GEMM on
// the machine, it follows torch.set_num_threads, and we do not ship or build a BLAS.
// Large, once-per-layer products use at::mm/addmm_out on tensors.  The per-step products
// are small (often microseconds), so there the ~2-5 us of dispatcher and TensorImpl cost
// of at::mm_out would be a large fraction of the step: we call the same BLAS routine
// (sgemm_/dgemm_, which libtorch_cpu exports) directly on raw pointers, and fall back to
// at::mm_out when the symbol is not there (or FASTRNN_GEMM=aten, overrides.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

namespace fastrnn {

// Row-major GEMM on raw pointers: C[m,n] = alpha * op(A) op(B) + beta * C.
using fgemm_t = void (*)(const char*, const char*, const void*, const void*, const void*,
                         const float*, const float*, const void*, const float*, const void*,
                         const float*, float*, const void*);
using dgemm_t = void (*)(const char*, const char*, const void*, const void*, const void*,
                         const double*, const double*, const void*, const double*, const void*,
                         const double*, double*, const void*);

using spack_size_t = size_t (*)(const char*, const void*, const void*, const void*);
using spack_t = void (*)(const char*, const char*, const void*, const void*, const void*, const float*,
                         const float*, const void*, float*);
using scompute_t = void (*)(const char*, const char*, const void*, const void*, const void*, const float*,
                            const void*, const float*, const void*, const float*, float*, const void*);

// MKL's thread-local thread count (mkl_set_num_threads_local; its int is passed by address in
// libtorch_cpu's build): returns the previous local value, 0 meaning "follow the global one".
using set_local_threads_t = int (*)(const int*);

struct Blas {
  fgemm_t s = nullptr;
  dgemm_t d = nullptr;
  set_local_threads_t set_local_threads = nullptr;
  // MKL's packed GEMM (float only): W_hh is packed once per layer call instead of by every
  // per-step sgemm; at small batch that repacking is as much memory traffic as the product.
  spack_size_t spack_size = nullptr;
  spack_t spack = nullptr;
  scompute_t scompute = nullptr;
};

// The routines found in libtorch_cpu (blas.cpp), looked up once; null where absent or overridden.
const Blas& blas();

// A product of at most this many multiply-adds runs on the calling thread alone. MKL threads even
// a 1 x 64 x 192 product (its sgemv), and the OpenMP fork and barrier then cost more than the
// product: measured on the 2-core Sapphire Rapids class Xeon, a one-step layer call (T=1, B=1,
// two products and the cell) serial / threaded: GRU H64 (12288 per product) 6.6 / 9.7 us, LSTM
// H64 (16384) 8.4 / 10.9, RNN H128 (16384) 6.5 / 9.8, float64 T=10 GRU H64 25 / 44; a tie at
// 49152-65536 (GRU H128 11.6 / 12.0, LSTM H128 15.2 / 14.3); and from 196608 (GRU H256) threads
// win 3x: the weights then stream from both cores' L2 caches.
constexpr int64_t kSerialGemmMacs = 32768;

// MKL on the calling thread alone while it lives, where `serial` (MKL's own setting restored
// after: a library call leaves the process as it found it).  The backward of a small layer call
// holds one around its ATen products (csrc/layer_backward.cpp).
class SerialBlas {
 public:
  explicit SerialBlas(bool serial) {
    const Blas& bl = blas();
    if (serial && bl.set_local_threads != nullptr) {
      const int one = 1;
      before_ = bl.set_local_threads(&one);
      active_ = true;
    }
  }
  ~SerialBlas() {
    if (active_) blas().set_local_threads(&before_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int before_ = 0;
  bool active_ = false;
};

// Runs `f` with MKL on this thread only where the product is that small (restoring MKL's own
// setting after: a library call leaves the process as it found it).
template <class F>
inline void maybe_serial(int64_t macs, F&& f) {
  const Blas& bl = blas();
  if (macs > kSerialGemmMacs || bl.set_local_threads == nullptr) {
    f();
    return;
  }
  const int one = 1;
  const int before = bl.set_local_threads(&one);
  f();
  bl.set_local_threads(&before);
}

template <typename T>
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const Blas& bl = blas();
  const int64_t lim = (int64_t(1) << 31) - 1;
  const bool small = m < lim && n < lim && k < lim && lda < lim && ldb < lim && ldc < lim;
  if (small && (std::is_same<T, float>::value ? bl.s != nullptr : bl.d != nullptr)) {
    // Column-major BLAS sees row-major C = op(A) op(B) as C^T = op(B)^T op(A)^T.  Integers
    // are passed as int64 holding values < 2^31: read correctly by both LP64 (the low 4
    // bytes, little-endian) and ILP64 builds.
    const int64_t M = n, N = m, K = k, LA = ldb, LB = lda, LC = ldc;
    const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
    const T one = T(1);
    if (k == 0) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
      return;
    }
    maybe_serial(m * n * k, [&] {
      if constexpr (std::is_same<T, float>::value)
        bl.s(&tA, &tB, &M, &N, &K, &one, B, &LA, A, &LB, &beta, C, &LC);
      else
        bl.d(&tA, &tB, &M, &N, &K, &one, B, &LA, A, &LB, &beta, C, &LC);
    });
    return;
  }
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = ta ? at::from_blob(const_cast<T*>(A), {k, m}, {lda, 1}, opt).t()
                : at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opt);
  at::Tensor b = tb ? at::from_blob(const_cast<T*>(B), {n, k}, {ldb, 1}, opt).t()
                : at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opt);
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  if (beta == T(0)) {
    at::mm_out(c, a, b);  // `c` is a strided view: ATen writes through it (copying if needed)
  } else {
    at::addmm_out(c, c, a, b, beta, 1);
  }
}

// The recurrent weight as the right operand of every step's row-major product
// C[m, n] = A[m, k] op(W) with m <= m_max; packed once where MKL offers it.
template <typename T>
struct StepGemm {
  bool tb = false;
  int64_t n = 0, k = 0, ldb = 0;
  const T* B = nullptr;
  at::Tensor packed;  // raw bytes

  StepGemm(bool tb_, int64_t n_, int64_t k_, const T* B_, int64_t ldb_, int64_t m_max)
      : tb(tb_), n(n_), k(k_), ldb(ldb_), B(B_) {
    const Blas& bl = blas();
    const int64_t lim = (int64_t(1) << 31) - 1;
    if (!std::is_same<T, float>::value || !bl.spack || n == 0 || k == 0 || m_max == 0 || n >= lim || k >= lim ||
        m_max >= lim || ldb >= lim)
      return;
    const int64_t M = n, N = m_max, K = k;
    const size_t bytes = bl.spack_size("A", &M, &N, &K);
    packed = at::empty({(int64_t)bytes + 64}, at::kByte);
    const char t = tb ? 'T' : 'N';
    const float one = 1.f;
    bl.spack("A", &t, &M, &N, &K, &one, reinterpret_cast<const float*>(B), &ldb,
             reinterpret_cast<float*>(packed.data_ptr()));
  }

  void operator()(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (!packed.defined() || m == 0) {
      gemm<T>(false, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
      return;
    }
    const int64_t M = n, N = m, K = k, LA = ldb, LB = lda, LC = ldc;
    const float fb = static_cast<float>(beta);
    maybe_serial(m * n * k, [&] {
      blas().scompute("P", "N", &M, &N, &K, reinterpret_cast<const float*>(packed.data_ptr()), &LA,
                      reinterpret_cast<const float*>(A), &LB, &fb, reinterpret_cast<float*>(C), &LC);
    });
  }
};

}  // namespace fastrnn
