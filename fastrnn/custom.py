"""Cells you define yourself, fused: `CellDef`, `CustomRNN`, `LayerNormLSTM`, `LayerNormGRU`.

A cell is its pointwise step, written with torch ops::

    def step(gi, gh, *states, *params) -> tuple(new states)

    gi      [B, G*H]  x_t W_ih^T + b_ih     (G = `gates`; b_ih folded in unless bias_in_step)
    gh      [B, G*H]  h_{t-1} W_hh^T + b_hh (state 0 is h, the recurrent GEMM's input)
    states  S tensors [B, H] (h first; e.g. h, c)
    params  per-unit parameter vectors [k*H] (e.g. peephole weights, layer-norm gains);
            with bias_in_step=True, b_ih [G*H] and b_hh [G*H] come first and gi/gh arrive
            without them (layer norm of the raw products, haste's formulation)
    returns S new states [B, H]; the new h (state 0) is also the layer's output

From that one definition fastrnn derives the backward (tracing `torch.func.vjp` of the
step, once) and generates fused kernels from the traced graphs, one graph walk spelled per
language: Numba on CPU (`fastrnn.kernels.numba.custom`: per step one GEMM for the recurrent
product into a preallocated buffer, then the generated row code; backward in reverse with the
weight gradients as GEMMs after the loop; the time loop runs in C++ (`fastrnn._ext`, MKL GEMMs,
the rows through the step's Numba @cfunc entry point) from `CPP_LOOP_MIN_BATCH` rows, else in
one @njit call) and Triton on CUDA (`fastrnn.kernels.triton.custom`:
the same loop with a generated step kernel, one program per batch row; verified under
TRITON_INTERPRET=1 in CI). `backend="reference"` runs the same step in a Python loop with torch
autograd: the oracle, what runs under torch.compile, and the way to run a cell the fused path
cannot compile (which otherwise raises `UnsupportedCellError` naming the aten op).

This file reads top to bottom: cell definition -> reference loop -> fused autograd
Function -> the layer function both share -> the nn.LSTM-style module -> built-in cells.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn.backends.reference import step_rows
from fastrnn.kernels.numba.custom import CellSpec, UnsupportedCellError, generate_source, load_module, trace_cell

__all__ = ["CellDef", "CustomRNN", "LayerNormLSTM", "LayerNormGRU", "UnsupportedCellError",
           "LSTM_CELL", "GRU_CELL", "RNN_TANH_CELL", "RNN_RELU_CELL", "PEEPHOLE_LSTM_CELL", "LAYERNORM_LSTM_CELL",
           "LAYERNORM_GRU_CELL", "custom_rnn_layer", "zoneout_masks", "drop_connect", "rnn_zoneout"]

_log = logging.getLogger(__name__)
_FUSED_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------- cell definition

class CellDef:
    """One recurrent cell, defined by its pointwise step (see the module docstring).

    Args:
        step: the step function, torch ops only, no Python branching on values or shapes.
        gates: G, the number of H-row blocks in weight_ih / weight_hh.
        states: names of the states, h first (("h",) or ("h", "c")); each is [B, H].
        params: ordered {name: (k, init)}: a per-unit parameter of shape [k*H], initialised
            to the constant `init` or, with init="uniform", like torch's weights
            (U(-1/sqrt(H), 1/sqrt(H))).
        bias_in_step: pass b_ih and b_hh to the step instead of folding them into gi / gh.
        name: used in parameter-free messages and kernel file headers.
    """

    def __init__(self, step, *, gates, states=("h",), params=None, bias_in_step=False, name=None):
        if not callable(step):
            raise TypeError(f"CellDef: step must be callable, got {type(step).__name__}")
        if not isinstance(gates, int) or gates < 1:
            raise ValueError(f"CellDef: gates must be a positive int, got {gates!r}")
        states = tuple(states)
        if not states:
            raise ValueError("CellDef: a cell needs at least one state (h)")
        self.step = step
        self.gates = gates
        self.states = states
        self.params = dict(params or {})
        for k, v in self.params.items():
            if not (isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int) and v[0] > 0
                    and (v[1] == "uniform" or isinstance(v[1], numbers.Real))):
                raise ValueError(f"CellDef: params[{k!r}] must be (k: positive int, init: float | 'uniform'), "
                                 f"got {v!r}")
        self.bias_in_step = bool(bias_in_step)
        self.name = name or getattr(step, "__name__", "cell")
        self._mods = {}

    @property
    def n_states(self):
        return len(self.states)

    def _step_param_widths(self):
        return ([self.gates, self.gates] if self.bias_in_step else []) + [k for k, _ in self.params.values()]

    def __repr__(self):
        return (f"CellDef({self.name!r}, gates={self.gates}, states={self.states}, "
                f"params={list(self.params)}, bias_in_step={self.bias_in_step})")

    # -- the step with zoneout, as traced and as run by the reference loop
    def full_step(self, zoneout):
        S, name = self.n_states, self.name
        nP = len(self._step_param_widths())

        def f(gi, gh, *rest):
            states, params, masks = rest[:S], rest[S:S + nP], rest[S + nP:]
            new = self.step(gi, gh, *states, *params)
            new = (new,) if isinstance(new, torch.Tensor) else tuple(new)
            if len(new) != S:
                raise ValueError(f"cell {name!r}: step returned {len(new)} states, expected {S} {self.states}")
            if zoneout:  # m = 1 keeps the old value (zoned out); at eval m = p, the expectation.
                # m*o + (1-m)*n rather than n + m*(o-n): a kept value stays bit-exact.
                new = tuple(m * o + (1 - m) * n for n, o, m in zip(new, states, masks))
            return new
        return f

    def kernels(self, zoneout=False, backend="numba"):
        """The generated kernel module of `backend` ("numba" | "triton"): traced once per process
        (shared by both languages), generated and compiled once per process, and on disk once
        per machine. Raises UnsupportedCellError naming what cannot be fused."""
        key = (bool(zoneout), backend)
        if key not in self._mods:
            if backend == "triton":
                from fastrnn.kernels.triton.custom import generate_triton_source, load_triton_module
                self._mods[key] = load_triton_module(generate_triton_source(*self._traced(key[0])))
            else:
                self._mods[key] = load_module(generate_source(*self._traced(key[0])))
        return self._mods[key]

    def _traced(self, zoneout):
        key = ("traced", bool(zoneout))
        if key not in self._mods:
            self._mods[key] = self._trace(bool(zoneout))
        return self._mods[key]

    def check(self):
        """Trace and generate now; raise UnsupportedCellError if the fused path cannot run the cell."""
        self.kernels(False)
        return self

    def _trace(self, zoneout):
        S, G = self.n_states, self.gates
        widths = self._step_param_widths()
        full = self.full_step(zoneout)
        nz = S if zoneout else 0

        def fwd_args(B, H):
            g = torch.Generator().manual_seed(0)  # never touch the global RNG
            r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
            return ([r(B, G * H), r(B, G * H)] + [r(B, H) for _ in range(S)] + [r(k * H) for k in widths]
                    + [torch.rand(B, H, generator=g, dtype=torch.float64) for _ in range(nz)])

        def bwd_args(B, H):
            g = torch.Generator().manual_seed(1)
            return fwd_args(B, H) + [torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(S)]

        nprim = 2 + S + len(widths)

        def vjp_fn(*args):
            prim, masks, douts = args[:nprim], args[nprim:nprim + nz], args[nprim + nz:]
            _, pull = torch.func.vjp(lambda *p: full(*p, *masks), *prim)
            return pull(tuple(douts))

        spec = CellSpec(self.name, G, S, widths, not self.bias_in_step, bool(zoneout))
        return spec, trace_cell(full, vjp_fn, fwd_args, bwd_args)


# ---------------------------------------------------------------- reference (the oracle)

def _ref_direction(full, gi, sizes, offsets, states0, params, w_hh, b_hh, masks, reverse):
    """One direction in a Python loop. gi [N, G*H]; states0 S x [B, H]; masks [N, S, H] | None."""
    T = len(sizes)
    S = len(states0)
    outs = [None] * T

    def step(t, st):
        bs, o = sizes[t], offsets[t]
        gh = st[0] @ w_hh.t()
        if b_hh is not None:
            gh = gh + b_hh
        m = [] if masks is None else list(masks[o:o + bs].unbind(1))
        return list(full(gi[o:o + bs], gh, *st, *params, *m))

    if not reverse:
        st = list(states0)
        done = [[] for _ in range(S)]
        for t in range(T):
            bs = sizes[t]
            if bs < st[0].size(0):  # sequences that ended at t-1 keep their last state
                for k in range(S):
                    done[k].append(st[k][bs:])
                    st[k] = st[k][:bs]
            st = step(t, st)
            outs[t] = st[0]
        fin = [torch.cat([st[k]] + done[k][::-1]) if done[k] else st[k] for k in range(S)]
    else:
        first = sizes[-1] if T else states0[0].size(0)
        st = [s[:first] for s in states0]
        for t in range(T - 1, -1, -1):
            bs = sizes[t]
            if bs > st[0].size(0):  # longer sequences start here, from their initial state
                st = [torch.cat([st[k], states0[k][st[k].size(0):bs]]) for k in range(S)]
            st = step(t, st)
            outs[t] = st[0]
        fin = st
    out = torch.cat(outs) if T else gi.new_zeros(0, states0[0].size(1))
    return out, fin


def _ref_layer(cell, x, sizes, offsets, states0, dirs, zm):
    S = cell.n_states
    full = cell.full_step(zm is not None)
    outs, fins = [], []
    for d, w in enumerate(dirs):
        gi = x @ w["w_ih"].t()
        if w["b_ih"] is not None and not cell.bias_in_step:
            gi = gi + w["b_ih"]
        masks = None if zm is None else zm[d].view(zm.size(1), S, -1)
        o, fin = _ref_direction(full, gi, sizes, offsets, [s[d] for s in states0], _step_params(cell, w),
                                w["w_hh"], None if cell.bias_in_step else w["b_hh"], masks, reverse=d == 1)
        outs.append(o)
        fins.append(fin)
    out = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return out, [torch.stack([f[k] for f in fins]) for k in range(S)]


def _step_params(cell, w):
    """The parameter vectors the step takes, in order (b_ih, b_hh first with bias_in_step)."""
    ps = list(w["params"])
    if cell.bias_in_step:
        GH = w["w_hh"].size(0)
        z = w["w_hh"].new_zeros(GH)
        ps = [z if w["b_ih"] is None else w["b_ih"], z if w["b_hh"] is None else w["b_hh"]] + ps
    return ps


# ---------------------------------------------------------------- fused autograd Function

def _np(t):
    return t.detach().numpy()


def _loop_blas_threads():
    """OpenBLAS single-threaded while a generated time loop runs: numba's np.dot calls SciPy's
    OpenBLAS, whose busy-waiting worker threads fight torch's OpenMP pool (on the 2-core CI
    machine a LayerNorm-LSTM call went from 60 ms to 1.8 s without this). One policy and one
    counter for every numba loop in the process: the numba backend's."""
    from fastrnn import backends
    from fastrnn.backends import numba as numba_backend
    backends.get("numba").availability()  # finds SciPy's OpenBLAS setter once
    return numba_backend._loop_blas_threads()


