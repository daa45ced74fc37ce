"""The op layer: one layer call (all directions) as one op, for every kernel backend.

    rnn_layer(cell, backend, x, batch_sizes, h0, c0, weights) -> (out, hn, cn)

Shapes as in `fastrnn.backends.reference.rnn_layer`. A kernel backend (cpp, numba, cuda) supplies
only kernels, in its module:

    forward(cell, x, batch_sizes, h0, c0, weights, train) -> (out, hn, cn | None, saved: list)
    backward(cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw)
        -> (dx, dh0, dc0, per direction (dw_ih, dw_hh, db_ih, db_hh, dw_hr))
    saved_like(cell, x, batch_sizes, h0, c0, weights) -> list   (shapes only, for fake tensors)
    COMPUTE_DTYPES                                                 (the rest run upcast to float32)
    NATIVE_DTYPES (optional)     half types whose forward runs natively: x and weights in that dtype,
                                 h0/c0 float32; outputs and saved values float32, backward upcast
                                 (its `backward` then also takes half=<dtype>)

on inputs that are contiguous and of a compute dtype. Everything else is here, once: contiguity,
the half-type upcast, empty input, autograd and the registration with `torch.library`:

- `fastrnn::rnn_layer` and `fastrnn::rnn_layer_backward` are custom ops with fake (meta)
  implementations and `register_autograd`, so torch.compile and AOTAutograd see each layer as one
  opaque node forward and backward, without a graph break (`torch.library.opcheck` passes).
- Eager calls run the same forward and backward through `_EagerLayer`, a plain autograd.Function:
  the dispatcher round trip of a custom op costs ~17 us without grad and ~75 us with it (measured
  on a 2-core Xeon, torch 2.13), more than a whole small layer call.
- Double backward: when backward runs with grad mode on (`create_graph=True`), the gradients
  come from the reference recurrence re-run on the saved inputs, which autograd differentiates
  again; first-order backward is untouched.
- The `torch` and `reference` backends have no kernels of their own: through the op (under
  torch.compile, or asked by name there) they run without saving anything and their backward
  re-runs them under autograd. Eager calls of those backends never come here (functional runs
  them directly, with torch's own autograd).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)
# the backends whose modules hold forward/backward/saved_like
KERNEL_BACKENDS = frozenset(("cpp", "numba", "cuda"))
# backends whose layer is plain differentiable torch code: through the op they recompute
_RECOMPUTED = ("torch", "reference")


def _kernels(backend: str):
    """The backend's module, loaded (its extension or numba imported) on first use."""
    k = _LOADED.get(backend)
    if k is None:
        from fastrnn import backends
        k = _LOADED[backend] = backends.get(backend).impl
    return k


_LOADED: dict = {}


def _differentiable_layer(backend: str):
    if backend == "torch":
        from fastrnn.backends import native
        return native.rnn_layer
    from fastrnn.backends import reference
    return reference.rnn_layer


def _split(flat: Sequence[Optional[Tensor]]) -> list:
    """[w_ih, w_hh, b_ih, b_hh, w_hr] * D -> D tuples."""
    return [tuple(flat[i:i + 5]) for i in range(0, len(flat), 5)]


def _to(t, dtype):
    return None if t is None else t.to(dtype)


