"""`torch` backend: hands one layer to torch's own kernels (cuDNN on GPU, ATen on CPU).

auto uses it where torch is faster than our kernels, so that fastrnn under
auto is never slower than torch.nn. Same op signature as `reference.rnn_layer`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import _VF

from fastrnn.backends import ALL_DTYPES, Backend, this_module

_FN = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}


def rnn_layer(cell, x, batch_sizes, h0, c0, weights):
    return rnn_stack(cell, x, batch_sizes, h0, c0, [weights], 0.0, False)


def rnn_stack(cell, x, batch_sizes, hx, cx, layer_weights, dropout, training):
    """Several layers in one torch call: what functional.rnn uses when auto would hand
    every layer to torch anyway, so that this path is torch's own, to the kernel
    (oneDNN fuses a whole stack, and the dropout draws are torch's)."""
    # The modules already applied torch's autocast policy for the module being replaced;
    # the _VF op must not apply it again (it would cast e.g. an LSTMCell's layer to bf16).
    with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
            else contextlib.nullcontext():
        has_bias = layer_weights[0][0][2] is not None
        flat = []
        for weights in layer_weights:
            for w_ih, w_hh, b_ih, b_hh, w_hr in weights:
                flat += [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else []) + ([w_hr] if w_hr is not None else [])
        bidir = len(layer_weights[0]) == 2
        h = (hx, cx) if cell == "lstm" else hx
        fn, L = _FN[cell], len(layer_weights)
        if batch_sizes is None:
            B = hx.size(1)
            x3 = x.view(x.size(0) // B if B else 0, B, x.size(1))
            res = fn(x3, h, flat, has_bias, L, dropout, training, bidir, False)
            out = res[0].reshape(x.size(0), -1)
        else:
            res = fn(x, batch_sizes, h, flat, has_bias, L, dropout, training, bidir)
            out = res[0]
    return (out, res[1], res[2]) if cell == "lstm" else (out, res[1], None)


BACKEND = Backend(
    name="torch",
    devices=frozenset(("cpu", "cuda")),
    dtypes=ALL_DTYPES,
    load=this_module(__name__),
)
