"""Cell types as data: every backend builds its kernels from these facts.

A cell is named by the string used across the whole stack (`"lstm"`, `"gru"`,
`"rnn_tanh"`, `"rnn_relu"`). `gates` is the number of `hidden_size` row blocks
in `weight_ih`/`weight_hh`, in torch's order.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int          # row blocks in the weight matrices
    gate_order: str     # torch's row order, for readers of kernels
    has_cell_state: bool

    @property
    def is_lstm(self) -> bool:
        return self.name == "lstm"


CELLS = {
    "lstm": Cell("lstm", 4, "i,f,g,o", True),
    "gru": Cell("gru", 3, "r,z,n", False),
    "rnn_tanh": Cell("rnn_tanh", 1, "h", False),
    "rnn_relu": Cell("rnn_relu", 1, "h", False),
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