def _compute_dtype(kernels, dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in kernels.COMPUTE_DTYPES else torch.float32


def _prepare(kernels, x, batch_sizes, h0, c0, flat, native: bool = False):
    """Contiguous inputs in the backend's compute dtype (half types: float32 state and
    accumulation, like the reference), int64 batch sizes.  `native` (forward only): a half type
    the backend runs natively keeps x and the weights in it, with float32 states."""
    bs = batch_sizes if batch_sizes is None or batch_sizes.dtype == torch.int64 else batch_sizes.long()
    if x.dtype in kernels.COMPUTE_DTYPES:  # the common case, kept cheap: a small call is ~50 us
        return (x.contiguous(), bs, h0.contiguous(), None if c0 is None else c0.contiguous(),
                [None if w is None else w.contiguous() for w in flat])
    ct = torch.float32
    if native and x.dtype in getattr(kernels, "NATIVE_DTYPES", ()):
        half = lambda t: None if t is None else t.to(x.dtype).contiguous()  # noqa: E731
        return (x.contiguous(), bs, h0.to(ct).contiguous(), None if c0 is None else c0.to(ct).contiguous(),
                [half(w) for w in flat])
    cast = lambda t: None if t is None else t.to(ct).contiguous()  # noqa: E731
    return cast(x), bs, cast(h0), cast(c0), [cast(w) for w in flat]


# ------------------------------------------------------------------------------ kernels

def layer_forward(cell: str, backend: str, x, batch_sizes, h0, c0, flat, train: bool):
    """One layer through a backend: (out, hn, cn | None, saved). `train`: keep what backward needs."""
    if backend in _RECOMPUTED:
        with torch.no_grad():
            out, hn, cn = _differentiable_layer(backend)(cell, x, batch_sizes, h0, c0, _split(flat))
        return out, hn, cn, []
    if x.size(0) == 0:  # no rows (B = 0): nothing to run, the states pass through
        return (x.new_zeros(0, (len(flat) // 5) * h0.size(2)), h0.clone(),
                None if c0 is None else c0.clone(), [])
    k = _kernels(backend)
    xc, bs, h0c, c0c, fc = _prepare(k, x, batch_sizes, h0, c0, flat, native=True)
    out, hn, cn, saved = k.forward(cell, xc, bs, h0c, c0c, _split(fc), train)
    if hn.dtype != x.dtype:  # a native half-type forward may return its output in it already
        out, hn, cn = out.to(x.dtype), hn.to(x.dtype), _to(cn, x.dtype)
    return out, hn, cn, list(saved)


def layer_inference(cell: str, backend: str, x, h0, c0, weights):
    """One layer through a kernel backend, for a call that was checked before (fastrnn/plans.py),
    needs no autograd and runs in the backend's compute dtype: layer_forward less its general
    cases (the kernels check the shapes, dtypes and devices again). (out, hn, cn | None)."""
    out, hn, cn, _ = _kernels(backend).forward(cell, x.contiguous(), None, h0.contiguous(),
                                               None if c0 is None else c0.contiguous(), weights, False)
    return out, hn, cn


def layer_backward(cell, backend, x, batch_sizes, h0, c0, flat, saved, dout, dhn, dcn, need):
    """Gradients of one layer: (dx, dh0, dc0, dflat) with None where `need` (for x, h0, c0,
    *flat) is False. Incoming gradients may be None (an output autograd did not reach)."""
    if backend in _RECOMPUTED or torch.is_grad_enabled():
        return _recomputed_grads(cell, backend, x, batch_sizes, h0, c0, flat, dout, dhn, dcn, need)
    if x.size(0) == 0:
        zero = lambda t, g: (torch.zeros_like(t) if g is None else g.clone()) if t is not None else None  # noqa: E731
        return (x.new_zeros(x.shape) if need[0] else None, zero(h0, dhn) if need[1] else None,
                zero(c0, dcn) if need[2] and c0 is not None else None,
                [torch.zeros_like(w) if (w is not None and n) else None for w, n in zip(flat, need[3:])])
    k = _kernels(backend)
    xc, bs, h0c, c0c, fc = _prepare(k, x, batch_sizes, h0, c0, flat)
    ct = xc.dtype
    D = len(flat) // 5
    dout = xc.new_zeros(xc.size(0), D * h0.size(2)) if dout is None else dout.to(ct).contiguous()
    dhn = torch.zeros_like(h0c) if dhn is None else dhn.to(ct).contiguous()
    if c0 is not None:
        dcn = torch.zeros_like(c0c) if dcn is None else dcn.to(ct).contiguous()
    need_dw = any(need[3:])
    # a backend with native half types hears which one it runs upcast (its gradients end in it)
    kw = {"half": x.dtype} if x.dtype in getattr(k, "NATIVE_DTYPES", ()) else {}
    res = k.backward(cell, xc, bs, h0c, c0c, _split(fc), list(saved), dout, dhn, dcn, bool(need[0]), need_dw, **kw)
    dx, dh0, dc0 = res[0], res[1], res[2]
    dw = list(res[3:3 + 5 * D]) if need_dw else [None] * (5 * D)  # a backend may skip them
    dflat = [g if (w is not None and n) else None for g, w, n in zip(dw, flat, need[3:])]
    grads = [dx if need[0] else None, dh0 if need[1] else None, dc0 if (c0 is not None and need[2]) else None]
    if ct != x.dtype:  # half types: gradients in the inputs' dtypes
        grads = [None if g is None else g.to(x.dtype) for g in grads]
        dflat = [None if g is None else g.to(x.dtype) for g in dflat]
    return grads[0], grads[1], grads[2], dflat


def _recomputed_grads(cell, backend, x, batch_sizes, h0, c0, flat, dout, dhn, dcn, need):
    """Gradients by re-running the layer under autograd: the `torch`/`reference` backends' backward,
    and every backend's double backward (the reference recurrence is twice differentiable)."""
    create_graph = torch.is_grad_enabled()  # backward(create_graph=True): differentiate again
    layer = _differentiable_layer("torch" if backend == "torch" and not create_graph else "reference")
    inputs = [x, h0, c0, *flat]
    wrt = [i for i, (t, n) in enumerate(zip(inputs, need)) if n and t is not None]
    with torch.enable_grad():
        # Double backward keeps the saved inputs as they are (the originals, part of the outer
        # graph) so the gradients stay connected to them; else they are detached into fresh leaves.
        leaves = inputs if create_graph else [
            None if t is None else t.detach().requires_grad_(n) for t, n in zip(inputs, need)]
        out, hn, cn = layer(cell, leaves[0], batch_sizes, leaves[1], leaves[2], _split(leaves[3:]))
        outs, gouts = [out, hn], [dout, dhn]
        if cn is not None:
            outs.append(cn)
            gouts.append(dcn)
        pairs = [(o, g) for o, g in zip(outs, gouts) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wrt], [g for _, g in pairs],
                                    create_graph=create_graph, allow_unused=True) if wrt and pairs else []
    full = [None] * len(inputs)
    for i, g in zip(wrt, grads):
        full[i] = torch.zeros_like(inputs[i]) if g is None else g
    return full[0], full[1], full[2], full[3:]


# ------------------------------------------------------------------------------ the custom ops

def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


# torch.library's autograd treats a list holding None as one non-differentiable leaf, so the ops
# take the weights that are present as a Tensor list plus which of the 5*D slots (w_ih, w_hh,
# b_ih, b_hh, w_hr per direction) they fill.

def _pack(flat) -> tuple:
    return [w for w in flat if w is not None], [int(w is not None) for w in flat]


def _unpack(weights, present) -> list:
    it = iter(weights)
    return [next(it) if p else None for p in present]


@torch.library.custom_op("fastrnn::rnn_layer", mutates_args=())
def _rnn_layer_op(x: Tensor, h0: Tensor, c0: Optional[Tensor], weights: List[Tensor], present: List[int],
                  batch_sizes: Optional[Tensor], cell: str, backend: str, train: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """One layer: out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] (empty for non-LSTM cells) and
    what the backend's backward needs (empty unless `train`)."""
    out, hn, cn, saved = layer_forward(cell, backend, x, batch_sizes, h0, c0, _unpack(weights, present), train)
    return out, hn, _empty(x) if cn is None else cn, saved


@_rnn_layer_op.register_fake
def _rnn_layer_fake(x, h0, c0, weights, present, batch_sizes, cell, backend, train):
    flat = _unpack(weights, present)
    D = len(flat) // 5
    out = x.new_empty(x.size(0), D * h0.size(2))
    cn = _empty(x) if c0 is None else c0.new_empty(c0.shape)
    saved = []
    if train and backend not in _RECOMPUTED and x.size(0) != 0:
        k = _kernels(backend)
        ct = _compute_dtype(k, x.dtype)
        saved = k.saved_like(cell, x.new_empty(x.shape, dtype=ct), batch_sizes, h0.new_empty(h0.shape, dtype=ct),
                             None if c0 is None else c0.new_empty(c0.shape, dtype=ct), _split(flat))
    return out, h0.new_empty(h0.shape), cn, saved


@torch.library.custom_op("fastrnn::rnn_layer_backward", mutates_args=())
def _rnn_layer_backward_op(x: Tensor, h0: Tensor, c0: Optional[Tensor], weights: List[Tensor], present: List[int],
                           batch_sizes: Optional[Tensor], saved: List[Tensor], dout: Tensor, dhn: Tensor,
                           dcn: Optional[Tensor], cell: str, backend: str, need: List[bool]
                           ) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """Gradients of x, h0, c0 and each present weight; an empty tensor where `need` is False."""
    flat = _unpack(weights, present)
    need_flat = need[:3] + _unpack(need[3:], present)
    need_flat = [bool(n) for n in need_flat]
    dx, dh0, dc0, dw = layer_backward(cell, backend, x, batch_sizes, h0, c0, flat, saved, dout, dhn, dcn, need_flat)
    dw = [g for g, p in zip(dw, present) if p]
    return (_empty(x) if dx is None else dx, _empty(x) if dh0 is None else dh0,
            _empty(x) if dc0 is None else dc0, [_empty(x) if g is None else g for g in dw])


@_rnn_layer_backward_op.register_fake
def _rnn_layer_backward_fake(x, h0, c0, weights, present, batch_sizes, saved, dout, dhn, dcn, cell, backend, need):
    like = lambda t, n: t.new_empty(t.shape) if (t is not None and n) else _empty(x)  # noqa: E731
    return like(x, need[0]), like(h0, need[1]), like(c0, need[2]), [like(w, n) for w, n in zip(weights, need[3:])]


def _setup_context(ctx, inputs, output):
    x, h0, c0, weights, present, batch_sizes, cell, backend, train = inputs
    ctx.cell, ctx.backend, ctx.present, ctx.n = cell, backend, list(present), len(weights)
    ctx.need = [t is not None and t.requires_grad for t in (x, h0, c0, *weights)]
    ctx.save_for_backward(x, h0, c0, batch_sizes, *weights, *output[3])


def _op_backward(ctx, dout, dhn, dcn, dsaved):
    x, h0, c0, batch_sizes, *rest = ctx.saved_tensors
    weights, saved = list(rest[:ctx.n]), list(rest[ctx.n:])
    if c0 is None:
        dcn = None
    if torch.is_grad_enabled() or ctx.backend in _RECOMPUTED:
        # double backward, or a backend without kernels: a re-run under autograd (the module
        # docstring), here at the autograd level since autograd does not record inside an op
        need = ctx.need[:3] + [bool(n) for n in _unpack(ctx.need[3:], ctx.present)]
        dx, dh0, dc0, dw = _recomputed_grads(ctx.cell, ctx.backend, x, batch_sizes, h0, c0,
                                             _unpack(weights, ctx.present), dout, dhn, dcn, need)
        dw = [g for g, p in zip(dw, ctx.present) if p]
    else:
        res = _rnn_layer_backward_op(x, h0, c0, weights, ctx.present, batch_sizes, saved, dout.contiguous(),
                                     dhn.contiguous(), dcn, ctx.cell, ctx.backend, ctx.need)
        dx, dh0, dc0 = (g if n else None for g, n in zip(res[:3], ctx.need[:3]))
        dw = [g if n else None for g, n in zip(res[3], ctx.need[3:])]
    return dx, dh0, dc0, dw, None, None, None, None, None


_rnn_layer_op.register_autograd(_op_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ eager path

class _EagerLayer(torch.autograd.Function):
    """The op's forward and backward for eager calls, without the dispatcher round trip.
    Inputs: cell, backend, batch_sizes, x, h0, c0, then per direction w_ih, w_hh, b_ih, b_hh, w_hr."""

    @staticmethod
    def forward(ctx, cell, backend, batch_sizes, x, h0, c0, *flat):
        out, hn, cn, saved = layer_forward(cell, backend, x, batch_sizes, h0, c0, flat, True)
        ctx.cell, ctx.backend, ctx.batch_sizes, ctx.n_saved = cell, backend, batch_sizes, len(saved)
        # intermediates go through save_for_backward too, so saved-tensor hooks (checkpointing,
        # CPU offload) see them
        ctx.save_for_backward(*saved, x, h0, c0, *flat)
        if cn is None:
            return out, hn
        return out, hn, cn

    @staticmethod
    def backward(ctx, dout, dhn, dcn=None):
        tensors = ctx.saved_tensors
        saved, (x, h0, c0, *flat) = tensors[:ctx.n_saved], tensors[ctx.n_saved:]
        need = list(ctx.needs_input_grad[3:])
        dx, dh0, dc0, dw = layer_backward(ctx.cell, ctx.backend, x, ctx.batch_sizes, h0, c0, flat, saved,
                                          dout, dhn, dcn, need)
        return (None, None, None, dx, dh0, dc0, *dw)


def graph_mode(x: Tensor) -> bool:
    """Whether this call is being traced by torch.compile, where the custom op must appear in the
    graph rather than run eagerly."""
    return torch.compiler.is_compiling()


def transforms_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is running."""
    return torch._C._are_functorch_transforms_active()


def is_fake(x: Tensor) -> bool:
    """FakeTensor (FakeTensorMode, shape propagation) or another tensor subclass."""
    return type(x) is not Tensor and not isinstance(x, torch.nn.Parameter)


def rnn_layer(cell: str, backend: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor,
              c0: Optional[Tensor], weights: Sequence[tuple]):
    """One layer (all directions) through `backend`'s kernels: out [N, D*Hout], hn [D, B, Hout],
    cn [D, B, H] | None. Autograd is engaged only when some input requires grad."""
    flat = [w for ws in weights for w in ws]
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or (
        c0 is not None and c0.requires_grad) or any([w is not None and w.requires_grad for w in flat]))
    if graph_mode(x):
        out, hn, cn, _ = _rnn_layer_op(x, h0, c0, *_pack(flat), batch_sizes, cell, backend, needs_grad)
        return out, hn, (cn if c0 is not None else None)
    if not needs_grad:
        out, hn, cn, _ = layer_forward(cell, backend, x, batch_sizes, h0, c0, flat, False)
        return out, hn, cn
    res = _EagerLayer.apply(cell, backend, batch_sizes, x, h0, c0, *flat)
    return (res[0], res[1], res[2]) if c0 is not None else (res[0], res[1], None)
