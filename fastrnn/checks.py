"""Validation of one layer call: what is wrong with its shapes, dtypes and devices, or None.

Runs once at the top (fastrnn.functional, or the modules with torch's own messages) before any
backend touches memory; backends below keep only checks their compiled code needs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastrnn.cells import gates

_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def check_layer_args(cell, x, batch_sizes, h0, c0, weights) -> Optional[str]:
    """What is wrong with a layer call's shapes, or None. Runs before any backend touches memory.

    x may be the tensor or just its shape (rows, input_size)."""
    x_shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(x)
    if len(x_shape) != 2 or h0.dim() != 3:
        return f"expected x [N, I] and h0 [D, B, Hout], got {list(x_shape)} and {list(h0.shape)}"
    rows, in_size = x_shape
    if isinstance(x, Tensor):
        dt, dev = x.dtype, x.device
        for t in (h0, c0, *[w for ws in weights for w in ws]):
            if t is not None and (t.dtype != dt or t.device != dev):  # names are made only for the message
                named = [("h0", h0), ("c0", c0)] + [(f"{n} of direction {d}", w) for d, ws in enumerate(weights)
                                                   for n, w in zip(_WEIGHT_NAMES, ws)]
                name = next(n for n, u in named if u is t)
                return (f"all tensors must have the dtype and device of the input ({dt}, {dev}); "
                        f"{name} has {t.dtype} on {t.device}")
    D, B, hout = h0.shape
    if len(weights) != D or D not in (1, 2):
        return f"expected {D} weight tuples (one per direction, 1 or 2), got {len(weights)}"
    if (c0 is not None) != (cell == "lstm"):
        return f"c0 must be given for lstm and only for lstm (cell {cell!r})"
    H = c0.size(2) if c0 is not None else hout
    if c0 is not None and tuple(c0.shape) != (D, B, H):
        return f"c0 must have shape {[D, B, H]}, got {list(c0.shape)}"
    gh = gates(cell) * H
    want = ((gh, in_size), (gh, hout), (gh,), (gh,), (hout, H))  # in _WEIGHT_NAMES' order
    for d, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(weights):
        for name, w, shape in zip(_WEIGHT_NAMES, (w_ih, w_hh, b_ih, b_hh, w_hr), want):
            if w is not None and w.shape != shape:
                return (f"{name} of direction {d} has shape {list(w.shape)}, expected {list(shape)} "
                        f"(input_size={in_size}, hidden_size={H}, output size={hout})")
        if (w_hr is not None) != (hout != H) or (w_hr is not None and cell != "lstm"):
            return "weight_hr must be given exactly when the output size differs from hidden_size (lstm only)"
        if (b_ih is None) != (b_hh is None):
            return "bias_ih and bias_hh must both be given or both be None"
    if batch_sizes is None:
        if (B == 0 and rows != 0) or (B and rows % B):
            return f"x has {rows} rows, not a multiple of the batch size {B}"
    else:
        if batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64:
            return "batch_sizes must be a 1-D int64 CPU tensor"
        if batch_sizes.numel():
            if int(batch_sizes[0]) != B or int(batch_sizes.min()) < 1:
                return f"batch_sizes must start at the batch size {B} and stay positive"
            if bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
                return "batch_sizes must be non-increasing (sorted by length, as PackedSequence is)"
        if int(batch_sizes.sum()) != rows:
            return f"batch_sizes sum to {int(batch_sizes.sum())}, but x has {rows} rows"
    return None
