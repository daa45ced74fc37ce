#include "blas.h"

#include <dlfcn.h>

#include "overrides.h"

namespace fastrnn {

const Blas& blas() {
  static const Blas b = [] {
    Blas r;
    if (overrides().gemm_aten) return r;
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return r;
    r.s = reinterpret_cast<fgemm_t>(dlsym(h, "sgemm_"));
    r.d = reinterpret_cast<dgemm_t>(dlsym(h, "dgemm_"));
    if (!r.s || !r.d) return Blas{};
    // the Fortran-style entry (int by address), as the gemms are called
    r.set_local_threads = reinterpret_cast<set_local_threads_t>(dlsym(h, "mkl_set_num_threads_local_"));
    if (!overrides().gemm_nopack) {
      r.spack_size = reinterpret_cast<spack_size_t>(dlsym(h, "sgemm_pack_get_size_"));
      r.spack = reinterpret_cast<spack_t>(dlsym(h, "sgemm_pack_"));
      r.scompute = reinterpret_cast<scompute_t>(dlsym(h, "sgemm_compute_"));
      if (!r.spack_size || !r.spack || !r.scompute) r.spack_size = nullptr, r.spack = nullptr, r.scompute = nullptr;
    }
    return r;
  }();
  return b;
}

}  // namespace fastrnn
