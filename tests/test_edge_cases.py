"""Edge cases on every backend: tiny and empty sizes, strides, aliasing, grad modes, NaN/inf, long T."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from conftest import CPU_BACKENDS, TOL, assert_close

F64 = TOL[torch.float64]


def _pair(mode, backend, *args, dtype=torch.float64, **kw):
    tcls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[mode]
    ref = tcls(*args, dtype=dtype, **kw)
    fast = getattr(fastrnn, mode)(*args, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _flat(out):
    o, h = out
    o = o.data if isinstance(o, nn.utils.rnn.PackedSequence) else o
    return [o] + (list(h) if isinstance(h, tuple) else [h])


def _same(ref, fast, *args, what=""):
    for i, (a, b) in enumerate(zip(_flat(fast(*args)), _flat(ref(*args)))):
        assert_close(a, b, f"{what}[{i}]", **F64)


MODES = ["LSTM", "GRU", "RNN"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_hidden_size_one_and_input_size_differs(mode, backend):
    ref, fast = _pair(mode, backend, 9, 1, num_layers=2, bidirectional=True)
    _same(ref, fast, torch.randn(4, 3, 9, dtype=torch.float64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_zero_batch(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6, bidirectional=True)
    x = torch.randn(5, 0, 4, dtype=torch.float64, requires_grad=True)
    _same(ref, fast, x)
    out = fast(x)[0]
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_zero_length_sequence_raises_like_torch(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6)
    x = torch.randn(0, 3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError) as e_t:
        ref(x)
    with pytest.raises(RuntimeError) as e_f:
        fast(x)
    assert str(e_f.value) == str(e_t.value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_packed_single_element_sequences(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6, bidirectional=True)
    seqs = [torch.randn(n, 4, dtype=torch.float64) for n in (3, 1, 1)]
    _same(ref, fast, pack_sequence(seqs, enforce_sorted=False))
    _same(ref, fast, pack_sequence([s[:1] for s in seqs]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs_and_hidden(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6, num_layers=2)
    base = torch.randn(3, 8, 10, dtype=torch.float64)
    x = base[:, ::2, 3:7].transpose(0, 1)  # [4, 3, 4], sliced and transposed
    assert not x.is_contiguous()
    h = torch.randn(3, 2, 6, dtype=torch.float64).transpose(0, 1)  # [2, 3, 6], strided
    hx = (h, torch.randn(6, 3, 2, dtype=torch.float64).permute(2, 1, 0)) if mode == "LSTM" else h
    _same(ref, fast, x, hx, what="strided")
    xe = torch.randn(1, 1, 4, dtype=torch.float64).expand(5, 3, 4)  # stride-0 expanded input
    _same(ref, fast, xe, what="expanded")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_input_aliasing_the_parameters(backend):
    """An input that is a view of a weight must be read, not clobbered."""
    ref, fast = _pair("GRU", backend, 6, 6)
    x = fast.weight_hh_l0[:6].detach().view(2, 3, 6)
    before = fast.weight_hh_l0.detach().clone()
    _same(ref, fast, x.clone(), what="alias")
    out_alias = fast(x)[0]
    assert torch.equal(fast.weight_hh_l0.detach(), before)
    assert_close(out_alias, ref(x.clone())[0], "aliased input", **F64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("which", ["input", "hx", "params", "none"])
def test_requires_grad_on_some_inputs_only(which, backend):
    ref, fast = _pair("LSTM", backend, 4, 6, bidirectional=True)
    grads = {}
    for name, m in (("ref", ref), ("fast", fast)):
        for p in m.parameters():
            p.requires_grad_(which == "params")
            p.grad = None
        x = torch.randn(5, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        h = torch.randn(2, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(which == "input")
        h.requires_grad_(which == "hx")
        out, _ = m(x, (h, h.clone()))
        if which == "none":
            assert not out.requires_grad
            continue
        out.sum().backward()
        grads[name] = [t.grad for t in (x, h)] + [p.grad for p in m.parameters()]
    for a, b in zip(grads.get("fast", []), grads.get("ref", [])):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, "grad", **F64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_no_grad_and_inference_mode(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    expected = _flat(ref(x))
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            got = _flat(fast(x))
        for a, b in zip(got, expected):
            assert not a.requires_grad
            assert_close(a, b, ctx.__name__, **F64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_propagate_like_torch(mode, backend):
    ref, fast = _pair(mode, backend, 4, 6, bidirectional=True)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    x[1, 0, 2] = float("nan")
    x[3, 1, 0] = float("inf")
    x[4, 2, 1] = -float("inf")
    _same(ref, fast, x, what="nan/inf")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_double_backward_works_or_raises_clearly(mode, backend):
    _, fast = _pair(mode, backend, 3, 4)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out = fast(x)[0]
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    try:
        g.sum().backward()
    except RuntimeError as e:
        assert "differentiable" in str(e) or "twice" in str(e) or "double backward" in str(e).lower(), str(e)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b not in ("reference", "torch")])
@pytest.mark.parametrize("mode", MODES)
def test_very_long_sequence(mode, backend):
    """T = 10,000 forward and backward: no recursion, stack or memory blow-up. Exact gradients
    are checked at T=63 by the conformance suite; torch's own float64 autograd over 10,000 steps
    takes minutes, so here the backward only has to run and stay finite."""
    ref, fast = _pair(mode, backend, 3, 5)
    x = torch.randn(10_000, 2, 3, dtype=torch.float64, requires_grad=True)
    out_f, _ = fast(x)
    with torch.no_grad():
        out_r, _ = ref(x)
    assert_close(out_f, out_r, "T=10000 output", **F64)
    (g,) = torch.autograd.grad(out_f[-100:].sum(), x)
    assert torch.isfinite(g).all() and g[-100:].abs().sum() > 0


@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_replaced_and_parametrized_weights_are_used(mode, backend):
    """The module reads its weights on every call as torch's forward does (a replaced Parameter,
    a parametrization's computed value, weight_norm's recomputed attribute), not a stale list."""
    import warnings
    from torch.nn.utils import parametrize
    ref, fast = _pair(mode, backend, 5, 7, num_layers=2)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    for m in (ref, fast):  # the same new tensor in both
        m.weight_hh_l1 = nn.Parameter(torch.linspace(-0.3, 0.3, m.weight_hh_l1.numel(),
                                                     dtype=torch.float64).view_as(m.weight_hh_l1))
    _same(ref, fast, x, what="replaced")

    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    for m in (ref, fast):
        parametrize.register_parametrization(m, "weight_ih_l0", Scale())
    _same(ref, fast, x, what="parametrized")
    with warnings.catch_warnings():  # weight_norm is deprecated in favour of the parametrization
        warnings.simplefilter("ignore")
        for m in (ref, fast):
            nn.utils.weight_norm(m, "weight_hh_l0")
    _same(ref, fast, x, what="weight_norm")
    for m in (ref, fast):
        with torch.no_grad():
            m.weight_hh_l0_g.mul_(2.0)  # weight_norm recomputes weight_hh_l0 before each forward
    _same(ref, fast, x, what="weight_norm, g changed")
