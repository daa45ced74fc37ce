"""Numba kernels generated from a user's cell step (`fastrnn.CellDef`).

Installed as `fastrnn.kernels.numba.custom`; driven by `fastrnn.custom`.

How a cell becomes a kernel
---------------------------
1. Trace. The step (torch ops on pre-activations, states and per-unit parameters) and
   its vector-Jacobian product (`torch.func.vjp`) are traced with
   `make_fx(..., core_aten_decompositions())` into aten graphs, each at
   (B, H) = (3, 1013) and (5, 1019) (and at (2, 11), only to check that the graph does
   not branch on the size). Comparing the two traces tells which dimension
   is the batch and turns every size and scalar that depends on the hidden size
   into an expression in `H` (split sizes `H`, slice bounds `2*H`, the `1/(4*H)` of a
   layer-norm backward), so one compiled kernel serves every hidden size. A graph
   that differs in structure between the traces (Python control flow on shapes)
   is refused.
2. Generate. The graph is lowered to code for ONE batch row: every value is a
   vector of width `a*H+b` (one row of a [B, w] tensor, or a broadcast [w]
   parameter) or a per-row scalar ([B, 1], 0-d). Elementwise nodes of equal width
   are fused into one `for j in range(w)` loop whose intermediates are scalar
   locals; a value is stored to a per-call scratch row `ws` only when a slice, a
   concatenation or a later loop needs it. Reductions over the hidden dimension
   (`sum`, `mean`, `amax`, and `native_layer_norm`'s mean and variance) are
   accumulators inside the loop that produces their operand; whatever uses the
   result starts a later loop. So a LayerNorm over a row costs three passes over
   that row (mean; centred sum of squares; normalise-and-continue, fused with the
   gate math that follows), all in L1, with no cross-thread step: a batch row is
   processed by one thread from start to end.
3. Time loop. The generated row code is pasted into one forward and one backward
   time loop (this file's `_FWD` / `_BWD` templates), the same structure as
   `kernels/numba/rnn.py`: per step one BLAS GEMM `h_{t-1} @ W_hh^T` into a
   preallocated buffer (`np.dot(a, b, out)`), then the row code per active batch
   row; backward runs the steps in reverse, recomputes the step from the saved
   pre-activations and states (the VJP graph contains the forward), and leaves
   the weight gradients to GEMMs after the loop. Nothing is allocated per step but the
   step's own scratch rows (see `_FWD_STEP` for why).
   Packed batches run natively, as in rnn.py. The row code is one-step kernels (`_FWD_STEP` /
   `_BWD_STEP`) that these loops call, and that the C++ time loop
   (csrc/custom_loop.cpp, from `fastrnn.custom.CPP_LOOP_MIN_BATCH` rows when the extension is
   built) calls through a C entry point per step (`_CFUNC`, a Numba @cfunc), with MKL's GEMMs
   instead of the OpenBLAS that np.dot reaches. The graph walk is shared with the Triton generator
   (`fastrnn.kernels.triton.custom`): `NumbaLang` / `TritonLang` only spell the items.
4. Compile. The source is written to `$FASTRNN_CACHE_DIR/numba_custom/<hash>.py`
   (default `~/.cache/fastrnn`) and imported, so numba's on-disk cache
   (`cache=True`) works across processes: a cell definition compiles once per
   dtype per machine.

Unsupported aten ops raise `UnsupportedCellError` naming the op.

Numerics. float32 uses the same vectorisable tanh/sigmoid as rnn.py (max abs error
3.6e-7); float64 uses libm. Row reductions accumulate in float64 (layer-norm backward
cancels terms of the gradient's full scale). The kernels compile with
fastmath={"reassoc", "contract"}: without reassociation LLVM keeps every loop that carries
a reduction scalar, and a LayerNorm-LSTM step is mostly such loops (fwd+bwd 1.8x faster
at B=64, H=128); results move by rounding only (the float64 tests hold at rtol 1e-9).
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import operator
import os
import sys
import tempfile
from dataclasses import dataclass, field

import torch

# Two tracing sizes: the hidden sizes are primes far from anything a cell would use
# as a literal, the batch sizes differ so the batch dimension is recognisable.
_B0, _H0 = 3, 1013
_B1, _H1 = 5, 1019
_B2, _H2 = 2, 11   # a third, small trace only to catch graphs that branch on the size


class UnsupportedCellError(NotImplementedError):
    """The fused path cannot compile this cell; run it with backend="reference"."""


# ---------------------------------------------------------------- tracing

def trace_pair(fn, make_args):
    """Trace fn(*make_args(B, H)) at three sizes; returns the first two graphs (the third,
    small, only checks that the graph does not depend on the size)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    decomp = core_aten_decompositions()
    gs = []
    for B, H in ((_B0, _H0), (_B1, _H1), (_B2, _H2)):
        try:
            gm = make_fx(fn, decomposition_table=decomp)(*make_args(B, H))
        except UnsupportedCellError:
            raise
        except Exception as e:  # noqa: BLE001 - report any tracing failure the same way
            raise UnsupportedCellError(f"tracing the cell step failed: {type(e).__name__}: {e}") from e
        gs.append(gm)
    n0, n1, n2 = (list(g.graph.nodes) for g in gs)
    if len({len(n0), len(n1), len(n2)}) != 1 or any(
            a.op != b.op or a.target != b.target or a.op != c.op or a.target != c.target
            for a, b, c in zip(n0, n1, n2)):
        raise UnsupportedCellError(
            "the cell step's graph changes with the batch or hidden size (Python control flow "
            "on tensor shapes?); the fused path needs one graph for every size")
    return gs[0], gs[1]


