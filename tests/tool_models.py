"""Small models holding one RNN module each, built twice (torch.nn and fastrnn) with the same
weights: what the graph-tool tests (test_tool_*.py) run through torch.compile, the exporters,
torch.func, higher-order autograd, meta tensors and checkpoints."""
from __future__ import annotations

import torch
from torch import nn

import fastrnn

# kind -> (class name, constructor args, kwargs, step input: a cell)
KINDS = {
    "LSTM-L2": ("LSTM", (8, 16, 2), {}, False),
    "GRU-bi": ("GRU", (8, 16), dict(bidirectional=True), False),
    "RNN-relu": ("RNN", (8, 16), dict(nonlinearity="relu"), False),
    "LSTM-proj": ("LSTM", (8, 16), dict(proj_size=6), False),
    "LSTMCell": ("LSTMCell", (8, 16), {}, True),
    "GRUCell": ("GRUCell", (8, 16), {}, True),
    "RNNCell": ("RNNCell", (8, 16), dict(nonlinearity="relu"), True),
}
LAYER_KINDS = [k for k, v in KINDS.items() if not v[3]]


class Model(nn.Module):
    """rnn -> Linear head on its output (the sequence output, or a cell's new h)."""

    def __init__(self, rnn: nn.Module, out_features: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(out_features, 3)

    def forward(self, x):
        y = self.rnn(x)
        y = y[0] if isinstance(y, tuple) else y
        return self.head(y)


def _out_features(name, args, kw):
    h = kw.get("proj_size") or args[1]
    return h * (2 if kw.get("bidirectional") else 1)


def pair(kind: str, backend: str = "auto", dtype=torch.float32, seed: int = 0):
    """(torch.nn model, fastrnn model) with equal weights."""
    name, args, kw, _ = KINDS[kind]
    torch.manual_seed(seed)
    ref = Model(getattr(nn, name)(*args, **kw), _out_features(name, args, kw)).to(dtype)
    fast = Model(getattr(fastrnn, name)(*args, **kw, backend=backend), _out_features(name, args, kw)).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def example(kind: str, dtype=torch.float32, T: int = 5, B: int = 3, seed: int = 1):
    """An input for the kind: [T, B, 8] for layers, [B, 8] for cells."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, 8) if KINDS[kind][3] else (T, B, 8)
    return torch.randn(shape, generator=g, dtype=dtype)
