"""The compiled (not interpreted) Triton kernels, checked on CPU for the GPU they will run on.

* Compile budget: the distinct specialisation keys `make gpu-check` and tests/gpu/test_triton_gpu.py
  would ask the Triton JIT for (launches recorded, not run: `fastrnn.kernels.triton.aot.
  record_launches`, the binder of Triton 3.6's `JITFunction.run` for an sm_90 target) stay within
  60 and 100: each is about a second of ptxas on the GPU machine, inside a 5-minute lease.
* No spills: every kernel variant the dispatch can launch is compiled for sm_90 (ptxas ships in
  the triton wheel; no GPU needed) and must keep everything in registers, with dynamic shared
  memory within what one sm_90 block may have.
* The fp32 bound of the GPU tests (2x cuDNN's own error against float64) is met by an independent
  correct fp32 implementation (the `reference` backend) against torch's CPU fp32 kernels, at every
  fp32 size of the GPU tests: the bound is not tighter than rounding-order differences.

Run without TRITON_INTERPRET (the kernels must be JITFunctions).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(INTERPRET, reason="kernels are interpreted in this process; "
                                "run without TRITON_INTERPRET=1")
triton = pytest.importorskip("triton")

from fastrnn import gpucheck  # noqa: E402

HERE = Path(__file__).parent


def _gpu_tests():
    """tests/gpu/test_triton_gpu.py as a module (its case table; nothing in it touches CUDA)."""
    name = "fastrnn_gpu_test_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "gpu" / "test_triton_gpu.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the file runs
        spec.loader.exec_module(mod)
    return sys.modules[name]


@functools.lru_cache(maxsize=None)
def _plan_recording():
    return gpucheck.record_plan(gpucheck.gpu_check_plan())


@functools.lru_cache(maxsize=None)
def _gpu_tests_recording():
    return _record_gpu_tests(_gpu_tests())


def _record_gpu_tests(mod):
    """Every triton launch tests/gpu/test_triton_gpu.py makes, recorded on CPU tensors."""
    from fastrnn.backends import triton as tb
    from fastrnn.kernels.triton import aot
    with aot.record_launches() as rec, gpucheck.cpu_triton():
        for case in mod.ALL_CASES:
            # a few steps and rows: keys never depend on them (test_compile_keys_do_not_depend_on_sizes)
            case = dataclasses.replace(case, T=3, B=3, I=min(case.I, 8), sizes=(3, 2, 1) if case.sizes else None)
            env = {"FASTRNN_TRITON_PERSISTENT_MAX_H": "0"} if case.kernel == "step" else {}
            with _env(env), gpucheck._tf32(case.tf32):
                x, bs, h0, c0, w = mod.cast(mod.problem(case), mod.DT[case.dtype], "cpu")
                hout = case.proj or case.H
                shapes = [(x.size(0), case.D * hout), (case.D, case.B, hout)] + \
                    ([(case.D, case.B, case.H)] if case.cell == "lstm" else [])
                mod.run(tb.rnn_layer, case.cell, x, bs, h0, c0, w, [torch.ones(s) for s in shapes])
    return rec


class _env:
    def __init__(self, values):
        self.values = values

    def __enter__(self):
        self.old = os.environ.get("FASTRNN_TRITON_PERSISTENT_MAX_H")
        os.environ.pop("FASTRNN_TRITON_PERSISTENT_MAX_H", None)
        os.environ.update(self.values)

    def __exit__(self, *a):
        os.environ.pop("FASTRNN_TRITON_PERSISTENT_MAX_H", None)
        if self.old is not None:
            os.environ["FASTRNN_TRITON_PERSISTENT_MAX_H"] = self.old


def test_gpu_check_compile_budget():
    rec = _plan_recording()
    n = len(rec.keys)
    print(f"make gpu-check: {n} compiles for {rec.launches} launches {rec.by_kernel()}")
    assert n <= gpucheck.COMPILE_BUDGET == 60, rec.by_kernel()


def test_gpu_test_file_compile_budget():
    rec = _gpu_tests_recording()
    print(f"tests/gpu/test_triton_gpu.py: {len(rec.keys)} compiles for {rec.launches} launches {rec.by_kernel()}")
    assert len(rec.keys) <= 100, rec.by_kernel()


def test_compile_keys_do_not_depend_on_sizes():
    """`gpucheck.shrink` counts full-size cases at a few steps and rows: that is exact only if no
    key depends on T, B, I or H (beyond step vs persistent). Full and shrunk sizes, same keys."""
    C = gpucheck.Case
    full = [C("triton", "lstm", "bf16", T=6, B=64, I=1024, H=1024, grad=True),
            C("triton", "gru", "tf32", T=5, B=16, I=512, H=512, grad=True),
            C("triton", "rnn_tanh", "f32", T=4, B=1, I=128, H=128, grad=False),
            C("triton-step", "lstm", "f32", T=7, B=37, I=50, H=67, D=2, packed=True),
            C("triton-step", "lstm", "bf16", T=5, B=20, I=30, H=80, D=2, proj=35, packed=True),
            C("triton-persistent", "gru", "f16", T=6, B=37, I=50, H=64, D=2, packed=True)]
    keys = lambda rec: set(rec.keys)  # noqa: E731
    assert keys(gpucheck.record_plan(full, do_shrink=False)) == keys(gpucheck.record_plan(full, do_shrink=True))


def test_launches_are_dispatch_variants():
    """The variants the no-spill test compiles cover every launch of the gpu-check plan and of
    the GPU tests (so nothing they run escapes it)."""
    variants = set(gpucheck.dispatch_variants().keys)
    plan = set(_plan_recording().keys)
    tests = set(_gpu_tests_recording().keys)
    assert plan <= variants, [k[0] for k in plan - variants]
    assert tests <= variants, [k[0] for k in tests - variants]


def _ptxas_or_skip():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(90)
        assert os.path.exists(ptxas.path), ptxas.path
    except Exception as e:  # no nvidia backend or no ptxas binary in this triton install
        pytest.skip(f"cannot compile for sm_90 here: triton's NVIDIA backend or its ptxas is missing ({e})")


def test_no_spills_on_sm90():
    """Every (kernel, cell, dtype, tf32) variant the dispatch launches, compiled for sm_90: no
    local memory (stack, LDL/STL), dynamic shared memory within one block's limit, the matrix
    units used for half types and TF32, DMMA for float64."""
    _ptxas_or_skip()
    from fastrnn.kernels.triton import aot
    rows = aot.report_variants(jobs=min(2, os.cpu_count() or 1))
    assert len(rows) >= 80
    bad = [f"{label}: {r}" for label, r in rows if aot.spills(r) or r["dyn_shared"] > aot.SM90_MAX_SHARED]
    assert not bad, "\n".join(bad)
    for label, r in rows:
        if "float16" in label or "bfloat16" in label or " tf32" in label:
            assert r["HMMA"] + r["HGMMA"] > 0, f"{label}: no tensor-core instruction {r}"
        if "float64" in label:
            assert r["DMMA"] > 0, f"{label}: no DMMA {r}"


@pytest.mark.parametrize("case", [c for c in _gpu_tests().CASES if c.dtype == "f32" and not c.tf32], ids=str)
def test_fp32_bound_holds_for_an_independent_implementation(case):
    """The GPU tests pass fp32 within max(2x cuDNN's error, 4 ulp) against float64. Here the
    `reference` backend in fp32 (a Python loop of torch ops, another rounding order) meets the
    same bound against torch's CPU fp32 kernels on the same inputs: a correct fp32 kernel can."""
    from fastrnn import backends
    from fastrnn.backends import reference
    mod = _gpu_tests()
    base = mod.problem(case)
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(case.cell, *base) if o is not None]
    g = torch.Generator().manual_seed(1)
    probes = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    exact = mod.run(reference.rnn_layer, case.cell, *base, probes)
    theirs = mod.run(backends.get("torch").impl.rnn_layer, case.cell, *mod.cast(base, torch.float32, "cpu"), probes)
    ours = mod.run(reference.rnn_layer, case.cell, *mod.cast(base, torch.float32, "cpu"), probes)
    floor = 4 * torch.finfo(torch.float32).eps
    from test_triton import _names, _rel
    on, gn = _names(case.cell, base[4], base[3] is not None)
    bad = [f"{n}: {_rel(o, e):.2e} vs torch {_rel(t, e):.2e}" for n, o, t, e in zip(on + gn, ours, theirs, exact)
           if _rel(o, e) > max(2 * _rel(t, e), floor)]
    assert not bad, "; ".join(bad)