@dataclass(frozen=True)
class Lin:
    """An integer a*H + b."""
    a: int
    b: int

    def __str__(self):
        if self.a == 0:
            return str(self.b)
        s = "H" if self.a == 1 else f"{self.a}*H"
        return s if self.b == 0 else f"({s}+{self.b})"

    def __add__(self, o):
        return Lin(self.a + o.a, self.b + o.b)


def _fit_int(v0, v1, what):
    if v0 == v1:
        return Lin(0, v0)
    if (v0, v1) == (_B0, _B1):
        return "B"
    a, r = divmod(v1 - v0, _H1 - _H0)
    if r:
        raise UnsupportedCellError(f"{what}: a size that is not a multiple of the hidden size ({v0}, {v1})")
    return Lin(a, v0 - a * _H0)


def _fit_float(v0, v1, what):
    if v0 == v1 or (math.isnan(v0) and math.isnan(v1)):
        return repr(float(v0))
    if math.isclose(v0 * _H0, v1 * _H1, rel_tol=1e-12):
        return f"({v0 * _H0!r}/H)"
    if math.isclose(v0 / _H0, v1 / _H1, rel_tol=1e-12):
        return f"({v0 / _H0!r}*H)"
    raise UnsupportedCellError(f"{what}: a constant that depends on the hidden size in an unsupported way "
                               f"({v0} at H={_H0}, {v1} at H={_H1})")


# ---------------------------------------------------------------- row values

@dataclass(eq=False)
class Group:
    """One `for j in range(width)` loop over a batch row."""
    width: Lin
    pos: int
    pre: list = field(default_factory=list)
    body: list = field(default_factory=list)
    post: list = field(default_factory=list)
    loads: dict = field(default_factory=dict)   # per-language cache of buffer reads in this loop


@dataclass(eq=False)
class Val:
    """A value of the step for one batch row.

    width None: a scalar (per row or constant) held in `expr`.
    Otherwise a vector of `width` elements, readable at index j as one of: a loop-local
    `local` of `group`; `buf[off + j]`; or `lazy(j)` (broadcasts, slice_backward)."""
    width: Lin | None
    row: bool = True
    avail: int = -1          # items index after which the value can be read
    expr: str | None = None
    const: float | None = None
    group: Group | None = None
    local: str | None = None
    buf: str | None = None
    off: str = "0"
    lazy: object = None
    summed: bool = False     # a sum over the batch (a parameter's gradient contribution)


class NumbaLang:
    """How row code is spelled in Numba: each Group is a `for j in range(w)` loop whose body
    works on scalars. The graph walk (`lower`) and the placement of values into loops
    (`RowCodegen`) are language-neutral; `fastrnn.kernels.triton.custom.TritonLang` spells
    the same items as whole-row block operations. `DT(x)` is the kernel's float type."""

    name = "Numba"

    def __init__(self):
        self.unary, self.binary = _UNARY, _BINARY

    def cond(self, c, a, b):
        return f"({a} if {c} else {b})"

    def in_range(self, j, lo, hi):
        return f"{j} >= {lo} and {j} < {hi}"

    def maxf(self, a, b):
        return f"max({a}, {b})"

    def minf(self, a, b):
        return f"min({a}, {b})"

    def pow(self, a, b, ex, where):
        return f"({a} ** {b})"

    def rsqrt(self, e):
        return f"(DT(1) / np.sqrt({e}))"

    def elem(self, v, j, group):
        return f"{v.buf}[{v.off}+{j}]"

    def store(self, buf, off, e, acc):
        return f"{buf}[{off}+j] {'+=' if acc else '='} {e}"

    def reduce(self, nm, e, kind, width):
        """(pre, body, post) lines of a row reduction of e into the scalar nm."""
        if kind == "amax":
            return [f"{nm} = -np.inf"], [f"{nm} = {e} if {e} > {nm} else {nm}"], []
        # float64 accumulators: row sums feed layer-norm backward, which cancels
        post = [f"{nm} = DT({nm} / ({width}))"] if kind == "mean" else [f"{nm} = DT({nm})"]
        return [f"{nm} = np.float64(0)"], [f"{nm} += {e}"], post

    def group_lines(self, g, pad, first):
        return ([pad + s for s in g.pre] + [pad + f"for j in range({g.width}):"]
                + [pad + "    " + s for s in g.body] + [pad + s for s in g.post])

    def item_lines(self, lines, pad, first):
        return [pad + s for s in lines]