# From this batch size on, the numba path runs its time loop in C++ (`fastrnn._ext.custom_forward`
# / `custom_backward`, csrc/custom_loop.cpp): per step the recurrent GEMM in MKL, then the generated
# step through its C entry point; below it, the whole loop in one @njit call with np.dot (SciPy's
# OpenBLAS). Without the extension every batch runs the @njit loop. Measured: LayerNorm-LSTM
# fwd+bwd, float32, T=50, I=H, 2-core Xeon (Sapphire Rapids class) shared with another job, both
# loops alternating in one process; @njit time / C++ time at H = 128 | 256:
#   1 thread (two runs): B=1 0.95-0.99 | 0.93-0.94, B=2 0.91-0.96 | 1.79-1.86, B=3 1.51-1.60 |
#   1.74-1.84, B=4 1.22-1.36 | 1.98-2.10, B=8 1.17 | 1.63, B=16 1.16 | 1.38, B=64 1.10 | 1.18;
#   2 threads (load < 1, before the C++ loop split a step's rows over threads): B=1 0.91 | 0.99, B=2 0.97 | 2.01, B=4 1.24 | 2.24, B=8 1.19 | 1.94,
#   B=16 1.27 | 1.62, B=64 1.24 | 1.40.
# With the other core busy, 2-thread runs of either loop (and of the cpp backend's own loops)
# stall at every per-step GEMM: measure those on a quiet machine.
CPP_LOOP_MIN_BATCH = 2


