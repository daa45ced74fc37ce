"""Functional API: whole networks and single layers, dispatched to a backend.

Data flows module -> functional -> op (fastrnn/ops.py) -> backend kernel. The backend is decided
here, once per layer call; nothing here loops over time (the loops are over layers only).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastrnn import backends, dispatch, ops
from fastrnn.backends import LayerCall
from fastrnn.cells import gates
from fastrnn.checks import check_layer_args

LayerWeights = tuple  # (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None)

__all__ = ["rnn", "rnn_layer", "check_layer_args"]


def rnn_layer(cell: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
              weights: Sequence[LayerWeights], backend: str = "auto", *, validate: bool = True,
              picked: Optional[str] = None):
    """One layer, all directions. Shapes as in `fastrnn.backends.reference.rnn_layer`.

    x: [N, I]; batch_sizes: None (uniform, N = T*B) or [T]; h0: [D, B, Hout];
    c0: [D, B, H] or None. Returns out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None.
    validate=False skips `check_layer_args`, for callers that ran it (the modules do, with
    torch's error messages), since it is a good part of a small call's cost.  `picked`: the
    backend `choose` gave a call with the same facts before (a module's remembered plan,
    fastrnn/plans.py), used without asking again.
    """
    problem = check_layer_args(cell, x, batch_sizes, h0, c0, weights) if validate else None
    if problem:
        raise RuntimeError(problem)
    name = picked or choose(cell, x, x.size(1), batch_sizes, h0, c0, weights, backend)
    if name in ops.KERNEL_BACKENDS:
        return ops.rnn_layer(cell, name, x, batch_sizes, h0, c0, weights)
    if name in ("torch", "reference") and ops.graph_mode(x):
        # torch.compile traces the reference recurrence (plain torch ops): torch's own RNN
        # kernels do not trace (pytorch#91439), so backend="torch" runs it too under compile
        name = "reference"
    if x.size(0) == 0:  # B = 0: nothing to compute (and T is not recoverable from x [0, I])
        # torch returns empty outputs that are still connected to the inputs for autograd
        out = x.new_zeros(0, len(weights) * h0.size(2)) + x.sum() * 0
        return out, h0.clone(), None if c0 is None else c0.clone()
    return backends.get(name).impl.rnn_layer(cell, x, batch_sizes, h0, c0, weights)


def choose(cell, x, input_size, batch_sizes, h0, c0, weights, backend: str) -> str:
    """The backend that runs this layer call: the one asked for, or auto's pick.

    Under torch.func transforms, on meta tensors and under FakeTensorMode outside torch.compile,
    the layer runs as the reference recurrence (plain torch ops: every transform, fake and meta
    tensor goes through them as through torch.nn's own). Under torch.compile see `_compiled_pick`."""
    if torch.compiler.is_compiling():
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, *[w for ws in weights for w in ws]))
        return _compiled_pick(backend, cell, x.device.type, x.dtype, weights[0][4] is not None,
                              batch_sizes is not None, len(weights), needs_grad)
    device = x.device.type
    if ops.transforms_active() or device == "meta" or ops.is_fake(x):
        return "reference"
    # The pick depends only on these facts: remembered per facts, so a repeated call shape costs
    # a dict lookup instead of building a LayerCall and walking the rules (~5 us of a small call).
    name = dispatch.requested(backend)
    B, w_hh = h0.size(1), weights[0][1]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad)
        or any([w is not None and w.requires_grad for ws in weights for w in ws]))
    key = (name, cell, device, x.dtype, input_size, w_hh.size(0), h0.size(2), B,
           (x.size(0) // B if B else 0) if batch_sizes is None else batch_sizes.numel(), len(weights),
           batch_sizes is not None, needs_grad, torch.backends.mkldnn.enabled)
    picked = dispatch.PICKS.get(key)
    if picked is None:
        picked = dispatch.pick(name, _layer_call(cell, x, input_size, batch_sizes, h0, c0, weights)).name
        if name == "auto":  # a named backend is asked each time (its availability check says why not)
            dispatch.remember(key, picked)
    return picked


def _compiled_pick(backend, cell, device, dtype, proj, packed, directions, needs_grad) -> str:
    """auto's pick inside torch.compile: made once, at trace time, for the layer's cell, dtype and
    options at a nominal size (T=100, B=64, 256 units), never on its actual sizes, so a dynamic
    shape adds no guard and no recompile (a graph keeps its backend when the sizes change). On CPU
    it never hands the call to torch's RNN ops, which Dynamo cannot trace (pytorch#91439)."""
    call = LayerCall(cell=cell, device=device, dtype=dtype, input_size=256, hidden_size=256,
                     proj_size=128 if proj else 0, batch=64, steps=100, directions=directions, packed=packed,
                     needs_grad=needs_grad)
    return dispatch.pick(backend, call, exclude=("torch",) if device == "cpu" and backend == "auto" else ()).name


_compiled_pick._dynamo_marked_constant = True  # Dynamo calls it at trace time and keeps the result


def _layer_call(cell, x, input_size, batch_sizes, h0, c0, weights) -> LayerCall:
    B = h0.size(1)
    w_hh, w_hr = weights[0][1], weights[0][4]
    return LayerCall(
        cell=cell,
        device=x.device.type,
        dtype=x.dtype,
        input_size=input_size,
        hidden_size=w_hh.size(0) // gates(cell),
        proj_size=0 if w_hr is None else w_hr.size(0),
        batch=B,
        steps=(x.size(0) // B if B else 0) if batch_sizes is None else batch_sizes.numel(),
        directions=len(weights),
        packed=batch_sizes is not None,
        needs_grad=torch.is_grad_enabled() and (
            x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad)
            or any(w is not None and w.requires_grad for ws in weights for w in ws)),
    )


def rnn(cell: str, x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor, cx: Optional[Tensor],
        layer_weights: Sequence[Sequence[LayerWeights]], dropout: float = 0.0, training: bool = False,
        backend: str = "auto", *, validate: bool = True, picks: Optional[Sequence[str]] = None,
        record: Optional[list] = None):
    """A stack of layers. x: [N, I]; hx: [L*D, B, Hout]; cx: [L*D, B, H] or None.

    Dropout is applied to the output of every layer but the last, in training,
    with the same RNG draws as torch's own RNN (so results match under a seed).
    Returns out [N, D*Hout], hn [L*D, B, Hout], cn [L*D, B, H] | None.  validate as in rnn_layer.
    `picks`: the backend per layer a call with the same facts was given before (fastrnn/plans.py);
    `record`: a list that receives this call's picks (left empty where torch ran the stack).
    """
    D = len(layer_weights[0])
    if picks is None and len(layer_weights) > 1 and x.size(0) and not ops.graph_mode(x) and _stack_to_torch(
            cell, x, batch_sizes, hx, cx, layer_weights, backend):
        if validate:
            _check_stack(cell, x, batch_sizes, hx, cx, layer_weights)
        return backends.get("torch").impl.rnn_stack(cell, x, batch_sizes, hx, cx, layer_weights, dropout, training)
    hns, cns = [], []
    for layer, weights in enumerate(layer_weights):
        h0, c0 = layer_states(hx, cx, layer, D, len(layer_weights))
        picked = picks[layer] if picks is not None else None
        if record is not None:
            picked = choose(cell, x, x.size(1), batch_sizes, h0, c0, weights, backend)
            record.append(picked)
        x, hn, cn = rnn_layer(cell, x, batch_sizes, h0, c0, weights, backend, validate=validate, picked=picked)
        hns.append(hn)
        cns.append(cn)
        if dropout > 0 and training and layer < len(layer_weights) - 1:
            x = torch.dropout(x, dropout, True)
    hn = hns[0] if len(hns) == 1 else torch.cat(hns)
    cn = None if cx is None else (cns[0] if len(cns) == 1 else torch.cat(cns))
    return x, hn, cn


def rnn_inference(cell: str, x: Tensor, hx: Tensor, cx: Optional[Tensor], layer_weights, picks) -> tuple:
    """`rnn` for a call checked and picked before (fastrnn/plans.py) that needs no autograd, runs in
    float32/float64 on kernel backends (`picks`, one per layer) and draws no dropout: straight to
    the kernels, a small call's per-layer overhead (~10 us in Python) left out."""
    layers = len(layer_weights)
    if layers == 1:
        return ops.layer_inference(cell, picks[0], x, hx, cx, layer_weights[0])
    D = len(layer_weights[0])
    hns, cns = [], []
    for layer, weights in enumerate(layer_weights):
        h0, c0 = layer_states(hx, cx, layer, D, layers)
        x, hn, cn = ops.layer_inference(cell, picks[layer], x, h0, c0, weights)
        hns.append(hn)
        cns.append(cn)
    return x, torch.cat(hns), None if cx is None else torch.cat(cns)


def layer_states(hx, cx, layer: int, D: int, layers: int):
    """Layer `layer`'s rows of hx [L*D, B, Hout] and cx: the tensors themselves for a single layer
    (a slice costs ~2 us, a tenth of a small call)."""
    if layers == 1:
        return hx, cx
    sl = slice(layer * D, (layer + 1) * D)
    return hx[sl], None if cx is None else cx[sl]


def torch_runs(cell: str, device: str, dtype: torch.dtype, *, input_size: int, hidden_size: int, proj_size: int,
               batch: int, steps: int, directions: int, packed: bool, needs_grad, backend: str,
               may_win: bool = False) -> bool:
    """Whether a whole call, every layer, runs as one torch call (oneDNN fuses a stack, and the dropout
    draws are torch's): backend "torch", or auto where it hands the first layer to torch. Deeper layers
    differ only in input size (hidden * directions), which moves the pick's speed, never its result.
    `needs_grad` may be a callable, asked only when a rule could hand the call to torch (a small
    call's cost counts); `may_win`: the caller already found `torch_may_run` true."""
    name = dispatch.requested(backend)
    if name != "auto":
        return name == "torch"
    if not (may_win or dispatch.torch_may_win(cell, device, dtype, steps, proj_size)):
        return False
    grad = bool(needs_grad() if callable(needs_grad) else needs_grad)
    key = ("stack", cell, device, dtype, input_size, hidden_size, proj_size, batch, steps, directions, packed, grad,
           torch.backends.mkldnn.enabled)
    picked = dispatch.PICKS.get(key)
    if picked is None:
        call = LayerCall(cell=cell, device=device, dtype=dtype, input_size=input_size, hidden_size=hidden_size,
                         proj_size=proj_size, batch=batch, steps=steps, directions=directions, packed=packed,
                         needs_grad=grad)
        picked = dispatch.remember(key, dispatch.pick("auto", call).name)
    return picked == "torch"


def _stack_to_torch(cell, x, batch_sizes, hx, cx, layer_weights, backend) -> bool:
    w_ih, w_hh, _, _, w_hr = layer_weights[0][0]
    B = hx.size(1)
    return torch_runs(
        cell, x.device.type, x.dtype, input_size=x.size(1), hidden_size=w_hh.size(0) // gates(cell),
        proj_size=0 if w_hr is None else w_hr.size(0), batch=B,
        steps=(x.size(0) // B if B else 0) if batch_sizes is None else batch_sizes.numel(),
        directions=len(layer_weights[0]), packed=batch_sizes is not None, backend=backend,
        needs_grad=lambda: torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, hx, cx, *[w for ws in layer_weights for d in ws for w in d])))


