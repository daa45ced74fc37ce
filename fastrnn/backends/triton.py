"""`triton` backend: fused Triton step kernels (`fastrnn.kernels.triton.rnn`), one layer at a time.

Same op signature as `reference.rnn_layer`. Per layer:
  1. `gi = x @ W_ih^T + b_ih` for every step and both directions: one torch GEMM.
  2. The recurrence: one fused kernel launch per step and direction (two with proj_size),
     writing out/h_t, the fp32 (fp64) cell state and the activations backward needs.
  3. Backward: one fused kernel per reverse step (gate gradients and dh_{t-1} = dG W_hh),
     then dW_hh, dW_ih, dW_hr, biases, dx, dh0, dc0 as one GEMM/reduction each over all steps.

Design limit, stated plainly: step 2 (and its backward) is a host loop over time steps. That is
acceptable only because on CUDA the whole loop is captured once per shape in a CUDA graph and
replayed (`_run_graphed`), so the per-step cost is a graph node, not a Python launch. Under the
Triton interpreter (CPU tensors, tests only) the loop runs as plain launches. For small hidden
sizes (W_hh fits one program's registers, `_PERSISTENT_MAX_H`) and no proj_size, forward and
backward are instead one persistent launch per direction each (`fwd_seq`, `bwd_seq`).

The layer is the custom op `torch.ops.fastrnn.triton_layer` (autograd through
`triton_layer_backward`, fake implementations for shapes): torch.compile treats it as one opaque
node, without a graph break. No double backward.

Devices: CUDA; CPU tensors only when the kernels were defined under TRITON_INTERPRET=1 (tests).
auto never picks this backend for CPU tensors, nor for float64 (it compiles to DMMA on sm_90, but
nobody has measured it against cuDNN yet), but either can be asked for by name.

Environment: FASTRNN_TRITON_GRAPHS (default 16): how many CUDA graphs to keep (0 disables capture);
FASTRNN_TRITON_PERSISTENT_MAX_H: largest hidden size for the persistent forward (0 disables it).
"""
from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
import functools
from functools import lru_cache
from typing import List, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from fastrnn.backends import ALL_DTYPES, Backend
from fastrnn.cells import gates

_HALF = (torch.float16, torch.bfloat16)
_K = None  # fastrnn.kernels.triton.rnn, imported by _load()


def _load():
    global _K
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the triton backend needs the `triton` package ({e}); pip install triton") from e
    from fastrnn.kernels.triton import rnn
    interpreted = type(rnn._fwd_step_kernel).__name__ == "InterpretedFunction"
    if not interpreted and not torch.cuda.is_available():
        raise ImportError("no CUDA device, and the Triton kernels were not defined under TRITON_INTERPRET=1 "
                          "(set it before importing fastrnn to run them on CPU tensors, for tests)")
    _K = rnn
    _register_ops()
    return sys.modules[__name__]


def _interpreted() -> bool:
    return _K is not None and type(_K._fwd_step_kernel).__name__ == "InterpretedFunction"


def _check(call):
    if call.device == "cpu" and not (os.environ.get("TRITON_INTERPRET") == "1" and _interpreted()):
        return False, "runs on CPU tensors only under TRITON_INTERPRET=1 (the Triton interpreter, for tests)"
    return True, ""


BACKEND = Backend(name="triton", devices=frozenset(("cuda", "cpu")), dtypes=ALL_DTYPES,
                  load=_load, check=_check)


# ---------------------------------------------------------------------------------------------
# Step plan: which rows each kernel launch touches (PackedSequence semantics), cached per shape.