class RowCodegen:
    def __init__(self, what, lang=None):
        self.what = what
        self.L = lang or NumbaLang()
        self.items = []          # Group | list[str]
        self.ws = Lin(0, 0)
        self.n = 0

    def name(self, p="v"):
        self.n += 1
        return f"{p}{self.n}"

    def lit(self, c):
        return Val(None, row=False, expr=f"DT({c})", const=c)

    # -- placement
    def _group_for(self, width, inputs):
        for it in reversed(self.items):
            if isinstance(it, Group) and it.width == width:
                if all(v.group is it or v.avail < it.pos for v in inputs):
                    return it
                break
        g = Group(width, len(self.items))
        self.items.append(g)
        return g

    def elem(self, v, j, group):
        if v.width is None:
            return v.expr
        if v.lazy is not None:
            return v.lazy(j, group)
        if v.group is not None and v.group is group and j == "j" and v.local is not None:
            return v.local
        if v.buf is None:
            self.materialize(v)
        return self.L.elem(v, j, group)

    def materialize(self, v):
        if v.buf is not None:
            return
        assert v.group is not None
        off = self.ws
        self.ws = self.ws + v.width
        v.group.body.append(self.L.store("ws", off, v.local, False))
        v.buf, v.off = "ws", str(off)

    def _avail(self, vals):
        return max([v.avail for v in vals] + [-1])

    # -- emitters
    def ew(self, width, row, inputs, fn):
        for v in inputs:
            if v.summed:
                raise UnsupportedCellError(
                    f"{self.what}: a sum over the batch dimension feeds further computation; "
                    "the fused path runs one batch row at a time")
        if all(v.width is None for v in inputs):
            exprs = [v.expr for v in inputs]
            if all(v.const is not None or v.avail < 0 and v.expr.startswith("DT(") for v in inputs):
                s = Val(None, row=row, expr=fn(exprs))
            else:
                nm = self.name("s")
                self.items.append([f"{nm} = {fn(exprs)}"])
                s = Val(None, row=row, avail=len(self.items) - 1, expr=nm)
            return s if width is None else self.broadcast(s, width, row)
        g = self._group_for(width, inputs)
        exprs = [self.elem(v, "j", g) for v in inputs]
        nm = self.name()
        g.body.append(f"{nm} = {fn(exprs)}")
        return Val(width, row=row, avail=g.pos, group=g, local=nm)

    def broadcast(self, s, width, row):
        return Val(width, row=row, avail=s.avail, lazy=lambda j, g, e=s.expr: e)

    def reduce(self, v, kind):
        if v.summed:
            raise UnsupportedCellError(f"{self.what}: a reduction of a sum over the batch dimension")
        g = self._group_for(v.width, [v])
        e = self.elem(v, "j", g)
        nm = self.name("r")
        pre, body, post = self.L.reduce(nm, e, kind, v.width)
        g.pre += pre
        g.body += body
        g.post += post
        return Val(None, row=v.row, avail=g.pos, expr=nm)

    def store(self, v, buf, off, width, acc=False):
        g = self._group_for(width, [v])
        e = self.elem(v, "j", g)
        g.body.append(self.L.store(buf, off, e, acc))
        return g.pos

    def slice(self, v, start, width):
        if v.lazy is not None:
            return Val(width, row=v.row, avail=v.avail, summed=v.summed,
                       lazy=lambda j, g, f=v.lazy, s=start: f(f"{s}+{j}", g))
        if v.buf is None:
            self.materialize(v)
        return Val(width, row=v.row, avail=v.avail, buf=v.buf, off=f"{v.off}+{start}", summed=v.summed)

    def cat(self, vals, width, row):
        off = self.ws
        self.ws = self.ws + width
        pos = -1
        o = Lin(0, 0)
        for v in vals:
            pos = max(pos, self.store(v, "ws", f"{off}+{o}", v.width))
            o = o + v.width
        return Val(width, row=row, avail=pos, buf="ws", off=str(off))

    def lines(self, indent):
        out = []
        pad = " " * indent
        for it in self.items:
            if isinstance(it, Group):
                if not it.body:
                    continue
                out += self.L.group_lines(it, pad, not out)
            else:
                out += self.L.item_lines(it, pad, not out)
        return out


# ---------------------------------------------------------------- graph lowering

_UNARY = {
    "neg": "(-{0})", "sigmoid": "sigmoid_({0})", "tanh": "tanh_({0})", "exp": "np.exp({0})",
    "log": "np.log({0})", "log1p": "np.log1p({0})", "expm1": "np.expm1({0})", "sqrt": "np.sqrt({0})",
    "rsqrt": "(DT(1) / np.sqrt({0}))", "reciprocal": "(DT(1) / {0})", "abs": "abs({0})",
    "sin": "np.sin({0})", "cos": "np.cos({0})", "relu": "({0} if {0} > DT(0) else DT(0))",
    "logical_not": "(not {0})", "sign": "np.sign({0})",
}
_BINARY = {
    "mul": "({0} * {1})", "div": "({0} / {1})", "maximum": "max({0}, {1})", "minimum": "min({0}, {1})",
    "gt": "({0} > {1})", "lt": "({0} < {1})", "ge": "({0} >= {1})", "le": "({0} <= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "sigmoid_backward": "({0} * {1} * (DT(1) - {1}))",
    "tanh_backward": "({0} * (DT(1) - {1} * {1}))", "logical_and": "({0} and {1})",
    "logical_or": "({0} or {1})",
}
_ALIAS = {"view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "clone", "alias",
          "detach", "lift_fresh_copy", "contiguous", "_to_copy", "to", "t", "permute"}
_CONST_LIKE = {"full_like": None, "zeros_like": 0.0, "ones_like": 1.0, "full": None, "zeros": 0.0,
               "ones": 1.0, "new_zeros": 0.0, "new_ones": 1.0, "new_full": None, "scalar_tensor": None}


def _shape_class(v0, v1, what):
    """(row, width) of a traced tensor pair; width None for scalars."""
    if not isinstance(v0, torch.Tensor):
        return None
    s0, s1 = tuple(v0.shape), tuple(v1.shape)
    if len(s0) == 0:
        return (False, None)
    if len(s0) == 1:
        if (s0[0], s1[0]) == (_B0, _B1):
            return (True, None)
        w = _fit_int(s0[0], s1[0], what)
        return (False, None if w == Lin(0, 1) else w)
    if len(s0) == 2 and (s0[0], s1[0]) in ((_B0, _B1), (1, 1)):
        w = _fit_int(s0[1], s1[1], what)
        if w == "B":
            raise UnsupportedCellError(f"{what}: a tensor with the batch size as its last dimension")
        return ((s0[0], s1[0]) == (_B0, _B1), None if w == Lin(0, 1) else w)
    raise UnsupportedCellError(f"{what}: tensors of shape {s0} (only [batch, width], [width] and "
                               "scalars are supported in the fused path)")


