"""The cells, defined once for the whole Python side: every backend, the kernels and the tests
take these facts from here, and the reference backend (the oracle) its math.

A cell is named by the string used across the whole stack (`"lstm"`, `"gru"`, `"rnn_tanh"`,
`"rnn_relu"`). The C++ side has the same facts once, in csrc/cell_math.h; Numba and Triton write
the math in their own language in kernels/, keyed by `Cell.id`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cell:
    name: str
    id: int                 # the kernels' cell number (Triton constexpr, Numba and C++ cell ids)
    gates: int              # row blocks of hidden_size in weight_ih / weight_hh
    gate_order: str         # torch's row order
    states: tuple           # ("h", "c") for LSTM, ("h",) otherwise
    saved: int              # values per row and unit the Numba and Triton kernels keep for backward
                            # (the C++ kernels keep their own set: csrc/cell_math.h's S)
    # GRU: b_hn stays inside the reset product, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so
    # the recurrent projection of the n gate cannot be summed with the input one before the cell.
    split_recurrent_bias: bool = False

    @property
    def has_cell_state(self) -> bool:
        return "c" in self.states

    @property
    def is_lstm(self) -> bool:
        return self.name == "lstm"


CELLS = {
    "lstm": Cell("lstm", 0, 4, "i,f,g,o", ("h", "c"), saved=4),                     # i, f, g, o
    "gru": Cell("gru", 1, 3, "r,z,n", ("h",), saved=4, split_recurrent_bias=True),  # r, z, n, W_hn h + b_hn
    "rnn_tanh": Cell("rnn_tanh", 2, 1, "h", ("h",), saved=1),                        # h
    "rnn_relu": Cell("rnn_relu", 3, 1, "h", ("h",), saved=1),
}

# torch.nn.RNNBase.mode -> our cell name
MODE_TO_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def get_cell(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"Unknown cell type {name!r}; expected one of {sorted(CELLS)}") from None


def gates(name: str) -> int:
    """Row blocks of hidden_size in weight_ih/weight_hh (4 for LSTM, 3 for GRU, 1 for RNN)."""
    return get_cell(name).gates


def pointwise(cell: str, gi, gh, h, c):
    """One step of the cell in torch ops, from the pre-activations gi = W_ih x + b_ih and
    gh = W_hh h + b_hh: (h', c' or None). The oracle every kernel is tested against; autograd
    gives its backward."""
    if cell == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if cell == "gru":
        ir, iz, inn = gi.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(inn + r * hn)
        return n + z * (h - n), None
    if cell == "rnn_tanh":
        return torch.tanh(gi + gh), None
    if cell == "rnn_relu":
        return torch.relu(gi + gh), None
    raise ValueError(f"Unknown cell type {cell!r}")
