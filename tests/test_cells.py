"""LSTMCell/GRUCell/RNNCell against torch.nn, outputs and gradients, every backend."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastrnn
from conftest import CPU_BACKENDS, TOL, assert_close

CELLS = {
    "LSTMCell": (nn.LSTMCell, fastrnn.LSTMCell, {}),
    "GRUCell": (nn.GRUCell, fastrnn.GRUCell, {}),
    "RNNCell-tanh": (nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "tanh"}),
    "RNNCell-relu": (nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["batched", "unbatched", "hxNone", "nobias"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_matches_torch(name, case, dtype, backend):
    tcls, fcls, kw = CELLS[name]
    bias = case != "nobias"
    ref = tcls(5, 7, bias=bias, dtype=dtype, **kw)
    fast = fcls(5, 7, bias=bias, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    shape = (5,) if case == "unbatched" else (3, 5)
    x = torch.randn(shape, dtype=dtype)
    hshape = (7,) if case == "unbatched" else (3, 7)
    hx = None if case == "hxNone" else (
        (torch.randn(hshape, dtype=dtype), torch.randn(hshape, dtype=dtype)) if name == "LSTMCell"
        else torch.randn(hshape, dtype=dtype))

    def run(m):
        xi = x.clone().requires_grad_()
        h = None if hx is None else (tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple)
                                     else hx.clone().requires_grad_())
        out = m(xi, h)
        outs = list(out) if isinstance(out, tuple) else [out]
        sum((o * (i + 1.5)).sum() for i, o in enumerate(outs)).backward()
        hs = [] if h is None else (list(h) if isinstance(h, tuple) else [h])
        return outs, [xi.grad] + [t.grad for t in hs] + [p.grad for p in m.parameters()]

    outs_r, grads_r = run(ref)
    outs_f, grads_f = run(fast)
    for i, (a, b) in enumerate(zip(outs_f, outs_r)):
        assert_close(a, b, f"out[{i}]", **TOL[dtype])
    for i, (a, b) in enumerate(zip(grads_f, grads_r)):
        assert_close(a, b, f"grad[{i}]", **TOL[dtype])
