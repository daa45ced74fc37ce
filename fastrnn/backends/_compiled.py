"""The kernel contract of the compiled backends (`cpp`: fastrnn._ext, `cuda`: fastrnn._cuda_ext).

Both extensions export one layer (all directions) as two C++ calls with the same signature:

    forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
        -> (out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None, saved)
    backward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, saved, dout, dhn, dcn, need_dx, need_dw)
        -> (dx, dh0, dc0, then per direction dw_ih, dw_hh, db_ih, db_hh, dw_hr)

with saved = [save [D, N, S*H], hprev [D, N, Hout], R [D, N, H] with proj_size] (S values per hidden
unit: csrc/cell_math.h).  These adapt them to the op layer's kernel contract (fastrnn/ops.py).
"""
from __future__ import annotations

import contextlib

import torch

from fastrnn.cells import gates

# values saved per hidden unit and step (csrc/cell_math.h: LSTM i f g o c_{t-1} tanh(c_t); GRU r z n
# W_hn h + b_hn; RNN h_t)
SAVED_PER_UNIT = {"lstm": 6, "gru": 4, "rnn_tanh": 1, "rnn_relu": 1}


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def no_autocast(device_type: str):
    """The extensions call ATen ops (GEMMs, casts) that an active autocast would retype; the
    modules have already applied torch's autocast policy to the inputs."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()  # entering an autocast context costs ~5 us a call


def forward(ext, cell, x, batch_sizes, h0, c0, weights, train):
    if len(weights) == 1:  # a small call's Python is counted in microseconds: no zip for one direction
        w_ih, w_hh, b_ih, b_hh, w_hr = weights[0]
        args = (cell, x, batch_sizes, h0, c0, [w_ih], [w_hh], [b_ih], [b_hh], [w_hr], train)
    else:
        w_ih, w_hh, b_ih, b_hh, w_hr = map(list, zip(*weights))
        args = (cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
    if _any_autocast():  # one call without arguments: a small call's Python is counted in microseconds
        device_type = "cuda" if x.is_cuda else "cpu"  # the extensions take no other device
        with no_autocast(device_type):
            return ext.forward(*args)
    return ext.forward(*args)  # entering even a null context costs ~1 us, a few percent of a small call


def backward(ext, cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw, **kw):
    """kw: extension-specific options (cpp: bf16_gemms)."""
    args = (cell, x, batch_sizes, h0, c0, [w[0] for w in weights], [w[1] for w in weights],
            [w[4] for w in weights], saved, dout, dhn, dcn, need_dx, need_dw)
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        with no_autocast(x.device.type):
            return ext.backward(*args, **kw)
    return ext.backward(*args, **kw)


def saved_like(cell, x, h0, c0, weights, save_dtype):
    """Empty tensors shaped like what `forward(..., train=True)` saves (for fake tensors)."""
    D, N, Hout = len(weights), x.size(0), h0.size(2)
    H = weights[0][1].size(0) // gates(cell)
    saved = [x.new_empty(D, N, SAVED_PER_UNIT[cell] * H, dtype=save_dtype), x.new_empty(D, N, Hout)]
    if weights[0][4] is not None:
        saved.append(x.new_empty(D, N, H))
    return saved