class _Plan:
    """For each direction, the steps in processing order as (row offset, rows, n_prev, prev offset),
    and the gather indices the GEMMs after the loops need."""

    def __init__(self, sizes: tuple, B: int, D: int, device):
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        N, T = int(offs[-1]), len(sizes)
        self.steps, self.last_row, self.first_row, self.prev_row = [], [], [], []
        for d in range(D):
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            steps, prev_off, prev_bs = [], 0, 0
            last = np.zeros(B, np.int64)       # row holding each sequence's final h (hn)
            first = np.zeros(B, np.int64)      # row whose h_prev came from h0 (dh0 gathers there)
            prev_row = np.zeros(N, np.int64)   # source row of h_prev in cat([out_d, h0_d]) (dW_hh)
            for k, t in enumerate(order):
                off, bs = int(offs[t]), sizes[t]
                n_prev = min(prev_bs, bs) if k else 0
                steps.append((off, bs, n_prev, prev_off))
                rows = np.arange(bs)
                last[:bs] = off + rows
                first[n_prev:bs] = off + rows[n_prev:]
                prev_row[off:off + bs] = np.where(rows < n_prev, prev_off + rows, N + rows)
                prev_off, prev_bs = off, bs
            self.steps.append(steps)
            for name, arr in (("last_row", last), ("first_row", first), ("prev_row", prev_row)):
                getattr(self, name).append(torch.from_numpy(arr).to(device))
        self.sizes = torch.tensor(sizes, dtype=torch.int32, device=device)
        self.offsets = torch.tensor(offs[:-1], dtype=torch.int32, device=device)


@lru_cache(maxsize=64)
def _plan(sizes: tuple, B: int, D: int, device: str) -> _Plan:
    return _Plan(sizes, B, D, torch.device(device))


# ---------------------------------------------------------------------------------------------
# CUDA graphs: the per-step launch loops are captured once per shape and replayed.

_GRAPHS: OrderedDict = OrderedDict()
_GRAPH_LOCK = threading.RLock()
_SEEN: OrderedDict = OrderedDict()
_POISON = os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("FASTRNN_TRITON_POISON") == "1"


def _new(shape, dtype, device):
    # Under the interpreter (tests) every buffer starts as NaN, so an element no kernel wrote fails.
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _graphs_wanted(first) -> bool:
    cap = int(os.environ.get("FASTRNN_TRITON_GRAPHS", "16"))
    return cap > 0 and first.is_cuda and not torch.cuda.is_current_stream_capturing()


def _capture_cuda(fn, static_in):
    """Capture fn(*static_in) in a CUDA graph; returns (replay, static outputs).
    thread_local: an unsafe CUDA call from another thread (a pin-memory worker, say) must
    not invalidate this capture."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        static_out = fn(*static_in)
    return graph.replay, static_out


_CAPTURE = _capture_cuda  # tests swap in a CPU stand-in to check the caching logic


def _run_graphed(key, fn, inputs):
    """fn(*inputs) -> list of tensors/None. On CUDA, replays a graph captured for `key`; the
    graph reads copies of the inputs and its outputs are cloned, because autograd keeps them
    alive across later replays (two layers of one shape share a graph). Under a capture of the
    caller's own, or with FASTRNN_TRITON_GRAPHS=0, the launches just run."""
    first = next(t for t in inputs if t is not None)
    if not _graphs_wanted(first):
        return fn(*inputs)
    # A graph's static buffers serve one call at a time: graphs are kept per stream, and the
    # copy-in / replay / clone-out of one call is never interleaved with another thread's.
    stream = torch.cuda.current_stream(first.device).cuda_stream if first.is_cuda else 0
    key = (key, first.device.index, stream,
           tuple(None if t is None else (t.shape, t.dtype) for t in inputs))
    with _GRAPH_LOCK:
        return _run_graphed_locked(key, fn, inputs)


def _run_graphed_locked(key, fn, inputs):
    entry = _GRAPHS.get(key)
    if entry is None and _SEEN.get(key, 0) < 1:
        # Capture on the second call of a shape: variable-length packed batches change shape on
        # every call, and capturing each of them once would only add cost.
        _SEEN[key] = _SEEN.get(key, 0) + 1
        while len(_SEEN) > 1024:
            _SEEN.popitem(last=False)
        return fn(*inputs)
    if entry is None:
        static_in = [None if t is None else t.clone() for t in inputs]
        result = fn(*static_in)  # eager run on the same buffers: compiles every kernel before capture
        replay, static_out = _CAPTURE(fn, static_in)
        _GRAPHS[key] = (replay, static_in, static_out)
        while len(_GRAPHS) > int(os.environ.get("FASTRNN_TRITON_GRAPHS", "16")):
            _GRAPHS.popitem(last=False)
        return result
    _GRAPHS.move_to_end(key)
    replay, static_in, static_out = entry
    for s, t in zip(static_in, inputs):
        if s is not None:
            s.copy_(t)
    replay()
    return [None if t is None else t.clone() for t in static_out]


