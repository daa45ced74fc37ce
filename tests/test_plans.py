"""A module's remembered plan (fastrnn/plans.py): a repeated call gives what its first, checked
call gave, and a call the plan no longer fits (a weight replaced since) still gets torch's error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import dispatch, modules, plans
from conftest import CPU_BACKENDS, assert_close
from test_errors import assert_same_error

BACKENDS = ["auto", *CPU_BACKENDS]
MODULES = {
    "LSTM": dict(num_layers=2, dropout=0.25), "GRU": dict(bidirectional=True), "RNN": dict(batch_first=True),
    "LSTM-proj": dict(proj_size=3), "LSTMCell": {}, "GRUCell": {}, "RNNCell": dict(nonlinearity="relu"),
}


def _pair(name, backend, dtype=torch.float64):
    cls, kw = name.split("-")[0], MODULES[name]
    ref = getattr(nn, cls)(5, 6, **kw).to(dtype)
    ours = getattr(fastrnn, cls)(5, 6, backend=backend, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _calls(name, dtype):
    """(input, hx) pairs: batched and unbatched, hx given and not."""
    cell = name.endswith("Cell")
    x3 = torch.randn(*((4, 7, 5) if name == "RNN" else (7, 4, 5)), dtype=dtype)
    x2 = torch.randn(4, 5, dtype=dtype) if cell else x3[:, 0] if name == "RNN" else x3[:, 0]
    rows = (2 if name == "GRU" else 1) * (2 if name == "LSTM" else 1)
    hout = 3 if name == "LSTM-proj" else 6
    if cell:
        h = torch.randn(4, 6, dtype=dtype)
        hx = (h, torch.randn(4, 6, dtype=dtype)) if name == "LSTMCell" else h
        return [(x2, None), (x2, hx), (x2[0], None)]
    h = torch.randn(rows, 4, hout, dtype=dtype)
    hx = (h, torch.randn(rows, 4, 6, dtype=dtype)) if name.startswith("LSTM") else h
    return [(x3, None), (x3, hx), (x2, None)]


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODULES))
def test_repeated_calls_match_torch(name, backend):
    ref, ours = _pair(name, backend)
    ref.train(), ours.train()
    for x, hx in _calls(name, torch.float64):
        for _ in range(3):  # the first call is checked; the next ones run the remembered plan
            torch.manual_seed(1)
            expected = ref(x, hx)
            torch.manual_seed(1)
            got = ours(x, hx)
            for a, e in zip(_flat(got), _flat(expected)):
                assert_close(a, e, name, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "LSTMCell", "RNNCell"])
def test_repeated_calls_with_gradients(name):
    ref, ours = _pair(name, "auto")
    x, hx = _calls(name, torch.float64)[1]
    for _ in range(2):
        for m in (ref, ours):
            m.zero_grad()
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(2)  # the LSTM's dropout draws
        sum(o.sum() for o in _flat(ref(xr, hx))).backward()
        torch.manual_seed(2)
        sum(o.sum() for o in _flat(ours(xo, hx))).backward()
        assert_close(xo.grad, xr.grad, "dx", rtol=1e-9, atol=1e-10)
        for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
            assert_close(p.grad, q.grad, n, rtol=1e-9, atol=1e-10)


# weights changed after a planned call, in ways that keep the Parameter object (so the plan's
# facts still match): the next call must raise torch's error, not compute
CHANGES = {
    "dtype": lambda m: setattr(m.weight_hh_l0 if hasattr(m, "weight_hh_l0") else m.weight_hh, "data",
                               (m.weight_hh_l0 if hasattr(m, "weight_hh_l0") else m.weight_hh).data.double()),
    "shape": lambda m: setattr(m.weight_ih_l0 if hasattr(m, "weight_ih_l0") else m.weight_ih, "data",
                               torch.randn(m.weight_ih_l0.size(0) if hasattr(m, "weight_ih_l0")
                                           else m.weight_ih.size(0), 4)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_changed_weights_raise_torchs_error(name, change, backend):
    ref, ours = _pair(name, backend, torch.float32)
    x, hx = _calls(name, torch.float32)[0]
    ours(x, hx)
    ours(x, hx)
    for m in (ref, ours):
        CHANGES[change](m)
    try:
        ref(x, hx)
    except Exception:  # noqa: BLE001
        assert_same_error(lambda: ref(x, hx), lambda: ours(x, hx))
    else:  # torch's oneDNN LSTM reads a wrongly shaped weight without a check: ours still refuses
        with pytest.raises(RuntimeError, match="weight|w_ih|w_hh"):
            ours(x, hx)


def test_half_type_weights_changed_raise():
    """bf16 inputs are cast for the kernels, which would hide float32 weights: the weights'
    dtypes are part of the facts, so the changed call is checked again."""
    ref, ours = _pair("GRU", "auto", torch.bfloat16)
    x = torch.randn(3, 2, 5, dtype=torch.bfloat16)
    ours(x)
    ours(x)
    for m in (ref, ours):
        m.weight_hh_l0.data = m.weight_hh_l0.data.float()
    assert_same_error(lambda: ref(x), lambda: ours(x))


def test_plans_are_forgotten_with_the_picks():
    m = fastrnn.GRU(5, 6)
    x = torch.randn(1, 1, 5)
    m(x)
    facts = plans.facts(m, x, None, list(m.parameters()))
    assert plans.lookup(m, facts) is not None
    dispatch.clear()
    assert plans.lookup(m, facts) is None


def test_plans_per_module_are_bounded():
    m = fastrnn.RNN(3, 4)
    with torch.no_grad():
        for T in range(1, 3 * plans.MAX_PLANS):
            m(torch.randn(T, 1, 3))
    assert len(plans._plans(m)) <= plans.MAX_PLANS


def test_no_plan_under_autocast_or_for_packed_input():
    m = fastrnn.LSTM(5, 6)
    x = torch.randn(3, 2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plans.facts(m, x, None, list(m.parameters())) is None
    packed = nn.utils.rnn.pack_padded_sequence(x, [3, 2])
    assert plans.facts(m, packed, None, list(m.parameters())) is None


def test_plans_stay_out_of_copies_and_checkpoints(tmp_path):
    import copy
    import pickle
    for m, x in ((fastrnn.LSTM(4, 5), torch.randn(2, 3, 4)), (fastrnn.GRUCell(4, 5), torch.randn(3, 4))):
        with torch.no_grad():
            expected = m(x)
            m(x)
        assert plans.ATTR in m.__dict__
        torch.save(m, tmp_path / "m.pt")
        copies = [copy.deepcopy(m), pickle.loads(pickle.dumps(m)), torch.load(tmp_path / "m.pt", weights_only=True),
                  modules._torch_twin(m)]  # what torch.jit.script compiles in our place
        for c in copies:
            assert plans.ATTR not in c.__dict__
            with torch.no_grad():
                for a, e in zip(_flat(c(x)), _flat(expected)):
                    torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_empty_batches(backend):
    """B = 0 through the remembered plan too: empty outputs shaped as torch's."""
    for name in ("LSTM", "GRU", "RNN", "GRUCell"):
        ref = getattr(nn, name)(4, 5)
        ours = getattr(fastrnn, name)(4, 5, backend=backend)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(0, 4) if name.endswith("Cell") else torch.randn(3, 0, 4)
        with torch.no_grad():
            for _ in range(3):
                for a, e in zip(_flat(ours(x)), _flat(ref(x))):
                    assert a.shape == e.shape


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_autocast_call_auto_hands_to_torch_runs_torchs_forward(cls, monkeypatch):
    """Under autocast, auto decides in the module's compute dtype (bf16 on CPU) and, where torch
    wins, hands the call to torch's own forward whole: torch's autocast then casts the weights
    (in C++, not ours in Python) and returns what torch.nn returns."""
    from fastrnn import functional
    seen = []

    def torch_runs(cell, device, dtype, **kw):
        seen.append(dtype)
        return True
    monkeypatch.setattr(functional, "torch_may_run", lambda *a: True)
    monkeypatch.setattr(functional, "torch_runs", torch_runs)
    torch.manual_seed(0)
    ref = getattr(nn, cls)(8, 16, num_layers=2)
    m = getattr(fastrnn, cls)(8, 16, num_layers=2)
    m.load_state_dict(ref.state_dict())
    calls = []
    forward = modules._Front._torch_forward
    monkeypatch.setattr(modules._Front, "_torch_forward", lambda self, *a: calls.append(1) or forward(self, *a))
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = m(x), ref(x)
    assert seen == [torch.bfloat16] and calls == [1]
    for g, w in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert g.dtype == w.dtype and torch.equal(g, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64: autocast leaves it, the checked path runs
        m.double()(x.double())
    assert calls == [1]