def lower(g0, g1, bind_inputs, what, lang=None):
    """Lower a traced graph pair to row code in `lang` (NumbaLang by default).
    bind_inputs(index, row, width) -> Val. Returns (codegen, list of output Vals (None for a
    None output))."""
    cg = RowCodegen(what, lang)
    L = cg.L
    env = {}
    ph = 0
    outs = None

    def arg(a0, a1, where):
        if isinstance(a0, torch.fx.Node):
            return env[a0]
        if isinstance(a0, bool):
            return Val(None, row=False, expr=repr(a0), const=float(a0))
        if isinstance(a0, int):
            f = _fit_int(a0, a1, where)
            return Val(None, row=False, expr=f"DT({f})", const=0.0) if f != "B" else None
        if isinstance(a0, float):
            return Val(None, row=False, expr=f"DT({_fit_float(a0, a1, where)})", const=0.0)
        if isinstance(a0, (list, tuple)):
            return [arg(x, y, where) for x, y in zip(a0, a1)]
        return a0

    for n0, n1 in zip(g0.graph.nodes, g1.graph.nodes):
        if n0.op == "placeholder":
            cls = _shape_class(n0.meta["val"], n1.meta["val"], n0.name)
            env[n0] = bind_inputs(ph, *cls)
            ph += 1
            continue
        if n0.op == "output":
            outs = [None if o is None else env[o] for o in n0.args[0]]
            continue
        if n0.op == "get_attr":
            t = getattr(g0, n0.target)
            if isinstance(t, torch.Tensor) and t.dim() == 0:
                env[n0] = cg.lit(float(t))
                continue
            raise UnsupportedCellError(f"{what}: a constant tensor of shape {tuple(t.shape)} inside the step; "
                                       "pass it as a cell parameter instead")
        if n0.target is operator.getitem:
            env[n0] = env[n0.args[0]][n0.args[1]]
            continue
        op = getattr(n0.target, "_opname", None) or str(n0.target)
        full = str(n0.target)
        # an in-place op (decompositions emit a few, e.g. logical_and_) is its functional twin
        # whose result then stands for the mutated argument from here on
        inplace = op.endswith("_") and not op.startswith("_") and isinstance(n0.args[0], torch.fx.Node)
        if inplace:
            op = op[:-1]
        where = f"{what}: aten.{op} ({full})"
        val0, val1 = n0.meta.get("val"), n1.meta.get("val")
        cls = _shape_class(val0, val1, where) if isinstance(val0, torch.Tensor) else None
        row, width = cls if cls else (True, None)
        if isinstance(val0, torch.Tensor) and val0.dtype not in (torch.float64, torch.bool, torch.int64):
            raise UnsupportedCellError(f"{where}: produces dtype {val0.dtype}; the fused path computes in "
                                       "the input's floating dtype only")
        a = [arg(x, y, where) for x, y in zip(n0.args, n1.args)]
        kw = {k: arg(n0.kwargs[k], n1.kwargs[k], where) for k in n0.kwargs}

        def kwv(name, i, default):
            v = kw.get(name, a[i] if len(a) > i else None)
            return default if v is None else v

        if op in L.unary:
            env[n0] = cg.ew(width, row, [a[0]], lambda e, t=L.unary[op]: t.format(*e))
        elif op in L.binary:
            env[n0] = cg.ew(width, row, [a[0], a[1]], lambda e, t=L.binary[op]: t.format(*e))
        elif op in ("add", "sub", "rsub"):
            alpha = kwv("alpha", 2, None)
            sgn = "+" if op == "add" else "-"
            x, y = (a[1], a[0]) if op == "rsub" else (a[0], a[1])
            if alpha is None:
                env[n0] = cg.ew(width, row, [x, y], lambda e, s=sgn: f"({e[0]} {s} {e[1]})")
            else:
                env[n0] = cg.ew(width, row, [x, y, alpha], lambda e, s=sgn: f"({e[0]} {s} {e[2]} * {e[1]})")
        elif op == "pow" and full.endswith("Tensor_Scalar"):
            ex = n0.args[1]
            if ex == 2:
                env[n0] = cg.ew(width, row, [a[0]], lambda e: f"({e[0]} * {e[0]})")
            else:
                env[n0] = cg.ew(width, row, [a[0], a[1]], lambda e, ex=ex: L.pow(e[0], e[1], ex, where))
        elif op == "where":
            env[n0] = cg.ew(width, row, a[:3], lambda e: L.cond(e[0], e[1], e[2]))
        elif op == "threshold_backward":
            env[n0] = cg.ew(width, row, a[:3], lambda e: L.cond(f"{e[1]} > {e[2]}", e[0], "DT(0)"))
        elif op in ("clamp", "clamp_min", "clamp_max"):
            lo = kwv("min", 1, None) if op != "clamp_max" else None
            hi = (kwv("max", 2, None) if op == "clamp" else kwv("max", 1, None)) if op != "clamp_min" else None
            x = cg.ew(width, row, [a[0], lo], lambda e: L.maxf(e[0], e[1])) if lo is not None else a[0]
            env[n0] = cg.ew(width, row, [x, hi], lambda e: L.minf(e[0], e[1])) if hi is not None else x
        elif op in _ALIAS:
            x = a[0]
            if op in ("_to_copy", "to") and kw.get("dtype") not in (None, torch.float64):
                raise UnsupportedCellError(f"{where}: a dtype conversion inside the step")
            if x.width is None and width is not None:
                env[n0] = cg.broadcast(x, width, row)
            elif x.width != width:
                raise UnsupportedCellError(f"{where}: a reshape that changes the row width "
                                           f"({x.width} -> {width}) is not supported in the fused path")
            else:
                env[n0] = _relabel(x, row)
        elif op in _CONST_LIKE:
            c = _CONST_LIKE[op]
            if c is None:
                fill = a[1] if op in ("full_like", "full", "new_full") else a[0]
                s = fill
            else:
                s = cg.lit(c)
            env[n0] = s if width is None else cg.broadcast(s, width, row)
        elif op in ("split", "split_with_sizes"):
            x = a[0]
            dim = n0.args[2] if len(n0.args) > 2 else n0.kwargs.get("dim", 0)
            if dim not in (1, -1) or x.width is None:
                raise UnsupportedCellError(f"{where}: split along dim {dim}; only along the hidden dim (1)")
            pieces, o = [], Lin(0, 0)
            sizes = [_fit_int(p0.shape[-1], p1.shape[-1], where) for p0, p1 in zip(val0, val1)]
            for w in sizes:
                pieces.append(cg.slice(x, o, w))
                o = o + w
            env[n0] = pieces
        elif op == "slice":
            x = a[0]
            dim = n0.args[1] if len(n0.args) > 1 else 0
            if dim == 0 and x.row and (val0.shape[0], val1.shape[0]) == (_B0, _B1):
                env[n0] = x
                continue
            if dim not in (1, -1):
                raise UnsupportedCellError(f"{where}: slicing along dim {dim}")
            step = n0.args[4] if len(n0.args) > 4 else 1
            if step != 1:
                raise UnsupportedCellError(f"{where}: a strided slice (step {step})")
            start = n0.args[2] if len(n0.args) > 2 and n0.args[2] is not None else 0
            s1 = n1.args[2] if len(n1.args) > 2 and n1.args[2] is not None else 0
            if start < 0:
                start, s1 = start + n0.args[0].meta["val"].shape[-1], s1 + n1.args[0].meta["val"].shape[-1]
            env[n0] = cg.slice(x, _fit_int(start, s1, where), width)
        elif op == "select":
            x, dim = a[0], n0.args[1]
            if dim not in (1, -1) or x.width is None:
                raise UnsupportedCellError(f"{where}: select along dim {dim}")
            i0, i1 = n0.args[2], n1.args[2]
            v = cg.slice(x, _fit_int(i0, i1, where), Lin(0, 1))
            env[n0] = Val(None, row=x.row, avail=v.avail, expr=cg.elem(v, "0", None))
        elif op == "slice_backward":
            g = a[0]
            dim = n0.args[2]
            if dim not in (1, -1) or n0.args[5] != 1:
                raise UnsupportedCellError(f"{where}: slice_backward along dim {dim}")
            st = _fit_int(n0.args[3], n1.args[3], where)
            end = Lin(st.a + g.width.a, st.b + g.width.b)
            if g.buf is None and g.lazy is None and g.width is not None:
                cg.materialize(g)
            env[n0] = Val(width, row=row, avail=g.avail, lazy=lambda j, gr, g=g, st=st, end=end:
                          L.cond(L.in_range(j, st, end), cg.elem(g, f'{j}-{st}', gr), "DT(0)"))
        elif op == "slice_scatter":
            base, src = a[0], a[1]
            dim = n0.args[2] if len(n0.args) > 2 else 0
            step = n0.args[5] if len(n0.args) > 5 else 1
            if dim not in (1, -1) or step != 1 or src.width is None:
                raise UnsupportedCellError(f"{where}: slice_scatter along dim {dim} with step {step}")
            st = _fit_int(n0.args[3] if len(n0.args) > 3 and n0.args[3] is not None else 0,
                          n1.args[3] if len(n1.args) > 3 and n1.args[3] is not None else 0, where)
            end = st + src.width
            for v in (base, src):
                if v.width is not None and v.buf is None and v.lazy is None:
                    cg.materialize(v)
            env[n0] = Val(width, row=row, avail=max(base.avail, src.avail),
                          lazy=lambda j, gr, b=base, sv=src, st=st, end=end:
                          L.cond(L.in_range(j, st, end), cg.elem(sv, f'{j}-{st}', gr), cg.elem(b, j, gr)))
        elif op == "cat":
            dim = n0.args[1] if len(n0.args) > 1 else 0
            if dim not in (1, -1):
                raise UnsupportedCellError(f"{where}: concatenation along dim {dim}")
            env[n0] = cg.cat(a[0], width, row)
        elif op in ("sum", "mean", "amax"):
            x = a[0]
            dims = n0.args[1] if len(n0.args) > 1 else None
            dims = [dims] if isinstance(dims, int) else dims
            nd = n0.args[0].meta["val"].dim()
            dims = [d % nd for d in dims] if dims else list(range(nd))
            if dims == [nd - 1] and x.width is not None:
                env[n0] = cg.reduce(x, op)
            elif dims == [0] and nd == 2 and x.row and op == "sum":
                env[n0] = _relabel(x, False, summed=True)
            elif dims == [0] and nd == 1 and x.row and op == "sum":
                env[n0] = Val(x.width, row=False, avail=x.avail, expr=x.expr, summed=True)
            else:
                raise UnsupportedCellError(f"{where}: reduction over dims {dims} of a {nd}-d tensor; the "
                                           "fused path reduces over the hidden dimension only")
        elif op == "native_layer_norm":
            x, shape, w, b = a[0], n0.args[1], a[2], a[3]
            eps = a[4]
            if x.width is None or len(shape) != 1:
                raise UnsupportedCellError(f"{where}: layer norm over more than the last dimension")
            mean = cg.reduce(x, "mean")
            xc = cg.ew(x.width, x.row, [x, mean], lambda e: f"({e[0]} - {e[1]})")
            var = cg.reduce(cg.ew(x.width, x.row, [xc], lambda e: f"({e[0]} * {e[0]})"), "mean")
            rstd = cg.ew(None, x.row, [var, eps], lambda e: L.rsqrt(f"{e[0]} + {e[1]}"))
            y = cg.ew(x.width, x.row, [x, mean, rstd], lambda e: f"(({e[0]} - {e[1]}) * {e[2]})")
            if w is not None:
                y = cg.ew(x.width, x.row, [y, w], lambda e: f"({e[0]} * {e[1]})")
            if b is not None:
                y = cg.ew(x.width, x.row, [y, b], lambda e: f"({e[0]} + {e[1]})")
            env[n0] = [y, mean, rstd]
        else:
            raise UnsupportedCellError(
                f"{what}: aten.{op} ({full}) is not supported by the fused {L.name} path; "
                "run this cell with backend='reference', or write the step with supported ops "
                "(elementwise math, chunk/split/slice/cat along the hidden dim, sum/mean/amax "
                "over the hidden dim, layer_norm)")
        if inplace:
            env[n0.args[0]] = env[n0]
    return cg, outs