# ---------------------------------------------------------------------------------------------
# The two recurrences (pure functions of tensors, so they can be captured).

class _Cfg(NamedTuple):
    cell: str
    sizes: tuple       # rows per time step
    B: int
    H: int
    Hout: int
    D: int
    dtype: torch.dtype
    acc: torch.dtype   # accumulation / cell-state / saved-activation dtype
    prec: str          # tl.dot input_precision for fp32
    proj: bool
    store_s: bool      # save activations for backward
    persist: bool      # forward by the persistent whole-sequence kernel
    device: str


# Largest H whose W_hh (all gates) one persistent program keeps in registers without spilling,
# read off the sm_90 compile report (python -m fastrnn.kernels.triton.aot; 8 warps, maxnreg 255):
# bf16/fp16 at BLOCK_H=64: LSTM 183 registers forward, 202 backward, H=128 spills; fp32 ("ieee"
# FMA dot) at BLOCK_H=32: 241/220, H=64 spills; fp64 spills already at H=16, so never. The kernels
# use one BLOCK_H per dtype (kernels.triton.rnn.SEQ_BLOCK_H), so one compile per variant;
# tests/test_triton_compile.py keeps every variant spill-free.
# Estimates from the compiler, not timings: a GPU session must measure where it beats the step path.
_PERSISTENT_MAX_H = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32, torch.float64: 0}


def _persistent(cell, H, proj, dtype):
    """Whether the forward runs as one persistent launch per direction (no proj_size support).
    FASTRNN_TRITON_PERSISTENT_MAX_H overrides the limit for every dtype (0: always step kernels)."""
    env = os.environ.get("FASTRNN_TRITON_PERSISTENT_MAX_H")
    limit = int(env) if env else _PERSISTENT_MAX_H[dtype]
    return not proj and H <= limit


def _fwd_loops(cfg, gi, h0, c0, bs_dev, off_dev, *w):
    cell, sizes, B, H, Hout, D, dtype, acc, prec, proj, store_s, persist, device = cfg
    K, cid = _K, _K.CELL_IDS[cell]
    tl_acc = _tl_dtype(acc)
    G = K.GATES[cid]
    plan = _plan(sizes, B, D, device)
    N = gi.size(0)
    out = _new((N, D * Hout), dtype, gi.device)
    hn = _new((D, B, Hout), dtype, gi.device) if persist else None
    cn = _new((D, B, H), acc, gi.device) if persist and cell == "lstm" else None
    res = [out, hn, cn]
    for d in range(D):
        w_hh, b_hh, w_hr = w[3 * d:3 * d + 3]
        S = _new((N, K.SAVED[cid] * H), acc, gi.device) if store_s else None
        C = _new((N, H), acc, gi.device) if cell == "lstm" else None
        R = _new((N, H), dtype, gi.device) if proj else None
        o = out[:, d * Hout:]
        g = gi[:, d * G * H:]
        res += [S, C, R]
        if persist:
            K.fwd_seq(cid, g, h0[d], None if c0 is None else c0[d], w_hh, b_hh, o, C, S, hn[d],
                      None if cn is None else cn[d], bs_dev, off_dev, len(sizes), B, H, d == 1, tl_acc, prec)
            continue
        for off, bs, n_prev, poff in plan.steps[d]:
            K.fwd_step(cid, g[off:], o[poff:], h0[d], None if C is None else C[poff:],
                       None if c0 is None else c0[d], w_hh, b_hh,
                       R[off:] if proj else o[off:], None if C is None else C[off:],
                       None if S is None else S[off:], bs, n_prev, H, Hout, tl_acc, prec)
            if proj:  # h_t = W_hr r_t
                K.bwd_step(K.NONE, None, R[off:], w_hr, 1, w_hr.stride(0), None, None, None, None, None,
                           None, None, None, None, o[off:], None, None,
                           bs, bs, 0, 0, Hout, H, tl_acc, prec)
    return res


