"""The autograd glue shared by the compiled backends (`cpp`: fastrnn._ext, `cuda`: fastrnn._cuda_ext).

Both extensions export one layer (all directions) as two C++ calls with the same signature:

    forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, train)
        -> (out [N, D*Hout], hn [D, B, Hout], cn [D, B, H] | None, saved)
    backward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, saved, dout, dhn, dcn, need_dx, need_dw)
        -> (dx, dh0, dc0, then per direction dw_ih, dw_hh, db_ih, db_hh, dw_hr)

`layer_function(get_ext)` makes the torch.autograd.Function around such a pair and `run_layer`
calls it with the op signature of `reference.rnn_layer`.  `get_ext` is called at run time, so a
backend can load its extension lazily.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.autograd.function import once_differentiable


def contiguous(t):
    return None if t is None else t.contiguous()


def no_autocast(device_type: str):
    """The extensions call ATen ops (GEMMs, casts) that an active autocast would retype; the
    modules have already applied torch's autocast policy to the inputs (fastrnn/modules.py)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()  # entering an autocast context costs ~5 us a call


def layer_function(get_ext: Callable[[], object]) -> type:
    """A torch.autograd.Function running one layer through get_ext().forward/backward."""

    class _Layer(torch.autograd.Function):
        """One layer, all directions.  Inputs: x, h0, c0, then per direction
        w_ih, w_hh, b_ih, b_hh, w_hr (None where absent)."""

        @staticmethod
        def forward(ctx, cell, batch_sizes, x, h0, c0, *flat):
            D = len(flat) // 5
            ws = [flat[5 * d:5 * d + 5] for d in range(D)]
            with no_autocast(x.device.type):
                out, hn, cn, saved = get_ext().forward(
                    cell, x, batch_sizes, h0, c0, [w[0] for w in ws], [w[1] for w in ws], [w[2] for w in ws],
                    [w[3] for w in ws], [w[4] for w in ws], True)
            ctx.cell, ctx.batch_sizes, ctx.D = cell, batch_sizes, D
            ctx.has = [[w is not None for w in ws_d] for ws_d in ws]
            # Intermediates (gate activations, c_{t-1}, tanh(c_t), h_{t-1}) go through
            # save_for_backward too, so saved-tensor hooks (checkpointing, CPU offload) see them.
            ctx.n_saved = len(saved)
            ctx.save_for_backward(*saved, x, h0, c0, *[w for ws_d in ws for w in (ws_d[0], ws_d[1], ws_d[4])])
            return out, hn, cn

        @staticmethod
        @once_differentiable
        def backward(ctx, dout, dhn, dcn):
            tensors = ctx.saved_tensors
            saved = list(tensors[:ctx.n_saved])
            x, h0, c0, *w = tensors[ctx.n_saved:]
            D = ctx.D
            w_ih, w_hh, w_hr = w[0::3], w[1::3], w[2::3]
            need = ctx.needs_input_grad  # (cell, batch_sizes, x, h0, c0, *flat)
            need_dw = any(need[5:])
            if dout is None:
                dout = x.new_zeros(x.size(0), D * h0.size(2))
            if dhn is None:
                dhn = torch.zeros_like(h0)
            if c0 is not None and dcn is None:
                dcn = torch.zeros_like(c0)
            with no_autocast(x.device.type):
                res = get_ext().backward(ctx.cell, x, ctx.batch_sizes, h0, c0, list(w_ih), list(w_hh),
                                         list(w_hr), saved, dout.contiguous(), dhn.contiguous(), contiguous(dcn),
                                         bool(need[2]), need_dw)
            dx, dh0, dc0 = res[0], res[1], res[2]
            grads = []
            if need_dw:
                for d in range(D):
                    g = res[3 + 5 * d:8 + 5 * d]
                    grads += [gi if (has and need[5 + 5 * d + i]) else None
                              for i, (gi, has) in enumerate(zip(g, ctx.has[d]))]
            else:
                grads = [None] * (5 * D)
            return (None, None, dx if need[2] else None, dh0 if need[3] else None,
                    dc0 if (c0 is not None and need[4]) else None, *grads)

    return _Layer


def run_layer(function: type, ext, cell, x, batch_sizes, h0, c0, weights):
    """`reference.rnn_layer`'s signature over an extension; `function` is layer_function(...) of it.

    Inputs are made contiguous (the extensions require it and never copy); batch_sizes becomes
    int64.  Autograd is only engaged when some input requires grad.
    """
    x, h0, c0 = x.contiguous(), h0.contiguous(), contiguous(c0)
    flat = [contiguous(w) for ws in weights for w in ws]  # 5 per direction
    bs = batch_sizes if batch_sizes is None or batch_sizes.dtype == torch.int64 else batch_sizes.long()
    if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad)
                                    or any(w is not None and w.requires_grad for w in flat)):
        return function.apply(cell, bs, x, h0, c0, *flat)
    args = (cell, x, bs, h0, c0, flat[0::5], flat[1::5], flat[2::5], flat[3::5], flat[4::5], False)
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        with no_autocast(x.device.type):
            out, hn, cn, _ = ext.forward(*args)
    else:  # entering even a null context costs ~1 us, a few percent of a small call
        out, hn, cn, _ = ext.forward(*args)
    return out, hn, cn
