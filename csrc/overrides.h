// Every FASTRNN_* environment variable the cpp backend reads, in one place.  They are overrides for
// measuring and testing (README and docs/DEVELOPING.md list them for users); none changes results.
//
// Overrides are read once, at first use (a function-local static: thread-safe), except the two that
// pick a layer's loop: tests and measurements flip those between calls in one process
// (tests/test_cpp.py monkeypatches them), so loop_overrides() reads them on each layer call, once.
// A field left unset means "the measured default", which lives beside its measurements
// (loop_plan.cpp, fused_steps.h, scratch.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace fastrnn {

struct Overrides {
  // FASTRNN_ISA=avx2|baseline|avx512|avx512_bf16: cap the kernel table picked from the CPU (isa.cpp); unset: the
  // widest the CPU has (AVX-512 F/DQ/VL/BW, else AVX2+FMA, else baseline x86-64).
  bool isa_no_avx512 = false;
  bool isa_baseline = false;
  // FASTRNN_ISA=avx512 (and the caps above): no native bf16 kernels (bf16.h), bf16 runs upcast;
  // FASTRNN_ISA=avx512_bf16: native bf16 without AMX (the input projection on vdpbf16ps too).
  bool isa_no_bf16 = false;
  bool isa_no_amx = false;
  // FASTRNN_AMX_STEP_ROWS: native bf16 steps of at least this many rows run on AMX tiles, fewer on
  // vdpbf16ps (layer_forward_bf16.cpp: kAmxStepRows).
  std::optional<int64_t> amx_step_rows;
  // FASTRNN_BF16_CHUNK_ROWS: rows of steps whose input projection a native bf16 loop makes at once
  // (layer_forward_bf16.cpp: kChunkRows).
  std::optional<int64_t> bf16_chunk_rows;
  // FASTRNN_GEMM=aten: per-step GEMMs through at::mm_out instead of torch's BLAS symbols;
  // FASTRNN_GEMM=nopack: BLAS, without MKL's packed-weight GEMM (blas.cpp).
  bool gemm_aten = false;
  bool gemm_nopack = false;
  // FASTRNN_PARALLEL_STEP_MACS: panel-loop steps below this many multiply-adds run on one thread
  // (fused_steps.h: kParallelStepMacs).
  std::optional<int64_t> parallel_step_macs;
  // FASTRNN_HUGE_PAGES=0: plain at::empty for the large internal buffers, no mmap'd huge pages and
  // no cache (scratch.h).
  bool huge_pages = true;
  // FASTRNN_SCRATCH_CACHE_MB: the most memory of large scratch buffers kept mapped between calls
  // (scratch.h: kScratchCacheMB; 0: none).
  std::optional<size_t> scratch_cache_mb;
};

// The overrides of this process, read from the environment at the first call.
const Overrides& overrides();

// Which loop a float32 layer call takes, forced; `measured` is the rule of loop_plan.cpp.
enum class Force { measured, blas, panel, step, before };

struct LoopOverrides {
  Force step_gemm = Force::measured;   // FASTRNN_STEP_GEMM=blas|panel: the BLAS or the panel step loop
  Force input_gemm = Force::measured;  // FASTRNN_INPUT_GEMM=step|blas|panel|before: the input projection
                                       // in each panel-loop step, or before the loop on BLAS / panel /
                                       // whichever of the two the plan picks
  // FASTRNN_BACKWARD_INPUT_GEMM=step|before: the backward's dx rows in its steps or after the loop,
  // whatever the forward did (for timing the two apart; over FASTRNN_INPUT_GEMM in the backward)
  Force backward_input_gemm = Force::measured;
  // FASTRNN_STEP_SYNC=barrier: the panel loops' threads meet at a barrier between steps
  // instead of overlapping the products with their own units with the wait (fused_steps.h)
  bool step_barrier = false;
};

// Read now (once per layer call, by plan_loop).
LoopOverrides loop_overrides();

}  // namespace fastrnn
