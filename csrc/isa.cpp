// Which kernel table this CPU runs: AVX-512 (F/DQ/VL/BW) or AVX2+FMA where the CPU has it,
// baseline x86-64 otherwise, picked once.  FASTRNN_ISA=avx2|baseline caps the choice (overrides.h;
// read once, at the first call: tests run it in a fresh interpreter).
#include <ATen/native/CPUBlas.h>

#include "bf16.h"
#include "kernel_table.h"
#include "overrides.h"

#include <string>

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

// AMX-BF16 for the input projection: oneDNN's ukernel (at::native::cpublas::brgemm) runs it on
// AMX tiles.  could_pack(bf16) is ATen's own test that oneDNN can (the CPU has AMX-BF16 and the
// build has the ukernel API); oneDNN asks Linux for the AMX tile-data state itself
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once per process, as every AMX user must:
// the one process-level change this path makes, and torch's own bf16 ops make it too) and says
// "no" where that is refused.  FASTRNN_ISA=avx512_bf16 keeps the input projection on vdpbf16ps.
bool amx_input_gemm() {
  static const bool amx = [] {
    if (bf16_kernels() == nullptr || overrides().isa_no_amx) return false;
#if defined(__x86_64__) || defined(__i386__)
    if (!__builtin_cpu_supports("amx-bf16")) return false;
#endif
    return at::native::cpublas::could_pack(at::kBFloat16);
  }();
  return amx;
}

}  // namespace fastrnn