def _relabel(x, row, summed=None):
    y = Val(x.width, row=row, avail=x.avail, expr=x.expr, const=x.const, group=x.group, local=x.local,
            buf=x.buf, off=x.off, lazy=x.lazy, summed=x.summed if summed is None else summed)
    return y


# ---------------------------------------------------------------- time loops

_HEADER = '''"""Generated by fastrnn.kernels.numba.custom for cell {name!r}; do not edit."""
import numpy as np
from numba import carray, cfunc, njit, types
from fastrnn.kernels.numba.rnn import tanh_, sigmoid_

_STEP_SIG = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64,
                        types.CPointer(types.voidptr), types.CPointer(types.int64))
_ENTRIES = {{}}


def step_address(kind, dtype):
    """The address of the C entry point of the "fwd" | "bwd" step in "float32" | "float64"."""
    key = (kind, dtype)
    if key not in _ENTRIES:
        fn = globals()[f"{{kind}}_entry_{{dtype}}"]
        _ENTRIES[key] = cfunc(_STEP_SIG, nopython=True, cache=True, error_model="numpy")(fn)
    return _ENTRIES[key].address

'''

# Forward over all steps and directions (see rnn.py's rnn_fwd for the packed-batch logic).
# gi [D, N, GH] input pre-activations; whh0/1 [GH, H]; bhh [D, GH] (added to gh when the
# cell folds biases); prm [D, P] cell parameters; zm [D, N, S*H] zoneout masks (or a dummy);
# st [D, S, B, H] initial states in, final states out; out [N, D*H];
# sprev [D, N, S, H] and ghs [D, N, GH] are saved for backward when save.
# Per step one BLAS GEMM into gh, then the step's rows (`fwd_step`, below).
_FWD = '''
@njit(nogil=True, cache=True, error_model="numpy", fastmath={{"reassoc", "contract"}})
def fwd_{dt}(gi, whh0, whh1, bhh, prm, zm, sizes, offsets, out, st, sprev, ghs, save):
    D = st.shape[0]
    B = st.shape[2]
    T = sizes.shape[0]
    GH = whh0.shape[0]
    gh = np.empty((max(B, 1), GH), dtype=np.{dt})
    for d in range(D):
        whh = whh0 if d == 0 else whh1
        for s in range(T):
            t = T - 1 - s if d == 1 else s
            bs = sizes[t]
            off = offsets[t]
            np.dot(st[d, 0, :bs], whh.T, gh[:bs])
            fwd_step_{dt}(d, off, 0, bs, gi, gh, bhh, prm, zm, out, st, sprev, ghs, save)
    return 0
'''

