"""Reference backend: pure torch ops in a Python loop over time. The oracle.

It defines the op signature every backend implements:

    rnn_layer(cell, x, batch_sizes, h0, c0, weights) -> (out, hn, cn)

    cell         "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x            [N, I] time-major rows. Padded input [T, B, I] is passed as
                 x.view(T*B, I) with batch_sizes=None; packed input is
                 PackedSequence.data with its batch_sizes.
    batch_sizes  None (every step has B = h0.size(1) rows) or a 1-D int64 CPU
                 tensor [T], non-increasing, sum = N (PackedSequence.batch_sizes)
    h0           [D, B, Hout]   Hout = proj_size or hidden_size; D = 1 or 2
    c0           [D, B, H] for lstm, else None
    weights      D tuples (w_ih [G*H, I], w_hh [G*H, Hout], b_ih [G*H] | None,
                 b_hh [G*H] | None, w_hr [Hout, H] | None); direction 1 runs
                 the sequence backwards
    returns      out [N, D*Hout] (direction d in columns d*Hout:(d+1)*Hout),
                 hn [D, B, Hout], cn [D, B, H] for lstm else None

Everything is differentiable by autograd. fp16/bf16 inputs are computed in
fp32 (fp32 accumulation and cell state) and the results cast back, which is
what the fused kernels do too.
"""
from __future__ import annotations

import torch

from fastrnn.backends import ALL_DTYPES, Backend, this_module
from fastrnn.cells import pointwise

_HALF = (torch.float16, torch.bfloat16)


def _direction(cell, gi, sizes, offsets, h0, c0, w_hh, b_hh, w_hr, reverse):
    """Run one direction over precomputed input projections gi [N, G*H]."""
    T = len(sizes)
    outs = [None] * T
    if not reverse:
        h, c = h0, c0
        done_h, done_c = [], []
        for t in range(T):
            bs = sizes[t]
            if bs < h.size(0):  # sequences that ended at t-1 keep their last state
                done_h.append(h[bs:])
                h = h[:bs]
                if c is not None:
                    done_c.append(c[bs:])
                    c = c[:bs]
            h, c = _step(cell, gi[offsets[t]:offsets[t] + bs], h, c, w_hh, b_hh, w_hr)
            outs[t] = h
        hn = torch.cat([h] + done_h[::-1]) if done_h else h
        cn = (torch.cat([c] + done_c[::-1]) if done_c else c) if c is not None else None
    else:
        first = sizes[-1] if T else h0.size(0)
        h = h0[:first]
        c = c0[:first] if c0 is not None else None
        for t in range(T - 1, -1, -1):
            bs = sizes[t]
            if bs > h.size(0):  # longer sequences start here, from their initial state
                h = torch.cat([h, h0[h.size(0):bs]])
                if c is not None:
                    c = torch.cat([c, c0[c.size(0):bs]])
            h, c = _step(cell, gi[offsets[t]:offsets[t] + bs], h, c, w_hh, b_hh, w_hr)
            outs[t] = h
        hn, cn = h, c
    out = torch.cat(outs) if T else gi.new_zeros(0, h0.size(1))
    return out, hn, cn


def _step(cell, gi_t, h, c, w_hh, b_hh, w_hr):
    gh = h @ w_hh.t()
    if b_hh is not None:
        gh = gh + b_hh
    h, c = pointwise(cell, gi_t, gh, h, c)
    if w_hr is not None:
        h = h @ w_hr.t()
    return h, c


def step_rows(x, batch_sizes, B: int):
    """Rows per step and each step's first row in x [N, I]: `sizes` [T] and `offsets` [T + 1]
    (padded input: B rows a step; packed: batch_sizes)."""
    if batch_sizes is None:
        sizes = [B] * (x.size(0) // B if B else 0)
    else:
        sizes = [int(s) for s in batch_sizes]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    return sizes, offsets


def rnn_layer(cell, x, batch_sizes, h0, c0, weights):
    out_dtype = x.dtype
    if out_dtype in _HALF:  # fp32 math for half types, like the fused kernels
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        x, h0, c0 = f32(x), f32(h0), f32(c0)
        weights = [tuple(f32(w) for w in ws) for ws in weights]
    sizes, offsets = step_rows(x, batch_sizes, h0.size(1))
    outs, hns, cns = [], [], []
    for d, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(weights):
        gi = x @ w_ih.t()
        if b_ih is not None:
            gi = gi + b_ih
        o, h, c = _direction(cell, gi, sizes, offsets, h0[d], None if c0 is None else c0[d],
                             w_hh, b_hh, w_hr, reverse=d == 1)
        outs.append(o)
        hns.append(h)
        cns.append(c)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    hn = torch.stack(hns)
    cn = torch.stack(cns) if c0 is not None else None
    if out_dtype in _HALF:
        out, hn = out.to(out_dtype), hn.to(out_dtype)
        cn = None if cn is None else cn.to(out_dtype)
    return out, hn, cn


BACKEND = Backend(
    name="reference",
    devices=frozenset(("cpu", "cuda")),
    dtypes=ALL_DTYPES,
    auto=False,  # the oracle is never the default
    load=this_module(__name__),
)