def _bwd_loops(cfg, dout, dhn, dcn, out, h0, c0, bs_dev, off_dev, *rest):
    """Returns [dh0, dc0] (persistent kernel; None for the step kernels, whose dh0/dc0 the caller
    gathers) + [dG, E, DGN, dH] per direction."""
    cell, sizes, B, H, Hout, D, dtype, acc, prec, proj, _, persist, device = cfg
    K, cid = _K, _K.CELL_IDS[cell]
    tl_acc = _tl_dtype(acc)
    G = K.GATES[cid]
    gdt = dtype if dtype in _HALF else acc
    plan = _plan(sizes, B, D, device)
    N = out.size(0)
    dh0 = _new((D, B, Hout), acc, out.device) if persist else None
    dc0 = _new((D, B, H), acc, out.device) if persist and cell == "lstm" else None
    res = [dh0, dc0]
    for d in range(D):
        S, C, R, w_hh, w_hr = rest[5 * d:5 * d + 5]
        dG = _new((N, G * H), gdt, out.device)
        E = _new((N, H), acc, out.device) if cell in ("lstm", "gru") and not persist else None
        DGN = _new((N, H), gdt, out.device) if cell == "gru" else None
        dH = _new((N, Hout), acc, out.device) if proj else None
        o, dy = out[:, d * Hout:], dout[:, d * Hout:]
        dcn_d = dcn[d] if cell == "lstm" else None
        res += [dG, E, DGN, dH]
        if persist:
            K.bwd_seq(cid, dy, dhn[d], dcn_d, w_hh, S, C, None if c0 is None else c0[d], o, h0[d], dG, DGN,
                      dh0[d], None if dc0 is None else dc0[d], bs_dev, off_dev, len(sizes), B, H, d == 1,
                      tl_acc, prec)
            continue
        steps = plan.steps[d]
        for k in range(len(steps) - 1, -1, -1):
            off, bs, n_prev, poff = steps[k]
            off_next, _, n_next, _ = steps[k + 1] if k + 1 < len(steps) else (0, 0, 0, 0)
            nxt = dG[off_next:]
            e_next = None if E is None else E[off_next:]
            cp = None if C is None else C[poff:]
            c0d = None if c0 is None else c0[d]
            if proj:  # dh = dout + dG_{t+1} W_hh (or dhn), then dr = dh W_hr inside the LSTM step
                K.bwd_step(K.NONE, dy[off:], nxt, w_hh, w_hh.stride(0), 1, dhn[d], None, None, None, None,
                           None, None, None, None, dH[off:], None, None,
                           bs, n_next, 0, 0, Hout, G * H, tl_acc, prec)
                K.bwd_step(cid, None, dH[off:], w_hr, w_hr.stride(0), 1, None, e_next, dcn_d, S[off:], C[off:],
                           cp, c0d, None, None, dG[off:], None, E[off:],
                           bs, bs, n_next, n_prev, H, Hout, tl_acc, prec)
            else:
                K.bwd_step(cid, dy[off:], nxt, w_hh, w_hh.stride(0), 1, dhn[d], e_next, dcn_d, S[off:],
                           None if C is None else C[off:], cp, c0d, o[poff:], h0[d], dG[off:],
                           None if DGN is None else DGN[off:], None if E is None else E[off:],
                           bs, n_next, n_next, n_prev, H, G * H, tl_acc, prec)
    return res


def _tl_dtype(acc):
    import triton.language as tl
    return tl.float64 if acc == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------------------
# autograd

