"""Functional API: whole networks and single layers, dispatched to a backend.

Data flows module -> functional -> backend op -> kernel. Nothing here loops
over time; the loops here are over layers only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastrnn import backends
from fastrnn.backends import LayerCall

LayerWeights = tuple  # (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None)


def rnn_layer(cell: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
              weights: Sequence[LayerWeights], backend: str = "auto", *, validate: bool = True):
    """One layer, all directions. Shapes as in `fastrnn.backends.reference.rnn_layer`.

    x: [N, I]; batch_sizes: None (uniform, N = T*B) or [T]; h0: [D, B, Hout];
    c0: [D, B, H] or None. Returns out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None.
    validate=False skips `check_layer_args`, for callers that ran it (the modules do, with
    torch's error messages), since it is a good part of a small call's cost.
    """
    problem = check_layer_args(cell, x, batch_sizes, h0, c0, weights) if validate else None
    if problem:
        raise RuntimeError(problem)
    if x.size(0) == 0:  # B = 0: nothing to compute (and T is not recoverable from x [0, I])
        # torch returns empty outputs that are still connected to the inputs for autograd
        out = x.new_zeros(0, len(weights) * h0.size(2)) + x.sum() * 0
        return out, h0.clone(), None if c0 is None else c0.clone()
    call = _layer_call(cell, x, x.size(1), batch_sizes, h0, c0, weights)
    return backends.select(backend, call).impl.rnn_layer(cell, x, batch_sizes, h0, c0, weights)


def _layer_call(cell, x, input_size, batch_sizes, h0, c0, weights) -> LayerCall:
    B = h0.size(1)
    w_hh, w_hr = weights[0][1], weights[0][4]
    return LayerCall(
        cell=cell,
        device=x.device.type,
        dtype=x.dtype,
        input_size=input_size,
        hidden_size=w_hh.size(0) // _gates(cell),
        proj_size=0 if w_hr is None else w_hr.size(0),
        batch=B,
        steps=(x.size(0) // B if B else 0) if batch_sizes is None else batch_sizes.numel(),
        directions=len(weights),
        packed=batch_sizes is not None,
        needs_grad=torch.is_grad_enabled() and (
            x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad)
            or any(w is not None and w.requires_grad for ws in weights for w in ws)),
    )


_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def check_layer_args(cell, x, batch_sizes, h0, c0, weights) -> Optional[str]:
    """What is wrong with a layer call's shapes, or None. Runs before any backend touches memory.

    x may be the tensor or just its shape (rows, input_size)."""
    x_shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(x)
    if len(x_shape) != 2 or h0.dim() != 3:
        return f"expected x [N, I] and h0 [D, B, Hout], got {list(x_shape)} and {list(h0.shape)}"
    rows, in_size = x_shape
    if isinstance(x, Tensor):
        named = [("h0", h0), ("c0", c0)] + [(f"{n} of direction {d}", w) for d, ws in enumerate(weights)
                                           for n, w in zip(_WEIGHT_NAMES, ws)]
        for name, t in named:
            if t is not None and (t.dtype != x.dtype or t.device != x.device):
                return (f"all tensors must have the dtype and device of the input ({x.dtype}, {x.device}); "
                        f"{name} has {t.dtype} on {t.device}")
    D, B, hout = h0.shape
    if len(weights) != D or D not in (1, 2):
        return f"expected {D} weight tuples (one per direction, 1 or 2), got {len(weights)}"
    if (c0 is not None) != (cell == "lstm"):
        return f"c0 must be given for lstm and only for lstm (cell {cell!r})"
    H = c0.size(2) if c0 is not None else hout
    if c0 is not None and tuple(c0.shape) != (D, B, H):
        return f"c0 must have shape {[D, B, H]}, got {list(c0.shape)}"
    gh = _gates(cell) * H
    for d, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(weights):
        want = {"weight_ih": (w_ih, (gh, in_size)), "weight_hh": (w_hh, (gh, hout)),
                "bias_ih": (b_ih, (gh,)), "bias_hh": (b_hh, (gh,)), "weight_hr": (w_hr, (hout, H))}
        for name, (w, shape) in want.items():
            if w is not None and tuple(w.shape) != shape:
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


def _gates(cell: str) -> int:
    return {"lstm": 4, "gru": 3}.get(cell, 1)


def rnn(cell: str, x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor, cx: Optional[Tensor],
        layer_weights: Sequence[Sequence[LayerWeights]], dropout: float = 0.0, training: bool = False,
        backend: str = "auto", *, validate: bool = True):
    """A stack of layers. x: [N, I]; hx: [L*D, B, Hout]; cx: [L*D, B, H] or None.

    Dropout is applied to the output of every layer but the last, in training,
    with the same RNG draws as torch's own RNN (so results match under a seed).
    Returns out [N, D*Hout], hn [L*D, B, Hout], cn [L*D, B, H] | None.  validate as in rnn_layer.
    """
    D = len(layer_weights[0])
    if len(layer_weights) > 1 and x.size(0) and _torch_runs_every_layer(cell, x, batch_sizes, hx, cx,
                                                                        layer_weights, backend, validate):
        return backends.get("torch").impl.rnn_stack(cell, x, batch_sizes, hx, cx, layer_weights,
                                                     dropout, training)
    hns, cns = [], []
    for layer, weights in enumerate(layer_weights):
        sl = slice(layer * D, (layer + 1) * D)
        x, hn, cn = rnn_layer(cell, x, batch_sizes, hx[sl], None if cx is None else cx[sl], weights, backend,
                              validate=validate)
        hns.append(hn)
        cns.append(cn)
        if dropout > 0 and training and layer < len(layer_weights) - 1:
            x = torch.dropout(x, dropout, True)
    hn = hns[0] if len(hns) == 1 else torch.cat(hns)
    cn = None if cx is None else (cns[0] if len(cns) == 1 else torch.cat(cns))
    return x, hn, cn


def _torch_runs_every_layer(cell, x, batch_sizes, hx, cx, layer_weights, backend, validate) -> bool:
    """Whether the backend choice is torch for every layer; then one torch call runs the stack."""
    D = len(layer_weights[0])
    for layer, weights in enumerate(layer_weights):
        sl = slice(layer * D, (layer + 1) * D)
        h0, c0 = hx[sl], None if cx is None else cx[sl]
        in_size = x.size(1) if layer == 0 else D * hx.size(2)
        problem = check_layer_args(cell, (x.size(0), in_size), batch_sizes, h0, c0, weights) if validate else None
        if problem:
            raise RuntimeError(problem)
        if backends.select(backend, _layer_call(cell, x, in_size, batch_sizes, h0, c0, weights)).name != "torch":
            return False
    return True
