"""The fastrnn.bench grid as pytest-benchmark tests: `pytest benchmarks/ --benchmark-only`.

One test per (device, case, implementation), grouped by case so pytest-benchmark's table puts
torch's module and each fastrnn backend side by side. The quick subset by default;
FASTRNN_BENCH_GRID=full runs the whole grid. FASTRNN_BENCH_BACKENDS=cpp,numba picks the
implementations timed besides torch's (default: as `python -m fastrnn.bench`). CUDA cases
are added when a GPU is present. Speed is recorded, never asserted; for the side-by-side
alternating timing, GFLOP/s and the results file, use `python -m fastrnn.bench`.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from fastrnn.bench import cases as C
from fastrnn.bench import runner

FULL = os.environ.get("FASTRNN_BENCH_GRID", "quick") == "full"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _params():
    out = []
    for device in DEVICES:
        names = os.environ.get("FASTRNN_BENCH_BACKENDS")
        names = names.split(",") if names else runner.default_backends(device)
        for case in (C.grid(device) if FULL else C.quick(device)):
            for name in [runner.TORCH_NN] + [n for n in names if n != runner.TORCH_NN]:
                out.append(pytest.param(device, case, name, id=f"{device}-{case.id}-{name}"))
    return out


@functools.lru_cache(maxsize=1)  # tests come case by case: one case's input and weights at a time
def _setup(case: C.Case, device: str) -> runner.Setup:
    return runner.Setup(case, device)


@pytest.mark.parametrize("device,case,impl", _params())
def test_bench(benchmark, device, case, impl):
    try:
        im = runner.build(impl, _setup(case, device))
    except runner.Skip as e:
        pytest.skip(str(e))
    step = im.step
    if device == "cuda":
        def step():
            im.step()
            torch.cuda.synchronize()
    step()  # warm-up: JIT compiles, caches, allocator
    benchmark.group = f"{device} {case.id}"
    benchmark.extra_info.update(case=case.id, impl=impl, flops=C.flops(case))
    benchmark(step)
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = C.flops(case) / benchmark.stats.stats.median / 1e9


def _stream_params():
    out = []
    for case in C.stream("cpu", hidden=(64,)):
        for name in runner.STREAM_IMPLS:
            out.append(pytest.param(case, name, id=f"cpu-stream-{case.id}-{name}"))
    return out


@pytest.mark.parametrize("case,impl", _stream_params())
def test_bench_stream(benchmark, case, impl):
    """One frame per call (`python -m fastrnn.bench stream` times these side by side)."""
    impls, skipped, _ = runner.stream_impls(case, (impl,))
    if impl not in impls:
        pytest.skip(skipped.get(impl, "not available"))
    reset, step = impls[impl]
    with torch.inference_mode():
        for _ in range(20):  # warm-up: JIT, allocator, ORT's arena
            step()
        benchmark.group = f"cpu stream {case.id}"
        benchmark.extra_info.update(case=case.id, impl=impl)
        benchmark(step)