def _config(cell, sizes, x, h0, weights, store_s) -> _Cfg:
    D, w_hh, proj = len(weights), weights[0][1], weights[0][4] is not None
    H = w_hh.size(0) // gates(cell)
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    prec = "tf32" if (x.is_cuda and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    return _Cfg(cell, sizes, h0.size(1), H, h0.size(2), D, dtype, acc, prec, proj, store_s,
                _persistent(cell, H, proj, dtype), str(x.device))


def _sizes(batch_sizes, x, B) -> tuple:
    if batch_sizes is None:
        sizes = (B,) * (x.size(0) // B)
    else:
        sizes = tuple(int(s) for s in batch_sizes)
        if sizes[0] != B or any(a < b for a, b in zip(sizes, sizes[1:])) or sizes[-1] < 1:
            raise ValueError(f"fastrnn triton: batch_sizes must be non-increasing, positive and start at "
                             f"h0.size(1)={B}; got {list(sizes)}")
    if sum(sizes) != x.size(0):
        raise ValueError(f"fastrnn triton: input has {x.size(0)} rows but the steps cover {sum(sizes)}")
    return sizes


def _split(flat):
    return [tuple(None if t is None else t.contiguous() for t in flat[5 * d:5 * d + 5])
            for d in range(len(flat) // 5)]


def _on_input_device(fn):
    """Triton launches on the current CUDA device and stream: make that the tensors' device
    (a model on cuda:1 with cuda:0 current would otherwise launch on the wrong device)."""
    @functools.wraps(fn)
    def wrapper(cell, batch_sizes, x, *args):
        if x.is_cuda:
            with torch.cuda.device(x.device):
                return fn(cell, batch_sizes, x, *args)
        return fn(cell, batch_sizes, x, *args)
    return wrapper


@_on_input_device
def layer_forward(cell, batch_sizes, x, h0, c0, flat, store_s):
    """Forward of one layer. Returns [out, hn, cn, (S, C, R) per direction]; an empty tensor
    stands for an absent one (cn of non-LSTM cells, S without grad, C without cell state,
    R without proj_size). S/C/R are what `layer_backward` needs."""
    weights = _split(flat)
    sizes = _sizes(batch_sizes, x, h0.size(1))
    cfg = _config(cell, sizes, x, h0, weights, store_s)
    D, B, Hout, acc = cfg.D, cfg.B, cfg.Hout, cfg.acc
    x = x.contiguous()
    w_ih = torch.cat([w[0] for w in weights]) if D > 1 else weights[0][0]
    if weights[0][2] is not None:
        b_ih = torch.cat([w[2] for w in weights]) if D > 1 else weights[0][2]
        gi = torch.addmm(b_ih, x, w_ih.t())
    else:
        gi = x @ w_ih.t()
    wl = [t for w in weights for t in (w[1], w[3], w[4])]
    plan = _plan(sizes, B, D, str(x.device))
    res = _run_graphed(("fwd", cfg), lambda *a: _fwd_loops(cfg, *a),
                       [gi, h0.contiguous(), None if c0 is None else c0.to(acc).contiguous(),
                        plan.sizes, plan.offsets, *wl])
    out, hn, cn = res[:3]
    if hn is None:  # step kernels: gather each sequence's last h (and c)
        hn = torch.stack([out[:, d * Hout:(d + 1) * Hout][plan.last_row[d]] for d in range(D)])
        if cell == "lstm":
            cn = torch.stack([res[4 + 3 * d][plan.last_row[d]] for d in range(D)])
    # custom-op outputs may not alias each other: every absent one gets its own empty tensor
    cn = x.new_empty(0) if cn is None else cn.to(x.dtype)
    return [out, hn, cn] + [x.new_empty(0) if t is None else t for t in res[3:]]


@_on_input_device
def layer_backward(cell, batch_sizes, x, h0, c0, flat, fwd_out, dout, dhn, dcn, need_dx):
    """Backward of `layer_forward`: [dx, dh0, dc0, d(flat)...]; empty tensors for absent ones."""
    weights = _split(flat)
    sizes = _sizes(batch_sizes, x, h0.size(1))
    cfg = _config(cell, sizes, x, h0, weights, True)
    D, B, H, Hout, dtype, acc, proj = cfg.D, cfg.B, cfg.H, cfg.Hout, cfg.dtype, cfg.acc, cfg.proj
    out, per_dir = fwd_out[0], fwd_out[3:]
    if any(per_dir[3 * d].numel() == 0 for d in range(D)):
        raise RuntimeError("fastrnn triton: the forward ran without saving activations (no grad was required)")
    none_if_empty = lambda t: None if t is None or t.numel() == 0 else t  # noqa: E731
    x, h0 = x.contiguous(), h0.contiguous()
    c0 = None if c0 is None else c0.to(acc).contiguous()
    rest = []
    for d in range(D):
        rest += [none_if_empty(t) for t in per_dir[3 * d:3 * d + 3]] + [weights[d][1], weights[d][4]]
    plan = _plan(sizes, B, D, cfg.device)
    dcn = dcn.contiguous() if cell == "lstm" else None
    res = _run_graphed(("bwd", cfg), lambda *a: _bwd_loops(cfg, *a),
                       [dout.contiguous(), dhn.contiguous(), dcn, out, h0, c0, plan.sizes, plan.offsets, *rest])
    dh0_all, dc0_all, res = res[0], res[1], res[2:]

    empty = lambda: x.new_empty(0)  # noqa: E731  (one per absent output: outputs may not alias)
    dgi, dh0, dc0, grads = [], [], [], []
    for d in range(D):
        dG, E, DGN, dH = res[4 * d:4 * d + 4]
        S, C, R, w_hh, w_hr = rest[5 * d:5 * d + 5]
        if dh0_all is None:  # step kernels: each row's dh0 is dG W_hh at the step it started from h0
            first = plan.first_row[d]
            dh = (dG[first] @ w_hh.to(dG.dtype)).to(acc)
            if cell == "gru":
                dh = dh + E[first]
            dh0.append(dh.to(dtype))
            if cell == "lstm":
                dc0.append(E[first].to(dtype))
        g = dG if cell != "gru" else torch.cat([dG[:, :2 * H], DGN], 1)  # gate grads of W_ih x
        dgi.append(g)
        h_prev = torch.cat([out[:, d * Hout:(d + 1) * Hout], h0[d]])[plan.prev_row[d]].to(dG.dtype)
        has_bias = weights[d][2] is not None
        grads += [(g.t() @ x.to(g.dtype)).to(dtype), (dG.t() @ h_prev).to(dtype),
                  g.sum(0, dtype=acc).to(dtype) if has_bias else empty(),
                  dG.sum(0, dtype=acc).to(dtype) if has_bias else empty(),
                  (dH.to(R.dtype).t() @ R).to(dtype) if proj else empty()]
    dx = empty()
    if need_dx:
        dx = sum((dgi[d] @ weights[d][0].to(dgi[d].dtype)) for d in range(D)).to(dtype)
    if dh0_all is not None:
        dh0, dc0 = list(dh0_all.to(dtype)), None if dc0_all is None else list(dc0_all.to(dtype))
    return [dx, torch.stack(dh0), torch.stack(dc0) if cell == "lstm" else empty(), *grads]


# ---------------------------------------------------------------------------------------------
# torch.library ops: opaque to torch.compile (no graph break at this layer), with fake
# (shape-only) implementations and autograd. Registered by _load().

def _unpack(weights, present):
    """The op takes the present weights only (autograd of custom ops cannot see through a list
    holding None); `present` marks which of the 5*D slots (w_ih, w_hh, b_ih, b_hh, w_hr) they fill."""
    it = iter(weights)
    return [next(it) if p else None for p in present]


def _fake_forward(cell, batch_sizes, x, h0, c0, weights, present, store_s):
    flat = _unpack(weights, present)
    N, D, B, Hout = x.size(0), len(flat) // 5, h0.size(1), h0.size(2)
    H = flat[1].size(0) // gates(cell)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    e = lambda: x.new_empty(0)  # noqa: E731
    res = [x.new_empty(N, D * Hout), x.new_empty(D, B, Hout), x.new_empty(D, B, H) if cell == "lstm" else e()]
    for _ in range(D):
        res += [x.new_empty(N, _K.SAVED[_K.CELL_IDS[cell]] * H, dtype=acc) if store_s else e(),
                x.new_empty(N, H, dtype=acc) if cell == "lstm" else e(),
                x.new_empty(N, H) if flat[4] is not None else e()]
    return res


def _fake_backward(cell, batch_sizes, x, h0, c0, weights, present, fwd_out, dout, dhn, dcn, need_dx):
    e = lambda: x.new_empty(0)  # noqa: E731
    return [torch.empty_like(x) if need_dx else e(), torch.empty_like(h0),
            torch.empty_like(c0) if cell == "lstm" else e()] + [torch.empty_like(w) for w in weights]


def _setup_context(ctx, inputs, output):
    cell, batch_sizes, x, h0, c0, weights, present, store_s = inputs
    ctx.cell, ctx.batch_sizes, ctx.present, ctx.n_w = cell, batch_sizes, present, len(weights)
    ctx.need_dx = x.requires_grad
    ctx.mark_non_differentiable(*output[3:])
    ctx.save_for_backward(x, h0, c0, *weights, *output)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    x, h0, c0 = saved[:3]
    weights = list(saved[3:3 + ctx.n_w])
    fwd_out = list(saved[3 + ctx.n_w:])
    dout, dhn, dcn = (g if g is not None else torch.zeros_like(o) for g, o in zip(grads[:3], fwd_out[:3]))
    res = torch.ops.fastrnn.triton_layer_backward(
        ctx.cell, ctx.batch_sizes, x, h0, c0, weights, ctx.present, fwd_out,
        dout, dhn, dcn if ctx.cell == "lstm" else None, ctx.need_dx)
    dx = res[0] if ctx.need_dx else None
    dc0 = res[2] if ctx.cell == "lstm" else None
    return None, None, dx, res[1], dc0, list(res[3:]), None, None


def _op_forward(cell: str, batch_sizes: Optional[Tensor], x: Tensor, h0: Tensor, c0: Optional[Tensor],
                weights: List[Tensor], present: List[int], store_s: bool) -> List[Tensor]:
    return layer_forward(cell, batch_sizes, x, h0, c0, _unpack(weights, present), store_s)


def _op_backward(cell: str, batch_sizes: Optional[Tensor], x: Tensor, h0: Tensor, c0: Optional[Tensor],
                 weights: List[Tensor], present: List[int], fwd_out: List[Tensor], dout: Tensor, dhn: Tensor,
                 dcn: Optional[Tensor], need_dx: bool) -> List[Tensor]:
    res = layer_backward(cell, batch_sizes, x, h0, c0, _unpack(weights, present), fwd_out, dout, dhn, dcn, need_dx)
    return res[:3] + [g for g, p in zip(res[3:], present) if p]


def _register_ops():
    if hasattr(torch.ops.fastrnn, "triton_layer"):  # a second load (tests reload the registry)
        return
    fwd = torch.library.custom_op("fastrnn::triton_layer", _op_forward, mutates_args=())
    bwd = torch.library.custom_op("fastrnn::triton_layer_backward", _op_backward, mutates_args=())
    fwd.register_fake(_fake_forward)
    bwd.register_fake(_fake_backward)
    fwd.register_autograd(_backward, setup_context=_setup_context)


def rnn_layer(cell, x, batch_sizes, h0, c0, weights):
    """One layer, all directions; shapes as in `reference.rnn_layer`. Runs the custom op
    `torch.ops.fastrnn.triton_layer` (autograd: `triton_layer_backward`; no double backward)."""
    if _K is None:
        BACKEND.impl  # noqa: B018  (imports the kernels, or raises saying why not)
    if x.size(0) == 0 or h0.size(1) == 0:  # nothing to launch; the oracle handles the empty cases
        from fastrnn.backends import reference
        return reference.rnn_layer(cell, x, batch_sizes, h0, c0, weights)
    flat = [t for ws in weights for t in ws]
    for t in (h0, c0, *flat):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"fastrnn triton: every tensor must match the input's dtype and device "
                             f"({x.dtype}, {x.device}); got {t.dtype} on {t.device}")
    store_s = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *flat))
    res = torch.ops.fastrnn.triton_layer(cell, batch_sizes, x, h0, c0, [t for t in flat if t is not None],
                                         [int(t is not None) for t in flat], store_s)
    return res[0], res[1], (res[2] if cell == "lstm" else None)
