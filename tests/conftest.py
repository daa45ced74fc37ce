"""Shared fixtures and helpers. Importing this never touches CUDA."""
from __future__ import annotations

import os

import pytest
import torch

import fastrnn

# The backends the conformance suite runs on: everything this install can run on CPU
# ("triton" only appears here under TRITON_INTERPRET=1; it has its own small-shape suite).
CPU_BACKENDS = [b for b in fastrnn.available_backends("cpu") if b != "triton"]

F64 = dict(rtol=1e-9, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-5)
TOL = {torch.float64: F64, torch.float32: F32}


def assert_close(actual, expected, what="", rtol=0.0, atol=0.0):
    """allclose that says where and by how much it failed."""
    assert actual is not None and expected is not None, f"{what}: one side is None"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().double(), expected.detach().double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN pattern differs ({int(nan_a.sum())} vs {int(nan_e.sum())})"
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ; max abs err {err.max().item():.3e}; "
            f"first at {idx}: got {a[idx].item():.10g}, expected {e[idx].item():.10g} (rtol={rtol}, atol={atol})")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # CI has 2 cores; keep torch from oversubscribing when numba/OpenMP pools also start.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