def _custom_loop_ext():
    """fastrnn._ext when it loads and has the custom-cell loop (a build older than this file
    lacks it), else None: then the @njit whole loop runs every batch."""
    from fastrnn import backends
    ok, _ = backends.get("cpp").availability()
    if not ok:
        return None
    from fastrnn.backends import cpp
    return cpp._ext if hasattr(cpp._ext, "custom_forward") else None


class _NumbaCellKernels:
    """Host side of a generated Numba module: the C++ time loop through the step's C entry points
    (from `CPP_LOOP_MIN_BATCH` rows, when the extension is built), else the whole time loop in one
    @njit call each way. Neither goes back to Python between steps."""

    def __init__(self, mod):
        self.mod = mod

    def _cpp(self, B):
        return _custom_loop_ext() if B >= CPP_LOOP_MIN_BATCH else None

    def forward(self, gi, whh0, whh1, bhh, prm, zm, st0, sizes, offsets, save):
        D, N, GH = gi.shape
        _, S, B, H = st0.shape
        dt = str(gi.dtype)[6:]
        ext = self._cpp(B)
        if ext is not None:
            fn = self.mod.step_address("fwd", dt)
            return tuple(ext.custom_forward(fn, gi, whh0, whh1, bhh, prm, zm, st0, torch.from_numpy(sizes),
                                            torch.from_numpy(offsets), save))
        out = gi.new_empty(N, D * H)
        st = st0.clone()
        sprev = gi.new_empty(D, N, S, H) if save else gi.new_empty(1, 1, 1, 1)
        ghs = gi.new_empty(D, N, GH) if save else gi.new_empty(1, 1, 1)
        with _loop_blas_threads():
            getattr(self.mod, "fwd_" + dt)(_np(gi), _np(whh0), _np(whh1), _np(bhh), _np(prm), _np(zm), sizes,
                                           offsets, out.numpy(), st.numpy(), sprev.numpy(), ghs.numpy(), save)
        return out, st, sprev, ghs

    def backward(self, gi, ghs, sprev, whh0, whh1, prm, zm, sizes, offsets, dout, ds):
        dt = str(gi.dtype)[6:]
        ext = self._cpp(ds.shape[2])
        if ext is not None:
            fn = self.mod.step_address("bwd", dt)
            return tuple(ext.custom_backward(fn, gi, ghs, sprev, whh0, whh1, prm, zm, torch.from_numpy(sizes),
                                             torch.from_numpy(offsets), dout, ds))
        dgi = torch.empty_like(gi)
        dgh = torch.empty_like(ghs)
        dprm = torch.zeros_like(prm)
        with _loop_blas_threads():
            getattr(self.mod, "bwd_" + dt)(_np(gi), _np(ghs), _np(sprev), _np(whh0), _np(whh1), _np(prm), _np(zm),
                                           sizes, offsets, _np(dout), ds.numpy(), dgi.numpy(), dgh.numpy(),
                                           dprm.numpy())
        return dgi, dgh, dprm


