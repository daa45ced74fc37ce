"""Checkpoints: a whole model holding fastrnn modules saved with torch.save loads with torch.load at
its defaults (weights_only=True) wherever the same model with torch.nn's classes loads, and state
dicts move both ways between torch.nn and fastrnn."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import fastrnn
from conftest import assert_close
from tool_models import KINDS, Model, example, pair


@pytest.mark.parametrize("kind", list(KINDS))
def test_whole_model_loads_under_weights_only(kind):
    ref, fast = pair(kind, "cpp")
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    # what published training scripts allow for torch.nn's models
    with torch.serialization.safe_globals([Model, nn.Linear, nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell,
                                           nn.RNNCell]):
        loaded = torch.load(buf)  # weights_only=True: torch's default
    assert type(loaded.rnn) is type(fast.rnn) and loaded.rnn.backend == "cpp"
    x = example(kind)
    with torch.no_grad():
        assert_close(loaded(x), ref(x), kind, rtol=1e-5, atol=1e-6)


def test_torch_checkpoint_loads_into_fastrnn_and_back():
    ref, _ = pair("LSTM-proj")
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    fast = Model(fastrnn.LSTM(8, 16, proj_size=6), 6)
    fast.load_state_dict(torch.load(buf))
    back = Model(nn.LSTM(8, 16, proj_size=6), 6)
    back.load_state_dict(fast.state_dict())
    x = example("LSTM-proj")
    with torch.no_grad():
        assert_close(fast(x), ref(x), "fastrnn from torch", rtol=1e-5, atol=1e-6)
        assert torch.equal(back(x), ref(x))
