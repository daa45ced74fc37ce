"""Modules used from several Python threads at once (inference) give correct results."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import fastrnn
from conftest import CPU_BACKENDS, TOL, assert_close


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_concurrent_inference(mode, backend):
    ref = getattr(nn, mode)(8, 16, num_layers=2, bidirectional=True, dtype=torch.float64)
    fast = getattr(fastrnn, mode)(8, 16, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend)
    fast.load_state_dict(ref.state_dict())
    inputs = [torch.randn(20, 3 + i % 3, 8, dtype=torch.float64) for i in range(12)]
    with torch.no_grad():
        expected = [ref(x)[0] for x in inputs]

        def run(i):
            return fast(inputs[i])[0]

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(run, range(len(inputs))))
    for i, (got, want) in enumerate(zip(results, expected)):
        assert_close(got, want, f"thread result {i}", **TOL[torch.float64])
