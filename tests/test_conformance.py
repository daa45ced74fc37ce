"""The conformance suite: every backend against torch.nn, outputs and all gradients.

Written once; every backend `available_backends("cpu")` lists runs through it.
Ids read like `LSTM-L2-bi-proj-T5-B3-f64-cpp`.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from conftest import CPU_BACKENDS, TOL, assert_close

TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
FAST = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN, "RNN_RELU": fastrnn.RNN}


def _variant(name, **kw):
    base = dict(T=5, B=3, I=4, H=6, layers=1, bi=False, batch_first=False, bias=True, proj=0,
                packed=None, unbatched=False, hx=True)
    base.update(kw)
    return pytest.param(base, id=name)


VARIANTS = [
    _variant("L1"),
    _variant("L2-bi", layers=2, bi=True),
    _variant("batch_first", batch_first=True, B=2),
    _variant("nobias-L2", bias=False, layers=2),
    _variant("hxNone-bi", hx=False, bi=True),
    _variant("T1-B1", T=1, B=1),
    _variant("T63-H37-I5", T=63, B=2, I=5, H=37),
    _variant("packed-sorted-L2-bi", packed="sorted", layers=2, bi=True, B=4),
    _variant("packed-unsorted-bi-bf", packed="unsorted", bi=True, B=4, batch_first=True),
    _variant("unbatched-bi", unbatched=True, bi=True),
    _variant("unbatched-hxNone", unbatched=True, hx=False),
    _variant("proj-L2-bi", proj=3, layers=2, bi=True),
    _variant("proj-packed", proj=2, packed="unsorted", B=4),
]


def _make_pair(mode, v, dtype, backend):
    kw = dict(num_layers=v["layers"], bias=v["bias"], batch_first=v["batch_first"],
              bidirectional=v["bi"], dtype=dtype)
    if v["proj"]:
        kw["proj_size"] = v["proj"]
    if mode.startswith("RNN"):
        kw["nonlinearity"] = mode[4:].lower()
    ref = TORCH[mode](v["I"], v["H"], **kw)
    fast = FAST[mode](v["I"], v["H"], backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _inputs(mode, v, dtype):
    T, B, I = v["T"], v["B"], v["I"]
    D = 2 if v["bi"] else 1
    hout = v["proj"] or v["H"]
    shape = (B, T, I) if v["batch_first"] else (T, B, I)
    x = torch.randn(shape, dtype=dtype)
    if v["unbatched"]:
        x = x[0] if v["batch_first"] else x[:, 0]
    hb = () if v["unbatched"] else (B,)
    hx = None
    if v["hx"]:
        h0 = torch.randn(v["layers"] * D, *hb, hout, dtype=dtype)
        hx = (h0, torch.randn(v["layers"] * D, *hb, v["H"], dtype=dtype)) if mode == "LSTM" else h0
    return x, hx


def _lengths(v):
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, v["T"] + 1, (v["B"],), generator=g)
    lengths[0] = v["T"]
    if v["packed"] == "sorted":
        lengths = lengths.sort(descending=True).values
    return lengths


def _run(module, x, hx, v):
    """Forward, then collect every tensor whose value or gradient we compare."""
    x = x.clone().requires_grad_()
    hx_in = None
    if hx is not None:
        hx_in = tuple(h.clone().requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
    inp = x
    if v["packed"]:
        inp = pack_padded_sequence(x, _lengths(v), batch_first=v["batch_first"],
                                   enforce_sorted=v["packed"] == "sorted")
    out, h = module(inp, hx_in)
    if v["packed"]:
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        out = pad_packed_sequence(out, batch_first=v["batch_first"])[0]
    states = list(h) if isinstance(h, tuple) else [h]
    g = torch.Generator().manual_seed(99)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in [out] + states)
    loss.backward()
    hx_list = [] if hx_in is None else (list(hx_in) if isinstance(hx_in, tuple) else [hx_in])
    grads = {"x": x.grad, **{f"hx{i}": t.grad for i, t in enumerate(hx_list)},
             **{n: p.grad for n, p in module.named_parameters()}}
    return out, states, grads


# proj_size exists for LSTM only
MODE_VARIANTS = [pytest.param(m, v.values[0], id=f"{m}-{v.id}") for m in TORCH for v in VARIANTS
                 if m == "LSTM" or not v.values[0]["proj"]]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode,v", MODE_VARIANTS)
def test_matches_torch(mode, v, dtype, backend):
    torch.manual_seed(0)
    ref, fast = _make_pair(mode, v, dtype, backend)
    fast.train(False)
    ref.train(False)
    x, hx = _inputs(mode, v, dtype)
    out_r, states_r, grads_r = _run(ref, x, hx, v)
    out_f, states_f, grads_f = _run(fast, x, hx, v)
    tol = TOL[dtype]
    assert_close(out_f, out_r, "output", **tol)
    for i, (a, b) in enumerate(zip(states_f, states_r)):
        assert_close(a, b, f"state[{i}]", **tol)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        assert grads_f[name] is not None, f"no gradient for {name}"
        assert_close(grads_f[name], grads_r[name], f"grad {name}", **tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", list(TORCH))
def test_dropout_matches_torch_under_seed(mode, backend):
    """Inter-layer dropout draws the same masks as torch's own RNN (same seed, same result)."""
    kw = dict(num_layers=3, dropout=0.5, dtype=torch.float64)
    if mode.startswith("RNN"):
        kw["nonlinearity"] = mode[4:].lower()
    ref = TORCH[mode](4, 6, **kw)
    fast = FAST[mode](4, 6, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(5)
    out_r = ref(x)[0]
    torch.manual_seed(5)
    out_f = fast(x)[0]
    assert_close(out_f, out_r, "output with dropout", **TOL[torch.float64])
    torch.manual_seed(6)
    assert not torch.allclose(fast(x)[0], out_f), "dropout had no effect in training mode"
    fast.eval()
    ref.eval()
    assert_close(fast(x)[0], ref(x)[0], "eval output", **TOL[torch.float64])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("mode", list(TORCH))
def test_half_precision_error_within_2x_torch(mode, dtype, backend):
    """Low precision: error vs a float64 reference at most 2x torch's own error."""
    if dtype not in fastrnn.backends.get(backend).dtypes:
        pytest.skip(f"{backend} does not support {dtype}")
    kw = dict(num_layers=2, bidirectional=True)
    if mode.startswith("RNN"):
        kw["nonlinearity"] = mode[4:].lower()
    ref64 = TORCH[mode](16, 32, dtype=torch.float64, **kw)
    ref_lo = TORCH[mode](16, 32, dtype=dtype, **kw)
    fast = FAST[mode](16, 32, dtype=dtype, backend=backend, **kw)
    ref_lo.load_state_dict(ref64.state_dict())
    fast.load_state_dict(ref64.state_dict())
    x = torch.randn(20, 4, 16, dtype=torch.float64)
    truth = ref64(x)[0]
    with torch.no_grad():
        try:
            torch_out = ref_lo(x.to(dtype))[0]
        except RuntimeError as e:
            pytest.skip(f"torch has no CPU {dtype} {mode}: {e}")
        ours = fast(x.to(dtype))[0]
    assert ours.dtype == dtype
    err_torch = (torch_out.double() - truth).norm() / truth.norm()
    err_ours = (ours.double() - truth).norm() / truth.norm()
    assert err_ours <= 2 * err_torch, f"rel err {err_ours:.3e} > 2 x torch's {err_torch:.3e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_cpu_runs_in_autocast_dtype(backend):
    """Under CPU autocast the RNN computes in the autocast dtype, as torch's does."""
    ref = nn.LSTM(8, 16)
    fast = fastrnn.LSTM(8, 16, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, (h_f, c_f) = fast(x)
        try:
            out_r = ref(x)[0]
        except RuntimeError:  # oneDNN has no bf16 LSTM primitive on CPUs without AVX512-BF16
            out_r = None
    if out_r is None:
        with torch.no_grad():
            out_r = ref.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    assert out_f.dtype == out_r.dtype == torch.bfloat16
    assert (out_f.float() - out_r.float()).abs().max() < 5e-2


def rel_err(got, truth) -> float:
    return ((got.double() - truth).norm() / truth.norm()).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_error_within_twice_torchs(name, backend):
    """Under CPU autocast torch computes every RNN module's products in bf16, also where it returns
    float32 (GRU, LSTMCell, GRUCell): ours, in the dtype torch returns, is within 2x torch's own
    error against float64, forward and input gradient."""
    torch.manual_seed(0)
    ref = getattr(nn, name)(24, 40)
    fast = getattr(fastrnn, name)(24, 40, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn((12, 3, 24) if "Cell" not in name else (3, 24))
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    xd = x.double().requires_grad_()
    truth = first(copy.deepcopy(ref).double()(xd))
    g_truth, = torch.autograd.grad(truth.sum(), xd)
    errs = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = first(module(xi))
        except RuntimeError:  # oneDNN has no bf16 LSTM primitive on this CPU
            pytest.skip("torch has no bf16 LSTM on this CPU")
        g, = torch.autograd.grad(out.float().sum(), xi)
        errs.append((out.dtype, rel_err(out, truth), rel_err(g, g_truth)))
    (want_dtype, out_torch, g_torch), (got_dtype, out_ours, g_ours) = errs
    assert got_dtype == want_dtype
    assert out_ours <= 2 * out_torch, f"output rel err {out_ours:.2e} > 2 x torch's {out_torch:.2e}"
    assert g_ours <= 2 * g_torch, f"input gradient rel err {g_ours:.2e} > 2 x torch's {g_torch:.2e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_output_dtype_follows_torch_per_module(name, dtype, backend):
    """torch's CPU autocast casts some RNN modules and not others, and never float64."""
    ref = getattr(nn, name)(4, 5, dtype=dtype)
    fast = getattr(fastrnn, name)(4, 5, dtype=dtype, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn((3, 2, 4) if "Cell" not in name else (2, 4), dtype=dtype)
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = first(fast(x)).dtype
        try:
            want = first(ref(x)).dtype
        except RuntimeError:  # oneDNN has no bf16 LSTM primitive on this CPU; torch meant bf16
            want = torch.bfloat16
    assert got == want