class _FusedLayer(torch.autograd.Function):
    """kern (the backend's kernels: `_NumbaCellKernels` or
    `fastrnn.kernels.triton.custom.TritonCellKernels`), gi [D, N, GH], whh0/whh1 [GH, H],
    bhh [D, GH], prm [D, P], zm [D, N, S*H] | [D, 1, 1], st0 [D, S, B, H]
    -> out [N, D*H], st [D, S, B, H].

    Saved for backward (when any input needs grad), besides gi and the weights: the states
    entering every step, sprev [D, N, S, H], and the recurrent pre-activations, ghs [D, N, GH]
    (the backward recomputes the step from them): (S + G) * H floats per row and direction
    (6H for an LSTM cell, which the hand-written kernels save as gates + cell state too)."""

    @staticmethod
    def forward(ctx, kern, gi, whh0, whh1, bhh, prm, zm, st0, sizes, offsets):
        D = gi.shape[0]
        save = any(ctx.needs_input_grad)
        out, st, sprev, ghs = kern.forward(gi, whh0, whh1, bhh, prm, zm, st0, sizes, offsets, save)
        if save:
            ctx.kern, ctx.sizes, ctx.offsets, ctx.D = kern, sizes, offsets, D
            ctx.save_for_backward(gi, ghs, sprev, whh0, whh1, prm, zm)
        return out, st

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dst):
        gi, ghs, sprev, whh0, whh1, prm, zm = ctx.saved_tensors
        D, N, GH = gi.shape
        S, H = sprev.shape[2], sprev.shape[3]
        dout = gi.new_zeros(N, D * H) if dout is None else dout.contiguous()
        if dst is None:
            B = int(ctx.sizes[0]) if len(ctx.sizes) else 0
            ds = gi.new_zeros(D, S, B, H)
        else:
            ds = dst.contiguous().clone()
        dgi, dgh, dprm = ctx.kern.backward(gi, ghs, sprev, whh0, whh1, prm, zm, ctx.sizes, ctx.offsets, dout, ds)
        # weight gradients: one GEMM per direction over all steps (DESIGN §3.3)
        dw = [dgh[d].t() @ sprev[d, :, 0] for d in range(D)]
        return (None, dgi, dw[0], dw[1] if D == 2 else None, dgh.sum(1), dprm, None, ds, None, None)


# ---------------------------------------------------------------- the layer (both paths)

