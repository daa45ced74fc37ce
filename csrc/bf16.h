// Native bfloat16 kernels of the cpp backend: bf16 weights and activations, float32 accumulation
// and float32 state (the numerics of oneDNN's bf16 RNNs).  No torch dependency: step_gemm_bf16.cpp
// is compiled with AVX512_BF16 flags and picked at run time (isa.cpp: bf16_kernels()).
//
// The GEMM operand layout is the 16-column panel of step_gemm*.cpp with k taken in pairs, the
// layout `vdpbf16ps` reads: panel element (k2, c, p) = W[col c][2*k2 + p], zero past K and past
// the matrix's columns, so one 64-byte panel row is one zmm of 16 (even, odd) pairs.  A's pairs
// (A[m, 2k2], A[m, 2k2 + 1]) are broadcast as one 32-bit value; an odd K's last k reads A[m, K-1]
// alone (it never reads past a row).
#pragma once

#include <cstdint>

namespace fastrnn {

// C[m, :ncols] (+)= A[m, :K] P for m < M, A bf16 (raw bits) rows lda apart, P one pair panel of
// ceil(K/2) x 16 x 2 bf16.  With panels = NP > 1, NP such products over the same rows at once
// (panel p at P + p * panel_stride, its columns at C + p * c_stride, all ncols wide): a hidden
// block's gate panels, or consecutive whole blocks.
struct PanelBf16Args {
  int64_t M, K;
  const uint16_t* A; int64_t lda;
  const uint16_t* P;
  float* C; int64_t ldc;
  int64_t ncols;
  bool accumulate;
  int panels = 1;
  int64_t panel_stride = 0, c_stride = 0;
};

struct Bf16Kernels {
  void (*panel)(const PanelBf16Args&);
  // dst[i] = bf16(src[i]) for i < n, round to nearest even (vcvtneps2bf16), NaN kept NaN
  void (*to_bf16)(const float* src, uint16_t* dst, int64_t n);
  const char* isa;  // "avx512_bf16"
};

// The bf16 kernels of this CPU, or nullptr where it has no AVX512_BF16 (or FASTRNN_ISA caps the
// table below it): the op layer then runs bf16 upcast to float32 (fastrnn/ops.py).
const Bf16Kernels* bf16_kernels();

namespace isa_bf16 {
void panel_gemm(const PanelBf16Args& g);
void to_bf16(const float* src, uint16_t* dst, int64_t n);
}

constexpr int64_t kPairPanel = 32;  // bf16 values in one panel row: 16 columns x 2 k

inline int64_t pairs_of(int64_t K) { return (K + 1) / 2; }

}  // namespace fastrnn

namespace fastrnn {

// One product on AMX tiles (a recurrent step, or a row block of the input projection): C[m, panel cols] = A[m, :K] P for m < Mp and the pair
// panels p = b0*G .. b1*G - 1 (panel p = (jb, g) -> columns g*H + 16jb .. +16, the last block of
// each gate stored only up to H).  Mp a multiple of 16 (A and C have Mp rows; rows past the live
// ones are computed and ignored), K a multiple of 32 (A's and the panels' padding is zero), so
// every tile is full and one tile configuration serves every call.  The caller has the tile
// configuration loaded (amx_begin / amx_end around a thread's work).
struct AmxStepArgs {
  int64_t Mp, K;
  const uint16_t* A; int64_t lda;
  const uint16_t* P;  // panels K/2 x 16 x 2, K*16 values apart
  int64_t G, H, b0, b1;
  float* C; int64_t ldc;
  bool load_c;  // C (+)=: start from C's values (the biases) instead of zero
  // A second product summed in the same tiles after the first, C (+)= A P + A2 P2 (a step's input
  // projection and recurrent product in one pass, C stored once): A2 [Mp, K2] rows lda2 apart,
  // panels P2 packed with K2 (a multiple of 32).  K2 = 0: none.
  const uint16_t* A2 = nullptr; int64_t lda2 = 0;
  const uint16_t* P2 = nullptr; int64_t K2 = 0;
  // Start every row from these column values (bias [G*H]) instead of zero or C (load_c false).
  const float* bias = nullptr;
};

// Whether the products (input projection and recurrent steps) may run on AMX: the CPU has AMX-BF16, Linux granted this process
// the tile-data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once: the one
// process-level change of this path, made by every AMX user, oneDNN included), FASTRNN_ISA
// allows it.
bool amx_steps();

namespace isa_bf16 {
void amx_begin();  // loads this thread's tile configuration
void amx_end();    // releases it (the thread leaves as it came)
void amx_step(const AmxStepArgs& a);
}

}  // namespace fastrnn

