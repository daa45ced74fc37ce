"""numba-backend specifics: the op against the reference, validation, caching.

The conformance suite covers the modules against torch.nn on every backend; this
file checks the op (`fastrnn.backends.numba.rnn_layer`) directly against the
reference op, and what only the numba backend has (on-disk compile cache, the
checks before entering njit).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import assert_close
from fastrnn.backends import get
from fastrnn.backends import reference
from fastrnn import ops
from fastrnn.cells import CELLS, gates


def numba_layer(cell, *args):
    """One layer on the numba kernels through the op layer (reference.rnn_layer's signature)."""
    BACKEND.impl  # noqa: B018  (loads numba, or raises saying why)
    return ops.rnn_layer(cell, "numba", *args)

BACKEND = get("numba")
pytestmark = pytest.mark.skipif(not BACKEND.availability()[0],
                                reason=f"numba backend unavailable: {BACKEND.availability()[1]}")
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _case(cell, D, I, H, proj, sizes, B, bias, dtype, T=4):
    hout = proj or H
    kw = dict(dtype=dtype)
    batch_sizes = torch.tensor(sizes, dtype=torch.int64) if sizes is not None else None
    N = int(batch_sizes.sum()) if sizes is not None else T * B
    x = torch.randn(N, I, **kw)
    h0 = torch.randn(D, B, hout, **kw) * 0.5
    c0 = torch.randn(D, B, H, **kw) * 0.5 if cell == "lstm" else None
    s = 1 / H ** 0.5
    weights = []
    for _ in range(D):
        w = [torch.randn(gates(cell) * H, I, **kw) * s, torch.randn(gates(cell) * H, hout, **kw) * s]
        w += [torch.randn(gates(cell) * H, **kw) * s, torch.randn(gates(cell) * H, **kw) * s] if bias else [None, None]
        w += [torch.randn(hout, H, **kw) * s if proj else None]
        weights.append(tuple(w))
    return x, batch_sizes, h0, c0, weights


def _run(fn, cell, x, batch_sizes, h0, c0, weights):
    leaves = [t.detach().clone().requires_grad_() for t in [x, h0] + ([c0] if c0 is not None else [])]
    ws = [tuple(None if w is None else w.detach().clone().requires_grad_() for w in wd) for wd in weights]
    x, h0 = leaves[0], leaves[1]
    c0 = leaves[2] if c0 is not None else None
    out, hn, cn = fn(cell, x, batch_sizes, h0, c0, ws)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + \
        (hn * torch.randn(hn.shape, generator=g, dtype=hn.dtype)).sum()
    if cn is not None:
        loss = loss + (cn * torch.randn(cn.shape, generator=g, dtype=cn.dtype)).sum()
    loss.backward()
    named = {"out": out, "hn": hn, "cn": cn, "dx": x.grad, "dh0": h0.grad,
             "dc0": None if c0 is None else c0.grad}
    for d, wd in enumerate(ws):
        for name, w in zip(("w_ih", "w_hh", "b_ih", "b_hh", "w_hr"), wd):
            if w is not None:
                named[f"d{name}[{d}]"] = w.grad
    return named


CASES = [
    # cell, D, I, H, proj, batch_sizes, B, bias
    ("lstm", 1, 5, 37, 0, None, 3, True),
    ("lstm", 2, 5, 37, 0, [5, 5, 3, 2, 2, 1], 5, True),
    ("lstm", 2, 6, 9, 4, [5, 5, 3, 2, 2, 1], 5, True),
    ("lstm", 1, 6, 9, 4, None, 2, False),
    ("gru", 1, 5, 37, 0, [5, 5, 3, 2, 2, 1], 5, True),
    ("gru", 2, 7, 8, 0, None, 3, False),
    ("gru", 2, 7, 8, 0, [4, 2, 1], 4, True),
    ("rnn_tanh", 2, 3, 37, 0, [5, 5, 3, 2, 2, 1], 5, True),
    ("rnn_tanh", 1, 3, 6, 0, None, 1, False),
    ("rnn_relu", 2, 4, 11, 0, None, 2, True),
    ("rnn_relu", 1, 4, 11, 0, [3, 3, 1], 3, False),
    ("lstm", 2, 4, 6, 0, [1], 1, True),         # T=1, B=1
    ("gru", 1, 4, 6, 0, None, 1, True),          # B=1
]


def _id(c):
    cell, D, I, H, proj, sizes, B, bias = c
    return (f"{cell}-D{D}-I{I}-H{H}" + (f"-P{proj}" if proj else "") + ("-packed" if sizes else f"-B{B}")
            + ("" if bias else "-nobias"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_op_matches_reference(case, dtype):
    cell, D, I, H, proj, sizes, B, bias = case
    args = _case(cell, D, I, H, proj, sizes, B, bias, dtype)
    got = _run(numba_layer, cell, *args)
    want = _run(reference.rnn_layer, cell, *args)
    assert got.keys() == want.keys()
    for k in want:
        if want[k] is None:
            assert got[k] is None, k
        else:
            assert_close(got[k], want[k], k, **TOL[dtype])


@pytest.mark.parametrize("cell", list(CELLS))
def test_no_grad_path_matches_grad_path(cell):
    """Inference skips saving activations; results must not change."""
    args = _case(cell, 2, 5, 7, 0, [4, 3, 3, 1], 4, True, torch.float64)
    with torch.no_grad():
        a = numba_layer(cell, *args)
    b = _run(numba_layer, cell, *args)
    assert_close(a[0], b["out"], "out", rtol=0, atol=0)
    assert_close(a[1], b["hn"], "hn", rtol=0, atol=0)


def test_gradcheck_tiny_packed_bidirectional_proj():
    x, bs, h0, c0, ws = _case("lstm", 2, 3, 4, 2, [3, 2, 2, 1], 3, True, torch.float64)
    flat = [w for wd in ws for w in wd]
    leaves = [t.requires_grad_() for t in [x, h0, c0] + flat]

    def fn(x, h0, c0, *f):
        out, hn, cn = numba_layer("lstm", x, bs, h0, c0, [tuple(f[:5]), tuple(f[5:])])
        return out, hn, cn

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7)


def test_double_backward_matches_reference():
    x, bs, h0, c0, ws = _case("gru", 1, 3, 4, 0, None, 2, True, torch.float64)
    res = []
    for layer in (reference.rnn_layer, numba_layer):
        xx = x.detach().clone().requires_grad_()
        w = [tuple(None if t is None else t.detach().clone().requires_grad_() for t in wd) for wd in ws]
        out, _, _ = layer("gru", xx, bs, h0, c0, w)
        (g,) = torch.autograd.grad((out ** 2).sum(), xx, create_graph=True)
        res.append(torch.autograd.grad(g.pow(2).sum(), [xx, *[t for t in w[0] if t is not None]]))
    for got, want in zip(res[1], res[0]):
        assert_close(got, want, "second-order gradient", rtol=1e-6, atol=1e-8)


def test_non_contiguous_inputs():
    x, bs, h0, c0, ws = _case("lstm", 1, 5, 6, 0, None, 3, True, torch.float64)
    xt = x.t().contiguous().t()          # same values, column-major
    wt = tuple(w if w is None else w.t().contiguous().t() for w in ws[0])
    h0t = h0.transpose(1, 2).contiguous().transpose(1, 2)
    a = numba_layer("lstm", x, bs, h0, c0, ws)
    b = numba_layer("lstm", xt, bs, h0t, c0, [wt])
    for u, v in zip(a, b):
        assert_close(v, u, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- validation

def _lstm_args(dtype=torch.float32):
    return list(_case("lstm", 1, 3, 4, 0, [3, 2, 1], 3, True, dtype))


@pytest.mark.parametrize("mutate,err,match", [
    (lambda a: a.__setitem__(2, a[2].double()), RuntimeError, "dtype"),
    (lambda a: a.__setitem__(1, torch.tensor([3, 2, 2])), ValueError, "sum"),
    (lambda a: a.__setitem__(1, torch.tensor([2, 3, 1])), ValueError, "non-increasing|start at"),
    (lambda a: a.__setitem__(1, torch.tensor([4, 1, 1])), ValueError, "batch"),
    (lambda a: a.__setitem__(0, a[0][:, :2]), ValueError, "weight_ih|input_size"),
    (lambda a: a.__setitem__(4, [a[4][0], a[4][0]]), ValueError, "weight tuples|direction"),
], ids=["h0-dtype", "sizes-sum", "sizes-increasing", "sizes-exceed-batch",
        "input-size", "directions"])
def test_validation_before_njit(mutate, err, match):
    args = _lstm_args()
    mutate(args)
    with pytest.raises(err, match=match):
        numba_layer("lstm", *args)


def test_unknown_cell():
    with pytest.raises(ValueError, match="Unknown cell"):
        numba_layer("lstm2", *_lstm_args())


def test_half_types_run_in_float32():
    x, bs, h0, c0, ws = _case("lstm", 1, 3, 4, 0, None, 2, True, torch.float32)
    h = lambda t: None if t is None else t.bfloat16()  # noqa: E731
    out, hn, cn = numba_layer("lstm", h(x), bs, h(h0), h(c0), [tuple(h(w) for w in ws[0])])
    assert out.dtype == hn.dtype == cn.dtype == torch.bfloat16
    ref = reference.rnn_layer("lstm", h(x), bs, h(h0), h(c0), [tuple(h(w) for w in ws[0])])
    assert (out.float() - ref[0].float()).abs().max() < 2e-2


# ---------------------------------------------------------------- compile cache

_CACHE_PROBE = textwrap.dedent("""
    import json, torch
    from fastrnn.backends import get
    from fastrnn import ops
    b = get("numba"); b.impl
    from fastrnn.kernels.numba import rnn as K
    x = torch.randn(6, 3, requires_grad=True)
    out, hn, cn = ops.rnn_layer("gru", "numba", x, None, torch.zeros(1, 2, 4), None,
                                   [(torch.randn(12, 3), torch.randn(12, 4), None, None, None)])
    out.sum().backward()
    stats = {f: [sum(getattr(K, f).stats.cache_hits.values()), sum(getattr(K, f).stats.cache_misses.values())]
             for f in ("rnn_fwd", "rnn_bwd")}
    print(json.dumps(stats))
""")


def test_kernels_compile_once_and_load_from_the_disk_cache(tmp_path):
    """cache=True: a second process loads the compiled loops instead of compiling them."""
    import json

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert all(miss >= 1 for _, miss in first.values()), first     # compiled cold
    assert all(hit >= 1 and miss == 0 for hit, miss in second.values()), second  # loaded from disk
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*")), "no numba index files written"