@torch.library.custom_op("fastrnn::zoneout_masks", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _zoneout_masks_op(like: torch.Tensor, p: float, D: int, N: int, SH: int) -> torch.Tensor:
    """The training masks as one opaque op for torch.compile: drawn by torch.bernoulli from the
    global generator at run time, so a compiled model gets eager's masks under the same seed
    (inductor would otherwise lower bernoulli to its own RNG stream); the tag keeps AOTAutograd
    from CSE-ing two draws or recomputing one in the backward."""
    return torch.bernoulli(like.new_full((D, N, SH), p))


@_zoneout_masks_op.register_fake
def _(like, p, D, N, SH):
    return like.new_empty(D, N, SH)


def zoneout_masks(p, training, D, N, S, H, like):
    """Zoneout masks [D, N, S*H] (1 = keep the previous value). Training: Bernoulli(p) from
    torch's RNG (reproducible under torch.manual_seed, compiled or not); eval: p everywhere, so
    the new state is the expectation p*old + (1-p)*new the zoneout paper prescribes."""
    if training:
        if torch.compiler.is_compiling():
            return _zoneout_masks_op(like.detach(), float(p), D, N, S * H)
        return torch.bernoulli(like.new_full((D, N, S * H), float(p)))
    return like.new_full((D, N, S * H), float(p))


def custom_rnn_layer(cell, x, batch_sizes, states0, dirs, zm=None, backend="auto"):
    """One layer of `cell`, all directions.

    x [N, I] time-major rows (padded [T, B, I] as x.view(T*B, I) with batch_sizes None, or
    PackedSequence.data with its batch_sizes [T] int64); states0: S tensors [D, B, H];
    dirs: D dicts with w_ih [G*H, I], w_hh [G*H, H], b_ih, b_hh [G*H] | None, params (list of
    [k*H]); direction 1 runs backwards; zm [D, N, S*H] zoneout masks or None.
    Returns out [N, D*H] and S final states [D, B, H].
    """
    sizes, offsets = step_rows(x, batch_sizes, states0[0].size(1))
    backend = _pick_backend(cell, x, backend)
    if backend == "reference":
        return _ref_layer(cell, x, sizes, offsets, states0, dirs, zm)
    import numpy as np
    mod = cell.kernels(zm is not None, backend)
    kern = _NumbaCellKernels(mod) if backend == "numba" else mod
    D = len(dirs)
    # input projection of all steps and directions: one GEMM, b_ih folded in (DESIGN §3.1)
    w_ih = torch.cat([w["w_ih"] for w in dirs]) if D > 1 else dirs[0]["w_ih"]
    if not cell.bias_in_step and dirs[0]["b_ih"] is not None:
        gi = torch.addmm(torch.cat([w["b_ih"] for w in dirs]) if D > 1 else dirs[0]["b_ih"], x, w_ih.t())
    else:
        gi = x @ w_ih.t()
    GH = dirs[0]["w_hh"].size(0)
    gi = gi.unsqueeze(0) if D == 1 else gi.view(-1, D, GH).transpose(0, 1).contiguous()
    if not cell.bias_in_step and dirs[0]["b_hh"] is not None:
        bhh = torch.stack([w["b_hh"] for w in dirs])
    else:
        bhh = x.new_zeros(D, GH)
    ps = [_step_params(cell, w) for w in dirs]
    prm = torch.stack([torch.cat(p) for p in ps]) if ps[0] else x.new_zeros(D, 0)
    st0 = torch.stack(states0, 1).contiguous()
    zmt = zm.contiguous() if zm is not None else x.new_zeros(D, 1, 1)
    whh0 = dirs[0]["w_hh"].contiguous()
    whh1 = dirs[1]["w_hh"].contiguous() if D == 2 else whh0
    out, st = _FusedLayer.apply(kern, gi, whh0, whh1, bhh.contiguous(), prm.contiguous(), zmt, st0,
                                np.asarray(sizes, dtype=np.int64), np.asarray(offsets, dtype=np.int64))
    return out, list(st.unbind(1))


_warned = set()


_BACKENDS = ("auto", "numba", "triton", "reference")


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_importable():
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def _pick_backend(cell, x, backend):
    """auto: numba for float32/float64 on CPU, triton for float32/float64 on CUDA, else the
    reference loop (said once in the debug log). A backend asked for by name that cannot run
    the call raises with the reason. Under torch.compile every call runs the reference loop:
    plain torch ops that Dynamo traces (the fused kernels are host loops it cannot)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got {backend!r}")
    if backend == "reference" or torch.compiler.is_compiling():
        return "reference"
    dev = x.device.type
    asked = backend
    if backend == "auto":
        backend = "triton" if dev == "cuda" else "numba"
    reason = None
    if x.dtype not in _FUSED_DTYPES:
        reason = f"the fused custom-cell path runs float32/float64; got {x.dtype}"
    elif backend == "numba" and dev != "cpu":
        reason = f"the numba kernels run on CPU tensors; got {dev}"
    elif backend == "triton" and not _triton_importable():
        reason = "triton is not importable"
    elif backend == "triton" and dev != "cuda" and not (dev == "cpu" and _triton_interpreted()):
        reason = f"the triton kernels run on CUDA tensors (CPU ones only under TRITON_INTERPRET=1); got {dev}"
    if reason is None:
        return backend
    if asked != "auto":
        raise RuntimeError(f"backend={asked!r} cannot run this call: {reason}. Use backend='reference'.")
    if reason not in _warned:
        _warned.add(reason)
        _log.debug("fastrnn.custom: %s; using the reference loop", reason)
    return "reference"


# ---------------------------------------------------------------- options for fastrnn.LSTM/GRU/RNN

def drop_connect(layer_weights, p, training):
    """DropConnect on W_hh (AWD-LSTM's weight drop) for fastrnn.LSTM/GRU/RNN's weights.

    layer_weights: per layer, D tuples (w_ih, w_hh, b_ih, b_hh, w_hr) as functional.rnn takes
    them. Training: W_hh -> F.dropout(W_hh, p), one mask per layer and direction drawn from
    torch's RNG per call (reproducible under torch.manual_seed); eval or p == 0: unchanged, so
    the hand-written kernels keep running on the full weights."""
    if p == 0 or not training:
        return layer_weights
    return [[(w[0], F.dropout(w[1], p, True), *w[2:]) for w in ws] for ws in layer_weights]


def rnn_zoneout(cell, x, batch_sizes, hx, cx, layer_weights, dropout, training, zoneout, backend="auto"):
    """functional.rnn's signature plus zoneout: the same stack run through the generated kernels of
    the built-in cell written as a CellDef (the hand-written kernels have no zoneout); under
    torch.compile, through the reference loop (plain torch ops, masks as eager draws them).
    cell "lstm" | "gru" | "rnn_tanh" | "rnn_relu"; x [N, I]; hx [L*D, B, H]; cx [L*D, B, H] | None.
    Returns out [N, D*H], hn, cn | None."""
    cdef = {"lstm": LSTM_CELL, "gru": GRU_CELL, "rnn_tanh": RNN_TANH_CELL, "rnn_relu": RNN_RELU_CELL}[cell]
    D = len(layer_weights[0])
    H = hx.size(-1)
    finals = [[] for _ in range(cdef.n_states)]
    for k, ws in enumerate(layer_weights):
        if any(w[4] is not None for w in ws):
            raise NotImplementedError("zoneout with proj_size is not supported")
        st0 = [hx[k * D:(k + 1) * D]] + ([cx[k * D:(k + 1) * D]] if cdef.n_states == 2 else [])
        zm = zoneout_masks(zoneout, training, D, x.size(0), cdef.n_states, H, x) if zoneout > 0 else None
        dirs = [{"w_ih": w[0], "w_hh": w[1], "b_ih": w[2], "b_hh": w[3], "params": []} for w in ws]
        x, fin = custom_rnn_layer(cdef, x, batch_sizes, st0, dirs, zm, "reference" if backend == "reference"
                                  else "auto")
        for s, f in zip(finals, fin):
            s.append(f)
        if dropout > 0 and training and k < len(layer_weights) - 1:
            x = torch.dropout(x, dropout, True)
    fin = [torch.cat(f) for f in finals]
    return x, fin[0], fin[1] if cdef.n_states == 2 else None


# ---------------------------------------------------------------- module

class CustomRNN(nn.Module):
    """A multi-layer RNN of a user-defined cell, with nn.LSTM's front-end.

    Args: cell (CellDef), input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0 (between layers, training only), bidirectional=False, as nn.LSTM; plus
        zoneout: probability of keeping each state element's previous value per step
            (all of the cell's states: h and c for an LSTM cell). Training: masks from
            torch's RNG; eval: new = p*old + (1-p)*new. 0 (default) leaves the cell as is.
        weight_dropout: DropConnect on W_hh (AWD-LSTM): a mask drawn once per forward call
            in training (F.dropout, so scaled by 1/(1-p)); the full weights at eval.
        backend: "auto" (fused kernels for float32/float64: generated Numba on CPU, generated
            Triton on CUDA; else the reference loop), "numba", "triton" (CUDA, or CPU under
            TRITON_INTERPRET=1 for tests), or "reference" (Python loop over the step; runs any cell).

    Parameters (k = layer, sfx = "" or "_reverse"): weight_ih_l{k}{sfx} [G*H, I_k],
    weight_hh_l{k}{sfx} [G*H, H], bias_ih_l{k}{sfx} / bias_hh_l{k}{sfx} [G*H] (with bias), and
    each cell parameter `name` as {name}_l{k}{sfx} [k*H].

    Inputs: input [T, B, I] ([B, T, I] with batch_first, [T, I] unbatched, or a
    PackedSequence); hx: h0 [L*D, B, H] for one-state cells, else a tuple of S such tensors
    (h0, c0), or None for zeros. Outputs: output [T, B, D*H] (or packed), and h_n (one-state
    cells) or the tuple of final states, each [L*D, B, H].
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, zoneout=0.0, weight_dropout=0.0, backend="auto",
                 device=None, dtype=None):
        super().__init__()
        if not isinstance(cell, CellDef):
            raise TypeError(f"cell must be a fastrnn.CellDef, got {type(cell).__name__}")
        for nm, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{nm} should be of type int, got: {type(v).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if input_size < 0:
            raise ValueError("input_size must be non-negative")
        for nm, v, hi in (("dropout", dropout, 1.0), ("zoneout", zoneout, 1.0),
                          ("weight_dropout", weight_dropout, 1.0)):
            if not isinstance(v, numbers.Number) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"{nm} should be a number in range [0, 1] representing the probability of "
                                 f"an element being zeroed" if nm != "zoneout" else
                                 f"zoneout should be a number in range [0, 1], got {v!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got {backend!r}")
        self.cell = cell
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.zoneout, self.weight_dropout = float(zoneout), float(weight_dropout)
        self.backend = backend
        kw = dict(device=device, dtype=dtype)
        G, H, D = cell.gates, hidden_size, 2 if bidirectional else 1
        self._names = []
        for k in range(num_layers):
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                I = input_size if k == 0 else H * D
                names = {"w_ih": "weight_ih" + sfx, "w_hh": "weight_hh" + sfx}
                self.register_parameter(names["w_ih"], nn.Parameter(torch.empty(G * H, I, **kw)))
                self.register_parameter(names["w_hh"], nn.Parameter(torch.empty(G * H, H, **kw)))
                if bias:
                    names["b_ih"], names["b_hh"] = "bias_ih" + sfx, "bias_hh" + sfx
                    self.register_parameter(names["b_ih"], nn.Parameter(torch.empty(G * H, **kw)))
                    self.register_parameter(names["b_hh"], nn.Parameter(torch.empty(G * H, **kw)))
                names["params"] = []
                for pn, (m, _) in cell.params.items():
                    self.register_parameter(pn + sfx, nn.Parameter(torch.empty(m * H, **kw)))
                    names["params"].append(pn + sfx)
                self._names.append(names)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size)
        cellp = {}
        for names in self._names:
            for pn, (_, init) in zip(names["params"], self.cell.params.values()):
                cellp[pn] = init
        with torch.no_grad():
            for name, p in self.named_parameters():
                init = cellp.get(name, "uniform")
                if init == "uniform":
                    p.uniform_(-stdv, stdv)
                else:
                    p.fill_(float(init))

    def extra_repr(self):
        s = f"{self.cell.name}, {self.input_size}, {self.hidden_size}"
        for nm, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                            ("bidirectional", False), ("zoneout", 0.0), ("weight_dropout", 0.0),
                            ("backend", "auto")):
            v = getattr(self, nm)
            if v != default:
                s += f", {nm}={v!r}"
        return s

    def _dir_weights(self, idx):
        n = self._names[idx]
        w_hh = getattr(self, n["w_hh"])
        if self.weight_dropout > 0:
            w_hh = F.dropout(w_hh, self.weight_dropout, self.training)
        return {"w_ih": getattr(self, n["w_ih"]), "w_hh": w_hh,
                "b_ih": getattr(self, n["b_ih"]) if "b_ih" in n else None,
                "b_hh": getattr(self, n["b_hh"]) if "b_hh" in n else None,
                "params": [getattr(self, pn) for pn in n["params"]]}

    def forward(self, input, hx=None):
        S, H, L = self.cell.n_states, self.hidden_size, self.num_layers
        D = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            x, batch_sizes, sorted_idx, unsorted_idx = input
            B = int(batch_sizes[0]) if len(batch_sizes) else 0
            if x.dim() != 2:
                raise ValueError(f"packed input must be 2-D, got {x.dim()}-D")
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            if unbatched:
                input = input.unsqueeze(1)
            elif self.batch_first:
                input = input.transpose(0, 1)
            T, B = input.shape[0], input.shape[1]
            batch_sizes, sorted_idx, unsorted_idx = None, None, None
            x = input.reshape(T * B, input.shape[2])
        if (len(batch_sizes) if packed else T) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.size(-1)}")
        w0 = self.weight_ih_l0
        if x.dtype != w0.dtype or x.device != w0.device:
            raise ValueError(f"input is {x.dtype} on {x.device} but the parameters are {w0.dtype} on {w0.device}; "
                             "convert one of them (e.g. module.to(input.dtype))")
        states = self._initial_states(hx, x, B, unbatched, sorted_idx)
        finals = [[] for _ in range(S)]
        for k in range(L):
            st0 = [s[k * D:(k + 1) * D] for s in states]
            zm = None
            if self.zoneout > 0:
                zm = zoneout_masks(self.zoneout, self.training, D, x.size(0), S, H, x)
            dirs = [self._dir_weights(k * D + d) for d in range(D)]
            x, fin = custom_rnn_layer(self.cell, x, batch_sizes, st0, dirs, zm, self.backend)
            for s in range(S):
                finals[s].append(fin[s])
            if self.dropout > 0 and self.training and k < L - 1:
                x = F.dropout(x, self.dropout, True)
        fin = [torch.cat(f) for f in finals]
        if sorted_idx is not None and unsorted_idx is not None:
            fin = [f.index_select(1, unsorted_idx) for f in fin]
        if packed:
            out = PackedSequence(x, batch_sizes, sorted_idx, unsorted_idx)
        else:
            out = x.view(T, B, D * H)
            if unbatched:
                out = out.squeeze(1)
                fin = [f.squeeze(1) for f in fin]
            elif self.batch_first:
                out = out.transpose(0, 1)
        return out, (fin[0] if S == 1 else tuple(fin))

    def _initial_states(self, hx, x, B, unbatched, sorted_idx):
        S, H, D = self.cell.n_states, self.hidden_size, 2 if self.bidirectional else 1
        shape = (self.num_layers * D, B, H)
        if hx is None:
            return [x.new_zeros(shape) for _ in range(S)]
        hs = [hx] if S == 1 and isinstance(hx, torch.Tensor) else hx
        if not isinstance(hs, (tuple, list)) or len(hs) != S:
            raise TypeError(f"hx for cell {self.cell.name!r} must be " +
                            ("a Tensor" if S == 1 else f"a tuple of {S} Tensors {self.cell.states}"))
        out = []
        for i, h in enumerate(hs):
            if unbatched:
                if h.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {h.dim()}-D tensor")
                h = h.unsqueeze(1)
            elif h.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {h.dim()}-D tensor")
            if tuple(h.shape) != shape:
                raise RuntimeError(f"Expected hidden[{i}] size {shape}, got {list(h.shape)}")
            if h.dtype != x.dtype:
                raise ValueError(f"hx dtype {h.dtype} does not match input dtype {x.dtype}")
            if sorted_idx is not None:
                h = h.index_select(1, sorted_idx)
            out.append(h)
        return out


