"""`cpp` backend: fused C++ CPU kernels (the compiled extension `fastrnn._ext`, csrc/).

One C++ call runs a whole layer (both directions): the input projection of every step
as one GEMM, then the time loop in C++ with one recurrent GEMM and one fused,
vectorised pointwise pass per step.  Backward is one C++ call per layer too: the reverse
loop, then every weight gradient as one GEMM over all steps.  Same op signature as
`reference.rnn_layer`:

    rnn_layer(cell, x, batch_sizes, h0, c0, weights) -> (out, hn, cn)

float32 and float64 natively; float16/bfloat16 are computed in float32 (fp32 state and
accumulation, like the reference) and cast back.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastrnn.backends.native import onednn_lstm_applies
from fastrnn.backends import ALL_DTYPES, Backend, LayerCall

_HALF = (torch.float16, torch.bfloat16)
_ext = None


def _load():
    global _ext
    try:
        from fastrnn import _ext as ext
    except ImportError as e:
        raise ImportError(
            "the C++ extension fastrnn._ext is not built or does not load "
            f"({e}); build it with `pip install --no-build-isolation -e .` (needs a C++ compiler, "
            "cmake and the torch this extension was built against)") from e
    _ext = ext
    import sys
    return sys.modules[__name__]


def _c(t):
    return None if t is None else t.contiguous()


class _Layer(torch.autograd.Function):
    """One layer, all directions.  Inputs: x, h0, c0, then per direction
    w_ih, w_hh, b_ih, b_hh, w_hr (None where absent)."""

    @staticmethod
    def forward(ctx, cell, batch_sizes, x, h0, c0, *flat):
        D = len(flat) // 5
        ws = [flat[5 * d:5 * d + 5] for d in range(D)]
        out, hn, cn, saved = _ext.forward(
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
            dout = torch.zeros(x.size(0), D * h0.size(2), dtype=x.dtype)
        if dhn is None:
            dhn = torch.zeros_like(h0)
        if c0 is not None and dcn is None:
            dcn = torch.zeros_like(c0)
        res = _ext.backward(ctx.cell, x, ctx.batch_sizes, h0, c0, list(w_ih), list(w_hh), list(w_hr), saved,
                            dout.contiguous(), dhn.contiguous(), _c(dcn), bool(need[2]), need_dw)
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


def rnn_layer(cell, x, batch_sizes, h0, c0, weights):
    out_dtype = x.dtype
    if out_dtype in _HALF:  # fp32 math for half types (fp32 state and accumulation)
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        x, h0, c0 = f32(x), f32(h0), f32(c0)
        weights = [tuple(f32(w) for w in ws) for ws in weights]
    x, h0, c0 = x.contiguous(), h0.contiguous(), _c(c0)
    weights = [tuple(_c(w) for w in ws) for ws in weights]
    bs = batch_sizes if batch_sizes is None or batch_sizes.dtype == torch.int64 else batch_sizes.long()
    tensors = [x, h0, c0] + [w for ws in weights for w in ws]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        flat = [w for ws in weights for w in ws]
        out, hn, cn = _Layer.apply(cell, bs, x, h0, c0, *flat)
    else:
        out, hn, cn, _ = _ext.forward(cell, x, bs, h0, c0, [w[0] for w in weights], [w[1] for w in weights],
                                      [w[2] for w in weights], [w[3] for w in weights],
                                      [w[4] for w in weights], False)
    if out_dtype in _HALF:
        out, hn = out.to(out_dtype), hn.to(out_dtype)
        cn = None if cn is None else cn.to(out_dtype)
    return out, hn, cn


def _prefer(call: LayerCall) -> tuple[bool, str]:
    """Auto's veto: hand the call to torch where torch measured faster.

    torch runs float32 LSTM without projection on padded input through oneDNN's fused
    LSTM primitive (its own JIT GEMMs with pre-packed weights), which beat our loop over
    MKL's sgemm on the 2-core AMD EPYC (torch 2.13, 1 thread, min of 9, fwd / fwd+bwd):
    T100 B64 H512 377 / 1122 ms vs ours 397 / 1143; T200 B8 H256 24 / 70 vs 32 / 85;
    T100 B1 H128 0.92 / 2.7 vs 1.06 / 3.4.  Every other LSTM call takes torch's native
    path, which we beat: packed T100 B16 H256 33 / 162 vs 17 / 69 ms; proj 34 / 76 vs
    26 / 75; float64 92 / 324 vs 81 / 258; bfloat16 296 / 1936 vs 26 / 76.  GRU and RNN
    have no oneDNN path in torch, and we measured faster on every case tried.
    """
    if onednn_lstm_applies(call):
        return False, "torch's oneDNN LSTM is faster for float32 LSTM without projection on padded input"
    return True, ""


BACKEND = Backend(
    name="cpp",
    devices=frozenset(("cpu",)),
    dtypes=ALL_DTYPES,
    load=_load,
    prefer=_prefer,
)
