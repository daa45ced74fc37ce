// Which kernel table this CPU runs: AVX-512 (F/DQ/VL/BW) or AVX2+FMA where the CPU has it,
// baseline x86-64 otherwise, picked once.  FASTRNN_ISA=avx2|baseline caps the choice (overrides.h;
// read once, at the first call: tests run it in a fresh interpreter).
#include "bf16.h"
#include "kernel_table.h"
#include "overrides.h"

#include <string>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

// AVX512_BF16 (vdpbf16ps, vcvtneps2bf16) beside the AVX-512 table; FASTRNN_ISA=avx512 (or any
// lower cap) turns it off, so bf16 runs upcast to float32 as on CPUs without it.
const Bf16Kernels* bf16_kernels() {
  static const Bf16Kernels* k = []() -> const Bf16Kernels* {
    static const Bf16Kernels table{&isa_bf16::panel_gemm, &isa_bf16::to_bf16, "avx512_bf16"};
#if defined(__x86_64__) || defined(__i386__)
    if (std::string(kernels().isa) != "avx512" || overrides().isa_no_bf16) return nullptr;
    return __builtin_cpu_supports("avx512bf16") ? &table : nullptr;
#else
    return nullptr;
#endif
  }();
  return k;
}

// AMX tiles for the bf16 products (our own kernel, step_gemm_bf16.cpp).  Linux keeps the 8 KiB
// tile-data state off until a process asks for it: arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA), once, process-wide and permanent (there is no "give back"; oneDNN and every
// other AMX user make the same request, and torch's own bf16 GEMMs on this CPU already have).  A
// refusal (an old kernel, a seccomp policy) leaves the steps on AVX512_BF16.
bool amx_steps() {
  static const bool amx = [] {
    if (bf16_kernels() == nullptr || overrides().isa_no_amx) return false;
#if defined(__linux__) && defined(__x86_64__)
    if (!__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("amx-tile")) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return amx;
}

}  // namespace fastrnn
