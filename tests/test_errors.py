"""Bad input raises the same exception type and message as torch.nn, on every backend."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import CPU_BACKENDS


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e), str(e)
    return None


def assert_same_error(torch_fn, fast_fn):
    expected = _raised(torch_fn)
    assert expected is not None, "torch accepted this input; the case is not an error case"
    got = _raised(fast_fn)
    assert got == expected, f"\n  torch:   {expected}\n  fastrnn: {got}"


CTOR_CASES = {
    "dropout>1": ("LSTM", (4, 6), dict(dropout=1.5)),
    "dropout-bool": ("GRU", (4, 6), dict(dropout=True)),
    "hidden0": ("LSTM", (4, 0), {}),
    "input0": ("GRU", (0, 4), {}),
    "layers0": ("RNN", (4, 6), dict(num_layers=0)),
    "hidden-float": ("LSTM", (4, 6.5), {}),
    "bias-str": ("LSTM", (4, 6), dict(bias="yes")),
    "proj>=hidden": ("LSTM", (4, 6), dict(proj_size=6)),
    "proj-negative": ("LSTM", (4, 6), dict(proj_size=-1)),
    "proj-on-GRU": ("GRU", (4, 6), dict(proj_size=2)),
    "bad-nonlinearity": ("RNN", (4, 6), dict(nonlinearity="sigmoid")),
    "too-many-positional": ("RNN", (4, 6, 1, "tanh", True, False, 0.0, False, 0, 7), {}),
}


@pytest.mark.parametrize("case", list(CTOR_CASES))
def test_constructor_errors(case):
    name, args, kw = CTOR_CASES[case]
    assert_same_error(lambda: getattr(nn, name)(*args, **kw), lambda: getattr(fastrnn, name)(*args, **kw))


def test_dropout_single_layer_warns_like_torch():
    with warnings.catch_warnings(record=True) as w_t:
        warnings.simplefilter("always")
        nn.LSTM(4, 6, dropout=0.3)
    with warnings.catch_warnings(record=True) as w_f:
        warnings.simplefilter("always")
        fastrnn.LSTM(4, 6, dropout=0.3)
    assert [str(w.message) for w in w_f] == [str(w.message) for w in w_t]
    assert len(w_t) == 1


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="Unknown fastrnn backend 'nope'"):
        fastrnn.LSTM(4, 6, backend="nope")


def _pair(mode, backend, **kw):
    tcls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[mode]
    ref = tcls(4, 6, **kw)
    fast = getattr(fastrnn, mode)(4, 6, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _hx(mode, *shape, dtype=torch.float32):
    h = torch.zeros(*shape, dtype=dtype)
    return (h, torch.zeros(*shape, dtype=dtype)) if mode == "LSTM" else h


FORWARD_CASES = {
    "input-4d": lambda m: (torch.randn(2, 3, 4, 1), None),
    "input-1d": lambda m: (torch.randn(4), None),
    "wrong-input-size": lambda m: (torch.randn(5, 3, 7), None),
    "wrong-hidden-batch": lambda m: (torch.randn(5, 3, 4), _hx(m, 1, 2, 6)),
    "wrong-hidden-size": lambda m: (torch.randn(5, 3, 4), _hx(m, 1, 3, 5)),
    "wrong-hidden-layers": lambda m: (torch.randn(5, 3, 4), _hx(m, 2, 3, 6)),
    "batched-input-2d-hidden": lambda m: (torch.randn(5, 3, 4), _hx(m, 3, 6)),
    "unbatched-input-3d-hidden": lambda m: (torch.randn(5, 4), _hx(m, 1, 1, 6)),
    "input-dtype-f64": lambda m: (torch.randn(5, 3, 4, dtype=torch.float64), None),
    "hidden-dtype-f64": lambda m: (torch.randn(5, 3, 4), _hx(m, 1, 3, 6, dtype=torch.float64)),
    "integer-input": lambda m: (torch.ones(5, 3, 4, dtype=torch.long), None),
    "hidden-on-meta": lambda m: (torch.randn(5, 3, 4), (torch.zeros(1, 3, 6, device="meta"),
                                                         torch.zeros(1, 3, 6, device="meta"))
                                 if m == "LSTM" else torch.zeros(1, 3, 6, device="meta")),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(FORWARD_CASES))
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_forward_errors(mode, case, backend):
    ref, fast = _pair(mode, backend)
    x, hx = FORWARD_CASES[case](mode)
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_packed_wrong_input_size(mode, backend):
    ref, fast = _pair(mode, backend)
    p = pack_padded_sequence(torch.randn(5, 3, 7), torch.tensor([5, 4, 2]))
    # torch's packed LSTM skips its Python check and fails inside a matmul; we give the
    # same exception type with torch's own clearer input_size wording.
    expected, got = _raised(lambda: ref(p)), _raised(lambda: fast(p))
    assert got[0] is expected[0]
    assert got[1] == "input.size(-1) must be equal to input_size. Expected 4, got 7"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_wrongly_shaped_parameter_after_construction(mode, backend):
    ref, fast = _pair(mode, backend)
    for m in (ref, fast):
        m.weight_hh_l0 = nn.Parameter(torch.randn(3, 3))
    x = torch.randn(5, 3, 4)
    if mode == "LSTM":  # torch's oneDNN LSTM path accepts this silently; we refuse it
        with pytest.raises(RuntimeError):
            fast(x)
        return
    assert_same_error(lambda: ref(x), lambda: fast(x))


CELL_CASES = {
    "input-3d": lambda c: (torch.randn(2, 3, 4), None),
    "wrong-input-size": lambda c: (torch.randn(3, 5), None),
    "hidden-batch": lambda c: (torch.randn(3, 4), _chx(c, 2, 6)),
    "hidden-size": lambda c: (torch.randn(3, 4), _chx(c, 3, 5)),
    "hidden-3d": lambda c: (torch.randn(3, 4), _chx(c, 1, 3, 6)),
    "input-dtype": lambda c: (torch.randn(3, 4, dtype=torch.float64), None),
    "hidden-dtype": lambda c: (torch.randn(3, 4), _chx(c, 3, 6, dtype=torch.float64)),
}


def _chx(cell, *shape, dtype=torch.float32):
    h = torch.zeros(*shape, dtype=dtype)
    return (h, torch.zeros(*shape, dtype=dtype)) if cell == "LSTMCell" else h


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CELL_CASES))
@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_errors(cell, case, backend):
    ref = getattr(nn, cell)(4, 6)
    fast = getattr(fastrnn, cell)(4, 6, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x, hx = CELL_CASES[case](cell)
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


def test_rnncell_bad_nonlinearity_after_construction():
    ref, fast = nn.RNNCell(4, 6), fastrnn.RNNCell(4, 6)
    ref.nonlinearity = fast.nonlinearity = "gelu"
    x = torch.randn(2, 4)
    assert_same_error(lambda: ref(x), lambda: fast(x))
