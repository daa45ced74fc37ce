// Which kernel table this CPU runs: AVX-512 (F/DQ/VL/BW) or AVX2+FMA where the CPU has it,
// baseline x86-64 otherwise, picked once.  FASTRNN_ISA=avx2|baseline caps the choice (overrides.h;
// read once, at the first call: tests run it in a fresh interpreter).
#include "kernel_table.h"
#include "overrides.h"

namespace fastrnn {

const KernelTable& kernels() {
  static const KernelTable* k = [] {
    bool avx2 = false, avx512 = false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#endif
    if (overrides().isa_baseline) avx2 = avx512 = false;
    if (overrides().isa_no_avx512) avx512 = false;
    if (avx512) return &isa_avx512::kernels();
    return avx2 ? &isa_avx2::kernels() : &isa_base::kernels();
  }();
  return *k;
}

}  // namespace fastrnn
