"""torch.autograd.gradcheck in float64 on every CPU backend, straight through the layer op."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from conftest import CPU_BACKENDS
from fastrnn.functional import rnn_layer
from fastrnn.cells import gates



def _case(cell, D, proj, packed, bias):
    I, H, B = 3, 4, 3
    hout = proj or H
    dt = dict(dtype=torch.float64, requires_grad=True)
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    N = int(batch_sizes.sum()) if packed else 4 * B
    x = torch.randn(N, I, **dt)
    h0 = torch.randn(D, B, hout, **dt)
    c0 = torch.randn(D, B, H, **dt) if cell == "lstm" else None
    weights = []
    for _ in range(D):
        w = [torch.randn(gates(cell) * H, I, **dt) * 0.5, torch.randn(gates(cell) * H, hout, **dt) * 0.5]
        w += [torch.randn(gates(cell) * H, **dt), torch.randn(gates(cell) * H, **dt)] if bias else [None, None]
        w += [torch.randn(hout, H, **dt) * 0.5 if proj else None]
        weights.append(w)
    return x, batch_sizes, h0, c0, weights


CASES = [("lstm", 1, 0, False, True), ("lstm", 2, 2, True, True), ("gru", 2, 0, True, True),
         ("gru", 1, 0, False, False), ("rnn_tanh", 2, 0, False, True), ("rnn_relu", 1, 0, True, True)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell,D,proj,packed,bias", CASES,
                         ids=[f"{c}-D{d}-p{p}-{'packed' if k else 'padded'}-{'bias' if b else 'nobias'}"
                              for c, d, p, k, b in CASES])
def test_gradcheck(cell, D, proj, packed, bias, backend):
    x, batch_sizes, h0, c0, weights = _case(cell, D, proj, packed, bias)
    flat = [w for ws in weights for w in ws if w is not None]
    shapes = [[w is not None for w in ws] for ws in weights]

    def fn(x, h0, c0, *flat_w):
        it = iter(flat_w)
        ws = [tuple(next(it) if present else None for present in s) for s in shapes]
        out, hn, cn = rnn_layer(cell, x, batch_sizes, h0, c0, ws, backend=backend)
        return (out, hn) if cn is None else (out, hn, cn)

    assert gradcheck(fn, (x, h0, c0, *flat), eps=1e-6, atol=1e-7)
