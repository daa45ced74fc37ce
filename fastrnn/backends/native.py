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


def onednn_lstm_applies(call) -> bool:
    """Whether torch runs this layer call through oneDNN's fused LSTM primitive (float32 LSTM
    without projection on padded CPU input): its JIT GEMMs with pre-packed weights beat our
    CPU loops there (measurements in fastrnn.backends.cpp._prefer), so auto leaves those
    calls to torch whichever CPU backend is asked first."""
    return onednn_lstm_applies_to(call.cell, call.device, call.dtype, call.proj_size, call.packed)


# One step (a cell, or a layer with T = 1) has no time loop to fuse: torch runs it as its two
# GEMMs and a pointwise pass with less per-call overhead than ours.  Measured on the 2-core AMD
# EPYC Zen4, float32, torch time / cpp time, fwd | fwd+bwd: GRUCell B1 H64 0.54 | 0.82, B64 H256
# 1.01 | 0.88, B256 H512 1.00 | 0.84; RNNCell B8 H64 0.45 | 0.51, B256 H512 1.05 | 0.82;
# LSTMCell B64 H256 1.05 | 0.82, B64 H1024 0.97 | 0.83.  Half types stay with us (torch's
# CPU half RNN paths are the slow ones).
ONE_STEP_TO_TORCH = frozenset((torch.float32, torch.float64))


def torch_runs_one_step_faster(call) -> bool:
    return one_step_to_torch(call.device, call.steps, call.dtype)


def one_step_to_torch(device: str, steps: int, dtype: torch.dtype) -> bool:
    return device == "cpu" and steps == 1 and dtype in ONE_STEP_TO_TORCH


def onednn_lstm_applies_to(cell: str, device: str, dtype: torch.dtype, proj_size: int, packed: bool) -> bool:
    return (device == "cpu" and cell == "lstm" and dtype == torch.float32 and not proj_size and not packed
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


BACKEND = Backend(
    name="torch",
    devices=frozenset(("cpu", "cuda")),
    dtypes=ALL_DTYPES,
    load=this_module(__name__),
)