def _check_stack(cell, x, batch_sizes, hx, cx, layer_weights):
    D = len(layer_weights[0])
    for layer, weights in enumerate(layer_weights):
        sl = slice(layer * D, (layer + 1) * D)
        in_size = x.size(1) if layer == 0 else D * hx.size(2)
        problem = check_layer_args(cell, (x.size(0), in_size), batch_sizes, hx[sl], None if cx is None else cx[sl],
                                   weights)
        if problem:
            raise RuntimeError(problem)


def torch_may_run(cell: str, device: str, dtype: torch.dtype, steps: int, proj_size: int) -> bool:
    """False where auto surely keeps a call (dispatch.torch_may_win): a cheap test before `torch_runs`."""
    return dispatch.torch_may_win(cell, device, dtype, steps, proj_size)


def cell_to_torch(device: str, dtype: torch.dtype, backend: str, needs_grad: bool) -> bool:
    """Whether auto runs a cell's single step in torch (fastrnn/dispatch.py: one_step_to_torch)."""
    return dispatch.requested(backend) == "auto" and dispatch.one_step_to_torch(device, dtype, needs_grad)


def check_backend(name: str) -> str:
    """`name` if it is "auto" or a known backend; else torch's ValueError naming the known ones."""
    if name != "auto":
        backends.get(name)
    return name