# ---------------------------------------------------------------- built-in cells

def _lstm_step(gi, gh, h, c):
    i, f, g, o = (gi + gh).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(gi, gh, h):
    ir, iz, inn = gi.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(inn + r * hn)
    return (n + z * (h - n),)


def _rnn_tanh_step(gi, gh, h):
    return (torch.tanh(gi + gh),)


def _rnn_relu_step(gi, gh, h):
    return (torch.relu(gi + gh),)


def _peephole_lstm_step(gi, gh, h, c, w_ci, w_cf, w_co):
    i, f, g, o = (gi + gh).chunk(4, 1)
    i = torch.sigmoid(i + w_ci * c)
    f = torch.sigmoid(f + w_cf * c)
    c = f * c + i * torch.tanh(g)
    o = torch.sigmoid(o + w_co * c)
    return o * torch.tanh(c), c


_LN_EPS = 1e-5


def _ln(x):
    return F.layer_norm(x, (x.shape[-1],), eps=_LN_EPS)


def _layernorm_lstm_step(gi, gh, h, c, b_ih, b_hh, ln_ih_weight, ln_hh_weight, ln_cell_weight, ln_cell_bias):
    a = _ln(gi) * ln_ih_weight + _ln(gh) * ln_hh_weight + b_ih + b_hh
    i, f, g, o = a.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    hc = F.layer_norm(c, (c.shape[-1],), ln_cell_weight, ln_cell_bias, eps=_LN_EPS)
    return torch.sigmoid(o) * torch.tanh(hc), c


