"""Drop-in module contract: parameters, init, state_dict both ways, repr, copies, convert."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fastrnn
from conftest import assert_close

CONFIGS = {
    "LSTM-proj-bi-L2": (nn.LSTM, fastrnn.LSTM, (5, 8), dict(num_layers=2, bidirectional=True, proj_size=3)),
    "GRU-nobias-bf": (nn.GRU, fastrnn.GRU, (5, 8), dict(bias=False, batch_first=True)),
    "RNN-relu-drop": (nn.RNN, fastrnn.RNN, (5, 8), dict(num_layers=2, nonlinearity="relu", dropout=0.1)),
    "RNN-positional": (nn.RNN, fastrnn.RNN, (5, 8, 2, "relu", False), {}),
    "LSTMCell": (nn.LSTMCell, fastrnn.LSTMCell, (5, 8), {}),
    "GRUCell": (nn.GRUCell, fastrnn.GRUCell, (5, 8), dict(bias=False)),
    "RNNCell": (nn.RNNCell, fastrnn.RNNCell, (5, 8), dict(nonlinearity="relu")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_init_attributes_and_repr(name):
    tcls, fcls, args, kw = CONFIGS[name]
    torch.manual_seed(3)
    ref = tcls(*args, **kw)
    torch.manual_seed(3)
    fast = fcls(*args, **kw)
    assert isinstance(fast, tcls)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    for (n, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), f"init differs for {n}"
    for attr in ("input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode", "nonlinearity"):
        assert getattr(fast, attr, None) == getattr(ref, attr, None), attr
    assert repr(fast) == repr(ref)
    if isinstance(ref, nn.RNNBase):
        assert [[p.shape for p in ws] for ws in fast.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]
        fast.flatten_parameters()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_loads_both_ways_strict(name):
    tcls, fcls, args, kw = CONFIGS[name]
    ref, fast = tcls(*args, **kw), fcls(*args, **kw)
    fast.load_state_dict(ref.state_dict(), strict=True)
    for (n, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    ref2 = tcls(*args, **kw)
    ref2.load_state_dict(fast.state_dict(), strict=True)
    assert list(ref2.state_dict()) == list(fast.state_dict())


def _outputs(m, args):
    x = torch.randn(4, 2, args[0]) if isinstance(m, nn.RNNBase) else torch.randn(2, args[0])
    m.eval()
    out = m(x)
    return out[0] if isinstance(out, tuple) else out, x


@pytest.mark.parametrize("name", list(CONFIGS))
def test_deepcopy_pickle_and_torch_save(name):
    _, fcls, args, kw = CONFIGS[name]
    fast = fcls(*args, backend="reference", **kw)
    out, x = _outputs(fast, args)
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    copies = [copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), torch.load(buf, weights_only=False)]
    for c in copies:
        assert type(c) is fcls and c.backend == "reference"
        o = c(x)
        assert_close(o[0] if isinstance(o, tuple) else o, out, "copy output")


def test_repr_names_a_non_default_backend():
    assert repr(fastrnn.GRU(3, 4, backend="reference")) == "GRU(3, 4, backend='reference')"


def test_to_dtype_and_functional_call():
    m = fastrnn.LSTM(3, 4, backend="reference").double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out = m(x)[0]
    assert out.dtype == torch.float64
    params = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    out0 = torch.func.functional_call(m, params, (x,))[0]
    assert torch.count_nonzero(out0) == 0, "functional_call's parameters were ignored"


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.body = nn.Sequential(nn.Linear(6, 6))
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.cells = nn.ModuleList([nn.GRUCell(8, 8), nn.RNNCell(8, 8)])
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        out, _ = self.lstm(self.body(self.emb(tokens)))
        h = out[:, -1]
        h = self.cells[0](h)
        return self.head(self.cells[1](h, h))


def test_convert_replaces_in_place_keeping_weights_and_optimizer():
    torch.manual_seed(0)
    model = _Model().double()
    tokens = torch.randint(0, 10, (3, 7))
    expected = model(tokens)
    params_before = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    same = fastrnn.convert(model)
    assert same is model
    assert type(model.lstm) is fastrnn.LSTM
    assert type(model.cells[0]) is fastrnn.GRUCell and type(model.cells[1]) is fastrnn.RNNCell
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    assert model.lstm.weight_ih_l0.dtype == torch.float64
    assert_close(model(tokens), expected, "converted output", rtol=1e-12, atol=1e-12)
    model(tokens).sum().backward()
    opt.step()  # the optimizer built before convert still steps the converted model's weights
    assert not torch.allclose(model(tokens), expected)


def test_convert_a_bare_module_and_leaves_fastrnn_modules_alone():
    lstm = nn.LSTM(3, 4)
    twin = fastrnn.convert(lstm, backend="reference")
    assert type(twin) is fastrnn.LSTM and twin.backend == "reference"
    assert twin.weight_hh_l0 is lstm.weight_hh_l0
    fast = fastrnn.GRU(3, 4)
    holder = nn.Sequential(fast)
    fastrnn.convert(holder)
    assert holder[0] is fast
