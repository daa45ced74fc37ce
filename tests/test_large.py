"""Tensors past 2**31 elements: every index the compiled CPU kernels form is int64, so a layer
whose gate buffer holds more than 2**31 values runs and gives the right numbers at its end.

One LSTM layer with H=16, I=1, B=4096, T=9000: the input projection is [T*B, 4H], 2.36e9
floats (11 GiB for gi and out together), while the arithmetic stays small (about 10 s on 2
cores).  The last sequence of the batch, whose rows sit past element 2**31, is checked
against torch.nn.LSTM run on that sequence alone.  Skipped when the machine lacks the memory.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastrnn
from conftest import F32, assert_close

T, B, H = 9000, 4096, 16
NEED_GIB = 16


def _available_gib():
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return 0.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in ("cpp", "numba") if b in fastrnn.available_backends("cpu")])
def test_layer_past_2_31_elements(backend):
    if _available_gib() < NEED_GIB and not os.environ.get("FASTRNN_FORCE_LARGE"):
        pytest.skip(f"needs {NEED_GIB} GiB of free memory, {_available_gib():.1f} available")
    assert T * B * 4 * H > 2**31
    torch.manual_seed(0)
    ref = torch.nn.LSTM(1, H)
    model = fastrnn.LSTM(1, H, backend=backend)
    model.load_state_dict(ref.state_dict())
    # One sequence of inputs broadcast over the batch, so every column's answer is the same;
    # a tiny per-column offset makes the last column distinct from the first.
    seq = torch.randn(T, 1, 1)
    x = seq.expand(T, B, 1).contiguous()
    x[:, -1] += 0.25
    with torch.no_grad():
        out, (hn, cn) = model(x)
        del x
        ref_out, (ref_hn, ref_cn) = ref(seq + 0.25)
    assert out.shape == (T, B, H)
    assert_close(out[:, -1], ref_out[:, 0], f"{backend}: output of the last sequence", **F32)
    assert_close(hn[:, -1], ref_hn[:, 0], f"{backend}: h_n of the last sequence", **F32)
    assert_close(cn[:, -1], ref_cn[:, 0], f"{backend}: c_n of the last sequence", **F32)