# Backward in reverse step order. ds [D, S, B, H]: dL/d(final states) in, dL/d(initial
# states) out; dgi, dgh [D, N, GH] <- pre-activation gradients; dprm [D, P] += parameter
# gradients. The weight gradients are GEMMs the caller runs after this loop.
_BWD = '''
@njit(nogil=True, cache=True, error_model="numpy", fastmath={{"reassoc", "contract"}})
def bwd_{dt}(gi, ghs, sprev, whh0, whh1, prm, zm, sizes, offsets, dout, ds, dgi, dgh, dprm):
    D = ds.shape[0]
    B = ds.shape[2]
    H = ds.shape[3]
    T = sizes.shape[0]
    tmp = np.empty((max(B, 1), H), dtype=np.{dt})
    for d in range(D):
        whh = whh0 if d == 0 else whh1
        for s in range(T):
            t = s if d == 1 else T - 1 - s
            bs = sizes[t]
            off = offsets[t]
            bwd_step_{dt}(d, off, 0, bs, gi, ghs, sprev, prm, zm, dout, ds, dgi, dgh, dprm)
            np.dot(dgh[d, off:off + bs], whh, tmp[:bs])
            for b in range(bs):
                for j in range(H):
                    ds[d, 0, b, j] += tmp[b, j]
    return 0
'''

# The cell rows of one step: called per step by the loops above, and through the C entry points
# below by the C++ time loop (`fastrnn._ext.custom_forward` / `custom_backward`, csrc/custom_loop.cpp),
# whose recurrent GEMMs are MKL's (several times faster than the OpenBLAS that numba's np.dot
# reaches at B >= 16).
# Each call allocates its scratch rows (ws: values the row code stores; ns: the new states; dso:
# the gradients reaching the step's outputs), (S + ws/H) * H values, against the house rule of no
# allocation per step, because the rule costs more than it saves here: LLVM vectorises the row
# loops only when it knows these rows alias nothing and their sizes are the literals below.
# Passed in by the caller instead, the LayerNorm-LSTM backward step (B=16, H=128, float32) took
# 125 us instead of 30 us, and allocating fresh rows sized from the passed-in arrays' shapes was
# as slow; the two allocations take ~0.1 us (measured at H = 128 and 512).
# Both run the step's rows b0 <= b < b1 (row off + b of gi and the saved values; the C++ loop splits
# a step's rows over threads, giving each its own dprm).
# fwd_step: gh [B, GH] = h_{t-1} W_hh^T of the step's rows (b_hh folded in here when the cell
# folds biases); writes the new states into st and out, and saves sprev/ghs when save.
_FWD_STEP = '''
@njit(nogil=True, cache=True, error_model="numpy", fastmath={{"reassoc", "contract"}})
def fwd_step_{dt}(d, off, b0, b1, gi, gh, bhh, prm, zm, out, st, sprev, ghs, save):
    H = st.shape[3]
    GH = gh.shape[1]
    ws = np.empty(max({ws}, 1), dtype=np.{dt})
    ns = np.empty(({S}, H), dtype=np.{dt})
{nsbind}
    pr = prm[d]
    for b in range(b0, b1):
            r = off + b
            ghr = gh[b]
{fold}
            if save:
                for k in range({S}):
                    for j in range(H):
                        sprev[d, r, k, j] = st[d, k, b, j]
                for j in range(GH):
                    ghs[d, r, j] = ghr[j]
            gir = gi[d, r]
            zmr = zm[d, r if zm.shape[1] > 1 else 0]
{bind}
{body}
            for j in range(H):
{copy}
    return 0
'''

