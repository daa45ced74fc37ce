#include <algorithm>
#include "overrides.h"

#include <cstdlib>
#include <cstring>

namespace fastrnn {
namespace {

bool env_is(const char* env, const char* value) { return env && std::strcmp(env, value) == 0; }

Force read_force(const char* name) {
  const char* env = std::getenv(name);
  if (env_is(env, "blas")) return Force::blas;
  if (env_is(env, "panel")) return Force::panel;
  if (env_is(env, "step")) return Force::step;
  if (env_is(env, "before")) return Force::before;
  return Force::measured;
}

Overrides read_overrides() {
  Overrides o;
  const char* isa = std::getenv("FASTRNN_ISA");
  o.isa_baseline = env_is(isa, "baseline");
  o.isa_no_avx512 = o.isa_baseline || env_is(isa, "avx2");
  o.isa_no_bf16 = o.isa_no_avx512 || env_is(isa, "avx512");
  o.isa_no_amx = o.isa_no_bf16 || env_is(isa, "avx512_bf16");
  const char* gemm = std::getenv("FASTRNN_GEMM");
  o.gemm_aten = env_is(gemm, "aten");
  o.gemm_nopack = env_is(gemm, "nopack");
  if (const char* macs = std::getenv("FASTRNN_PARALLEL_STEP_MACS")) o.parallel_step_macs = std::atoll(macs);
  if (const char* rows = std::getenv("FASTRNN_AMX_STEP_ROWS")) o.amx_step_rows = std::atoll(rows);
  if (const char* rows = std::getenv("FASTRNN_BF16_CHUNK_ROWS")) o.bf16_chunk_rows = std::max<long long>(1, std::atoll(rows));
  o.huge_pages = !env_is(std::getenv("FASTRNN_HUGE_PAGES"), "0");
  if (const char* mb = std::getenv("FASTRNN_SCRATCH_CACHE_MB"))
    o.scratch_cache_mb = static_cast<size_t>(std::atoll(mb));
  return o;
}

}  // namespace

const Overrides& overrides() {
  static const Overrides o = read_overrides();
  return o;
}

LoopOverrides loop_overrides() {
  LoopOverrides o;
  o.step_gemm = read_force("FASTRNN_STEP_GEMM");
  o.input_gemm = read_force("FASTRNN_INPUT_GEMM");
  o.backward_input_gemm = read_force("FASTRNN_BACKWARD_INPUT_GEMM");
  o.step_barrier = env_is(std::getenv("FASTRNN_STEP_SYNC"), "barrier");
  return o;
}

}  // namespace fastrnn
