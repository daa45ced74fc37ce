// fastrnn._ext, the cpp backend's Python module: the layer calls (layer.h) and what fastrnn's
// Python side asks about this build and CPU (fastrnn/backends/cpp.py, _compiled.py, tests).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "bf16.h"
#include "blas.h"
#include "custom_loop.h"
#include "kernel_table.h"
#include "layer.h"
#include "loop_plan.h"
#include "scratch.h"

namespace fastrnn {
namespace {

std::string isa() { return kernels().isa; }

// The native bfloat16 path of this CPU ("amx_bf16": AMX tiles for the products, "avx512_bf16":
// vdpbf16ps), "" where bf16 runs upcast to float32 (fastrnn/backends/cpp.py reads it once).
std::string native_bf16() {
  if (bf16_kernels() == nullptr) return "";
  return amx_steps() ? "amx_bf16" : bf16_kernels()->isa;
}

// How many distinct threads one at::parallel_for over `n` unit items runs on: torch's thread
// count when the extension was built with OpenMP, 1 when the pragma compiled away (a build
// without -fopenmp ran every split loop on one thread for three sessions; tests check this).
int64_t parallel_threads(int64_t n) {
  std::mutex m;
  std::set<std::thread::id> seen;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> g(m);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}

// The loop a float32 layer call takes ("panel+step": the panel loop doing the input side in its
// steps; "panel"; "blas"), for auto's dispatch (fastrnn/backends/cpp.py): the same rules as the
// calls, environment overrides included.
std::string loop_plan(bool proj, int64_t batch, int64_t steps, int64_t input_size, int64_t hidden, int64_t gates,
                      bool backward) {
  TORCH_CHECK_VALUE(batch >= 0 && steps >= 0 && input_size >= 0 && hidden >= 0 && gates >= 1 && gates <= 4,
                    "fastrnn._ext: loop_plan needs non-negative sizes and 1-4 gates");
  LayerShape s;
  s.float32 = true;
  s.proj = proj;
  s.batch = batch;
  s.steps = steps;
  s.rows = batch * steps;
  s.input_size = input_size;
  s.hidden = hidden;
  s.gates = gates;
  s.backward = backward;
  return loop_plan_name(plan_loop(s));
}

// {"forward": {"cached_bytes", "bytes_per_row", "panel_max_bytes"}, "backward": {...}}
void set_limits(const pybind11::dict& limits) {
  auto pass = [&](const char* name) {
    TORCH_CHECK_VALUE(limits.contains(name), "fastrnn._ext: set_loop_limits needs '", name, "'");
    const auto d = limits[name].cast<pybind11::dict>();
    TORCH_CHECK_VALUE(d.contains("cached_bytes") && d.contains("bytes_per_row") && d.contains("panel_max_bytes"),
                      "fastrnn._ext: set_loop_limits['", name,
                      "'] needs cached_bytes, bytes_per_row and panel_max_bytes");
    const StepInputLimits l{d["cached_bytes"].cast<int64_t>(), d["bytes_per_row"].cast<int64_t>(),
                            d["panel_max_bytes"].cast<int64_t>()};
    TORCH_CHECK_VALUE(l.cached_bytes >= 0 && l.bytes_per_row >= 0 && l.panel_max_bytes >= 0,
                      "fastrnn._ext: set_loop_limits needs non-negative byte counts");
    return l;
  };
  set_loop_limits({pass("forward"), pass("backward")});
}

pybind11::dict limits() {
  const LoopLimits l = loop_limits();
  pybind11::dict d;
  for (const auto& [name, pass] : {std::pair{"forward", l.forward}, std::pair{"backward", l.backward}}) {
    pybind11::dict p;
    p["cached_bytes"] = pass.cached_bytes;
    p["bytes_per_row"] = pass.bytes_per_row;
    p["panel_max_bytes"] = pass.panel_max_bytes;
    d[name] = p;
  }
  return d;
}

std::string gemm_path() {
  // "panel-<isa>+<path>": float32 steps of up to 64-512 rows on the panel kernel, the rest on <path>
  const std::string blas_path = blas().spack ? "mkl-packed" : blas().s ? "blas" : "aten";
  return kernels().panel_f != nullptr ? "panel-" + std::string(kernels().isa) + "+" + blas_path : blas_path;
}

}  // namespace
}  // namespace fastrnn