# bwd_step: the cell rows of one reverse step (dso = ds + dout for h); writes dgi/dgh rows and
# dL/d(state entering the step) into ds, accumulates dprm; the caller then adds dgh W_hh to ds[d, 0].
_BWD_STEP = '''
@njit(nogil=True, cache=True, error_model="numpy", fastmath={{"reassoc", "contract"}})
def bwd_step_{dt}(d, off, b0, b1, gi, ghs, sprev, prm, zm, dout, ds, dgi, dgh, dprm):
    H = ds.shape[3]
    dso = np.empty(({S}, H), dtype=np.{dt})
{dsobind}
    ws = np.empty(max({ws}, 1), dtype=np.{dt})
    pr = prm[d]
    dpr = dprm[d]
    for b in range(b0, b1):
            r = off + b
            for j in range(H):
                dso[0, j] = ds[d, 0, b, j] + dout[r, d * H + j]
            for k in range(1, {S}):
                for j in range(H):
                    dso[k, j] = ds[d, k, b, j]
            gir = gi[d, r]
            ghr = ghs[d, r]
            dgir = dgi[d, r]
            dghr = dgh[d, r]
            zmr = zm[d, r if zm.shape[1] > 1 else 0]
{bind}
{body}
    return 0
'''

# C entry points of the step for the C++ time loop (csrc/custom_loop.cpp), one per direction of
# pass and dtype. ABI (`_STEP_SIG`):
#   int64 step(int64 d, int64 off, int64 b0, int64 b1, int64 save, void** ptrs, const int64* dims)
# runs rows b0 <= b < b1 of the step whose first row is `off` in direction d.
# ptrs: the step's arrays in the order of `_FWD_ARRAYS` / `_BWD_ARRAYS`; dims: a tag (1 forward,
# 2 backward; the element size in bytes), then the arrays' shapes concatenated in that order, each
# of the rank listed there. The C++ checks that the arrays agree with each other; the entry point
# checks, before reading further or touching memory, the tag (so a pointer of the other pass or
# dtype is refused) and that the arrays fit the cell it was generated for (states, gates, parameter
# and mask widths) and that the rows are in range; it returns 1 if not, else runs the rows, returns 0.
# `save` is ignored by the backward. The entry points compile on first use (`step_address`), so a
# process compiles only the dtype it runs, as with the @njit functions; numba's disk cache keeps them.
_FWD_ARRAYS = (("gi", 3), ("gh", 2), ("bhh", 2), ("prm", 2), ("zm", 3), ("out", 2), ("st", 4), ("sprev", 4),
               ("ghs", 3))
_BWD_ARRAYS = (("gi", 3), ("ghs", 3), ("sprev", 4), ("prm", 2), ("zm", 3), ("dout", 2), ("ds", 4), ("dgi", 3),
               ("dgh", 3), ("dprm", 2))
_CFUNC = '''
def {kind}_entry_{dt}(d, off, b0, b1, save, p, n):
    if n[0] != {tag} or n[1] != {itemsize}:
        return 1
{views}
    H = {states}.shape[3]
    if ({states}.shape[1] != {S} or gi.shape[2] != {G} * H or prm.shape[1] != {P} * H
            or ({Z} and zm.shape[2] != {S} * H) or d < 0 or d >= gi.shape[0] or b0 < 0 or b0 > b1
            or b1 > {states}.shape[2] or off < 0 or off + b1 > gi.shape[1]):
        return 1
    return {kind}_step_{dt}({args})
'''


def _cfunc_source(kind, dt, spec):
    """The C entry point of `{kind}_step_{dt}`, undecorated (see `_CFUNC`)."""
    arrays = _FWD_ARRAYS if kind == "fwd" else _BWD_ARRAYS
    views, i = [], 2
    for name, rank in arrays:
        views.append(f"    {name} = carray(p[{len(views)}], ({', '.join(f'n[{i + k}]' for k in range(rank))},), "
                     f"np.{dt})")
        i += rank
    names = [name for name, _ in arrays]
    args = names + (["save != 0"] if kind == "fwd" else [])
    return _CFUNC.format(kind=kind, dt=dt, tag=1 if kind == "fwd" else 2, itemsize=4 if dt == "float32" else 8,
                         views="\n".join(views), states="st" if kind == "fwd" else "ds",
                         S=spec.n_states, G=spec.gates, P=sum(spec.param_widths), Z=bool(spec.zoneout),
                         args=", ".join(["d", "off", "b0", "b1"] + args))


@dataclass
class CellSpec:
    """What the kernel generator needs to know about a cell (built by fastrnn.custom)."""
    name: str
    gates: int
    n_states: int
    param_widths: list      # in units of H, in the order the step takes them
    fold_bias: bool
    zoneout: bool


def _param_offsets(widths):
    offs, o = [], Lin(0, 0)
    for w in widths:
        offs.append(o)
        o = o + Lin(w, 0)
    return offs


