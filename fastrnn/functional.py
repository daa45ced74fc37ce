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
              weights: Sequence[LayerWeights], backend: str = "auto"):
    """One layer, all directions. Shapes as in `fastrnn.backends.reference.rnn_layer`.

    x: [N, I]; batch_sizes: None (uniform, N = T*B) or [T]; h0: [D, B, Hout];
    c0: [D, B, H] or None. Returns out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None.
    """
    B = h0.size(1)
    w_ih, w_hh, _, _, w_hr = weights[0]
    call = LayerCall(
        cell=cell,
        device=x.device.type,
        dtype=x.dtype,
        input_size=x.size(1),
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
    return backends.select(backend, call).impl.rnn_layer(cell, x, batch_sizes, h0, c0, weights)


def _gates(cell: str) -> int:
    return {"lstm": 4, "gru": 3}.get(cell, 1)


def rnn(cell: str, x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor, cx: Optional[Tensor],
        layer_weights: Sequence[Sequence[LayerWeights]], dropout: float = 0.0, training: bool = False,
        backend: str = "auto"):
    """A stack of layers. x: [N, I]; hx: [L*D, B, Hout]; cx: [L*D, B, H] or None.

    Dropout is applied to the output of every layer but the last, in training,
    with the same RNG draws as torch's own RNN (so results match under a seed).
    Returns out [N, D*Hout], hn [L*D, B, Hout], cn [L*D, B, H] | None.
    """
    D = len(layer_weights[0])
    hns, cns = [], []
    for layer, weights in enumerate(layer_weights):
        sl = slice(layer * D, (layer + 1) * D)
        x, hn, cn = rnn_layer(cell, x, batch_sizes, hx[sl], None if cx is None else cx[sl], weights, backend)
        hns.append(hn)
        cns.append(cn)
        if dropout > 0 and training and layer < len(layer_weights) - 1:
            x = torch.dropout(x, dropout, True)
    hn = hns[0] if len(hns) == 1 else torch.cat(hns)
    cn = None if cx is None else (cns[0] if len(cns) == 1 else torch.cat(cns))
    return x, hn, cn