PYBIND11_MODULE(_ext, m) {
  m.doc() = "fastrnn cpp backend: fused CPU kernels for LSTM/GRU/RNN layers (forward and backward)";
  m.def("forward", &fastrnn::forward, "One layer forward; see csrc/layer.h", pybind11::arg("cell"),
        pybind11::arg("x"), pybind11::arg("batch_sizes"), pybind11::arg("h0"), pybind11::arg("c0"),
        pybind11::arg("w_ih"), pybind11::arg("w_hh"), pybind11::arg("b_ih"), pybind11::arg("b_hh"),
        pybind11::arg("w_hr"), pybind11::arg("train"));
  m.def("backward", &fastrnn::backward, "One layer backward; see csrc/layer.h", pybind11::arg("cell"),
        pybind11::arg("x"), pybind11::arg("batch_sizes"), pybind11::arg("h0"), pybind11::arg("c0"),
        pybind11::arg("w_ih"), pybind11::arg("w_hh"), pybind11::arg("w_hr"), pybind11::arg("saved"),
        pybind11::arg("dout"), pybind11::arg("dhn"), pybind11::arg("dcn"), pybind11::arg("need_dx"),
        pybind11::arg("need_dw"), pybind11::arg("bf16_gemms") = false);
  m.def("custom_forward", &fastrnn::custom_forward,
        "A user-defined cell's forward time loop through its generated step entry point; see csrc/custom_loop.h",
        pybind11::arg("fn"), pybind11::arg("gi"), pybind11::arg("whh0"), pybind11::arg("whh1"), pybind11::arg("bhh"),
        pybind11::arg("prm"), pybind11::arg("zm"), pybind11::arg("st0"), pybind11::arg("sizes"),
        pybind11::arg("offsets"), pybind11::arg("save"));
  m.def("custom_backward", &fastrnn::custom_backward,
        "A user-defined cell's backward time loop through its generated step entry point; see csrc/custom_loop.h",
        pybind11::arg("fn"), pybind11::arg("gi"), pybind11::arg("ghs"), pybind11::arg("sprev"), pybind11::arg("whh0"),
        pybind11::arg("whh1"), pybind11::arg("prm"), pybind11::arg("zm"), pybind11::arg("sizes"),
        pybind11::arg("offsets"), pybind11::arg("dout"), pybind11::arg("ds"));
  m.def("isa", &fastrnn::isa, "The instruction set the pointwise kernels were picked for");
  m.def("native_bf16", &fastrnn::native_bf16,
        "The native bfloat16 path: 'amx_bf16', 'avx512_bf16', or '' (bf16 runs upcast to float32)");
  m.def("gemm_path", &fastrnn::gemm_path, "How per-step GEMMs run: mkl-packed, blas or aten");
  m.def("loop_plan", &fastrnn::loop_plan, pybind11::arg("proj"), pybind11::arg("batch"), pybind11::arg("steps"),
        pybind11::arg("input_size"), pybind11::arg("hidden"), pybind11::arg("gates"),
        pybind11::arg("backward") = false,
        "The float32 loop a layer call takes: 'panel+step', 'panel' or 'blas'");
  m.def("set_loop_limits", &fastrnn::set_limits, pybind11::arg("limits"),
        "The CPU's thresholds of the loop plan (csrc/loop_plan.h), from fastrnn/dispatch_table.py");
  m.def("loop_limits", &fastrnn::limits, "The loop plan's thresholds now in force");
  m.def("empty_scratch_cache", &fastrnn::empty_scratch_cache,
        "Unmap the large scratch buffers kept between calls (csrc/scratch.h); returns the bytes released");
  m.def("parallel_threads", &fastrnn::parallel_threads, pybind11::arg("n") = 64,
        "Distinct threads one at::parallel_for over n items ran on (1: built without OpenMP)");
}