def _layernorm_gru_step(gi, gh, h, b_ih, b_hh, ln_ih_weight, ln_hh_weight):
    xi = _ln(gi) * ln_ih_weight + b_ih
    xh = _ln(gh) * ln_hh_weight + b_hh
    ir, iz, inn = xi.chunk(3, 1)
    hr, hz, hn = xh.chunk(3, 1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(inn + r * hn)
    return (n + z * (h - n),)


LSTM_CELL = CellDef(_lstm_step, gates=4, states=("h", "c"), name="lstm")
GRU_CELL = CellDef(_gru_step, gates=3, name="gru")
RNN_TANH_CELL = CellDef(_rnn_tanh_step, gates=1, name="rnn_tanh")
RNN_RELU_CELL = CellDef(_rnn_relu_step, gates=1, name="rnn_relu")
PEEPHOLE_LSTM_CELL = CellDef(_peephole_lstm_step, gates=4, states=("h", "c"),
                             params={"w_ci": (1, "uniform"), "w_cf": (1, "uniform"), "w_co": (1, "uniform")},
                             name="peephole_lstm")
LAYERNORM_LSTM_CELL = CellDef(
    _layernorm_lstm_step, gates=4, states=("h", "c"), bias_in_step=True, name="layernorm_lstm",
    params={"ln_ih_weight": (4, 1.0), "ln_hh_weight": (4, 1.0), "ln_cell_weight": (1, 1.0),
            "ln_cell_bias": (1, 0.0)})
LAYERNORM_GRU_CELL = CellDef(
    _layernorm_gru_step, gates=3, bias_in_step=True, name="layernorm_gru",
    params={"ln_ih_weight": (3, 1.0), "ln_hh_weight": (3, 1.0)})


class LayerNormLSTM(CustomRNN):
    """LSTM with layer normalisation (haste's LayerNormLSTM), nn.LSTM's front-end::

        a  = LN(x W_ih^T) * ln_ih_weight + LN(h W_hh^T) * ln_hh_weight + b_ih + b_hh
        i, f, g, o = a.chunk(4);  c' = sig(f)*c + sig(i)*tanh(g)
        h' = sig(o) * tanh(LN(c') * ln_cell_weight + ln_cell_bias)

    LN normalises over the whole row (4H for the pre-activations, H for c), eps 1e-5. The
    biases play the role of the first two LNs' shifts. Parameters per layer/direction, besides
    nn.LSTM's: ln_ih_weight_l{k} [4H], ln_hh_weight_l{k} [4H] (ones), ln_cell_weight_l{k} [H]
    (ones), ln_cell_bias_l{k} [H] (zeros).

    How the fused kernels reduce: Numba processes a batch row in one thread for the whole step,
    so each LN's mean and variance are loop accumulators over that row (three passes over it in
    L1: sum; centred sum of squares; normalise fused with the gate math), no cross-thread step.
    Triton runs one program per batch row holding the whole row (4H values) in one block, so
    each LN statistic is one `tl.sum` over the block: the cross-thread reduction within the
    program (warp shuffles, then shared memory), never across programs.
    Options as `CustomRNN` (zoneout on h and c, weight_dropout, backend).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, zoneout=0.0, weight_dropout=0.0, backend="auto", device=None, dtype=None):
        super().__init__(LAYERNORM_LSTM_CELL, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, zoneout, weight_dropout, backend, device, dtype)


class LayerNormGRU(CustomRNN):
    """GRU with layer normalisation (haste's LayerNormGRU), nn.GRU's front-end::

        xi = LN(x W_ih^T) * ln_ih_weight + b_ih;  xh = LN(h W_hh^T) * ln_hh_weight + b_hh
        r = sig(xi_r + xh_r);  z = sig(xi_z + xh_z);  n = tanh(xi_n + r * xh_n)
        h' = (1 - z) * n + z * h

    Parameters besides nn.GRU's: ln_ih_weight_l{k} [3H], ln_hh_weight_l{k} [3H] (ones).
    The reduction is done as in `LayerNormLSTM`. Options as `CustomRNN` (zoneout on h).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, zoneout=0.0, weight_dropout=0.0, backend="auto", device=None, dtype=None):
        super().__init__(LAYERNORM_GRU_CELL, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, zoneout, weight_dropout, backend, device, dtype)
