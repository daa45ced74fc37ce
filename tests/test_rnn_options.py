"""fastrnn.LSTM/GRU/RNN's own options beyond torch.nn: zoneout= and weight_dropout=. At their
defaults (0) the modules are torch.nn's exactly; otherwise reproducible under a seed and equal to
a plain loop written from the definitions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
from conftest import assert_close

F64 = dict(rtol=1e-9, atol=1e-10)


def _pair(mode, **kw):
    torch.manual_seed(0)
    ref = getattr(nn, mode)(4, 6, dtype=torch.float64)
    fast = getattr(fastrnn, mode)(4, 6, dtype=torch.float64, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _zoneout_eval_loop(ref, x, p):
    """One layer from nn.LSTMCell/GRUCell/RNNCell with the zoneout paper's eval rule:
    state = p * old + (1 - p) * new, for h (and c)."""
    lstm = isinstance(ref, nn.LSTM)
    cell_cls = {nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell, nn.RNN: nn.RNNCell}[type(ref)]
    cell = cell_cls(4, 6, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})
    h = torch.zeros(x.size(1), 6, dtype=torch.float64)
    c = torch.zeros_like(h)
    outs = []
    for xt in x:
        if lstm:
            hn, cn = cell(xt, (h, c))
            h, c = p * h + (1 - p) * hn, p * c + (1 - p) * cn
        else:
            h = p * h + (1 - p) * cell(xt, h)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_zoneout_eval_is_the_deterministic_mix(mode):
    ref, fast = _pair(mode, zoneout=0.3)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    fast.eval()
    with torch.no_grad():
        assert_close(fast(x)[0], _zoneout_eval_loop(ref, x, 0.3), "zoneout eval", **F64)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_zoneout_training_is_reproducible_and_random(mode):
    _, fast = _pair(mode, zoneout=0.5, num_layers=1)
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(fast(x)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    outs[0].sum().backward()
    assert fast.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_weight_dropout_is_dropconnect_on_w_hh(mode):
    ref, fast = _pair(mode, weight_dropout=0.4)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    got = fast(x)[0]
    torch.manual_seed(7)
    dropped = F.dropout(ref.weight_hh_l0, 0.4, True)  # the one draw per layer and direction
    with torch.no_grad():
        ref.weight_hh_l0.copy_(dropped)
    assert_close(got, ref(x)[0], "weight dropout in training", **F64)
    fast.eval()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert_close(fast(x)[0], ref(x)[0], "eval: the full weights", **F64)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_defaults_are_torch(mode):
    ref, fast = _pair(mode, num_layers=1)
    assert fast.zoneout == 0 and fast.weight_dropout == 0 and repr(fast) == repr(ref)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    assert_close(fast(x)[0], ref(x)[0], "defaults", **F64)


def test_bad_values_and_exports_refused():
    with pytest.raises(ValueError, match="zoneout should be a number in range"):
        fastrnn.LSTM(4, 6, zoneout=1.5)
    with pytest.raises(ValueError, match="weight_dropout should be a number in range"):
        fastrnn.GRU(4, 6, weight_dropout=-0.1)
    m = fastrnn.LSTM(4, 6, zoneout=0.2).eval()
    with pytest.raises(NotImplementedError, match="cannot be exported"):
        torch.jit.trace(m, (torch.randn(3, 2, 4),))