def _binder(spec, extra_douts):
    """Placeholder index -> Val for the step's inputs (gi, gh, states, params, masks[, douts])."""
    S, P = spec.n_states, len(spec.param_widths)
    offs = _param_offsets(spec.param_widths)
    nz = S if spec.zoneout else 0

    def bind(i, row, width):
        if i == 0:
            return Val(Lin(spec.gates, 0), buf="gir")
        if i == 1:
            return Val(Lin(spec.gates, 0), buf="ghr")
        i -= 2
        if i < S:
            return Val(Lin(1, 0), buf=f"sk{i}")
        i -= S
        if i < P:
            return Val(Lin(spec.param_widths[i], 0), row=False, buf="pr", off=str(offs[i]))
        i -= P
        if i < nz:
            return Val(Lin(1, 0), buf="zmr", off=str(Lin(i, 0)))
        i -= nz
        if extra_douts and i < S:
            return Val(Lin(1, 0), buf=f"dso{i}")
        raise AssertionError("unexpected placeholder")
    return bind


def trace_cell(step_fn, vjp_fn, make_fwd_args, make_bwd_args):
    """The traced graph pairs (forward, VJP) every language's generator lowers: traced once
    per cell definition, whichever kernels are built from them."""
    return trace_pair(step_fn, make_fwd_args), trace_pair(vjp_fn, make_bwd_args)


def lower_cell(spec, traced, lang=None, out_bufs=()):
    """Lower a cell's traced forward and VJP to row code in `lang`; returns (fwd codegen, bwd
    codegen). Forward stores new state k to buffer `ns{k}` (and state 0 also to each of
    `out_bufs`); backward stores dgir, dghr, dsk{k} and accumulates the parameter gradients
    into `dpr` (one batch row's contribution: the caller sums over rows)."""
    S = spec.n_states
    (f0, f1), (b0, b1) = traced
    cg, outs = lower(f0, f1, _binder(spec, False), f"cell {spec.name!r} forward", lang)
    if len(outs) != S:
        raise UnsupportedCellError(f"cell {spec.name!r}: the step returned {len(outs)} states, expected {S}")
    for k, v in enumerate(outs):
        if v is None or v.summed:
            raise UnsupportedCellError(f"cell {spec.name!r}: new state {k} is not a per-row tensor")
        cg.store(v, f"ns{k}", "0", Lin(1, 0))
    for buf in out_bufs:
        cg.store(outs[0], buf, "0", Lin(1, 0))

    bg, bouts = lower(b0, b1, _binder(spec, True), f"cell {spec.name!r} backward", lang)
    dsts = [("dgir", "0", Lin(spec.gates, 0), False), ("dghr", "0", Lin(spec.gates, 0), False)]
    dsts += [(f"dsk{k}", "0", Lin(1, 0), False) for k in range(S)]
    dsts += [("dpr", str(o), Lin(w, 0), True) for o, w in zip(_param_offsets(spec.param_widths), spec.param_widths)]
    for v, (buf, off, w, acc) in zip(bouts, dsts):
        if v is None:
            if not acc:
                bg.store(bg.lit(0.0), buf, off, w)
            continue
        if acc and not v.summed and not (v.width is None and v.const is not None):
            raise UnsupportedCellError(f"cell {spec.name!r}: a parameter gradient that is not a sum over "
                                       "the batch (is a parameter used without broadcasting over rows?)")
        bg.store(v, buf, off, w, acc=acc)
    return cg, bg


def generate_source(spec, traced):
    """The Numba kernel module's source for a cell traced by `trace_cell`."""
    S = spec.n_states
    cg, bg = lower_cell(spec, traced)
    pad = " " * 12   # the row loop's body in _FWD_STEP / _BWD_STEP
    bind = [f"{pad}sk{k} = st[d, {k}, b]" for k in range(S)]
    bbind = [f"{pad}sk{k} = sprev[d, r, {k}]" for k in range(S)]
    bbind += [f"{pad}dsk{k} = ds[d, {k}, b]" for k in range(S)]
    nsbind = "\n".join(f"    ns{k} = ns[{k}]" for k in range(S))
    dsobind = "\n".join(f"    dso{k} = dso[{k}]" for k in range(S))
    copy = [f"{pad}    st[d, {k}, b, j] = ns[{k}, j]" for k in range(S)]
    copy.append(f"{pad}    out[r, d * H + j] = ns[0, j]")
    fold = f"{pad}for j in range(GH):\n{pad}    ghr[j] += bhh[d, j]" if spec.fold_bias else ""
    src = _HEADER.format(name=spec.name)
    for dt in ("float32", "float64"):
        D = f"np.{dt}("
        src += _FWD_STEP.format(dt=dt, S=S, nsbind=nsbind, ws=cg.ws, fold=fold, bind="\n".join(bind),
                                body="\n".join(cg.lines(12)).replace("DT(", D), copy="\n".join(copy))
        src += _BWD_STEP.format(dt=dt, S=S, dsobind=dsobind, ws=bg.ws, bind="\n".join(bbind),
                                body="\n".join(bg.lines(12)).replace("DT(", D))
        src += _FWD.format(dt=dt) + _BWD.format(dt=dt)
        src += _cfunc_source("fwd", dt, spec) + _cfunc_source("bwd", dt, spec)
    return src


def _cache_dir(sub="numba_custom"):
    base = os.environ.get("FASTRNN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastrnn")
    d = os.path.join(base, sub)
    try:
        os.makedirs(d, exist_ok=True)
        return d
    except OSError:
        d = os.path.join(tempfile.gettempdir(), "fastrnn_" + sub)
        os.makedirs(d, exist_ok=True)
        return d


def load_module(src):
    """Write the generated source under the cache dir (once) and import it, so that numba's
    on-disk cache keys on a stable file."""
    h = hashlib.sha256(src.encode()).hexdigest()[:20]
    modname = f"fastrnn_custom_cell_{h}"
    if modname in sys.modules:
        return sys.modules[modname]
    path = os.path.join(_cache_dir(), modname + ".py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(src)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
