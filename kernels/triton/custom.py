"""Triton kernels generated from a user's cell step (`fastrnn.CellDef`).

Installed as `fastrnn.kernels.triton.custom`; driven by `fastrnn.custom` (backend "triton": CUDA
tensors, or CPU tensors under TRITON_INTERPRET=1 for tests).

How a cell becomes a kernel
---------------------------
The cell is traced once (`fastrnn.kernels.numba.custom.trace_cell`: the step and its VJP as aten
graphs at two sizes) and lowered by the same graph walk (`lower`/`RowCodegen`) that writes the
Numba kernels; only the spelling differs (`TritonLang` here, `NumbaLang` there). Numba spells a
`Group` (the values of one width `a*H+b` computed together) as a scalar `for j` loop; Triton
spells it as one block operation over `j = tl.arange(0, BW)` with `jm = j < width`: every
intermediate is a register vector of the whole row. A value another group reads at other
indices (a slice, a concatenation) goes through a per-row scratch row `ws` in global memory, with
a `tl.debug_barrier()` between groups so a thread sees what another thread of the program wrote.

Cross-thread reductions (LayerNorm's mean and variance, `sum`/`mean`/`amax` over the hidden
dimension): one program per batch row holds the WHOLE hidden row in one block (BW = next power of
two of the row width), so a reduction is a `tl.sum` over that block, the one reduction across
the program's threads, done by Triton (warp shuffles, then shared memory across warps). Nothing
reduces across programs, so there are no atomics and no second pass; the cost is that H is
bounded by what one program holds (a 4H row of 2048 floats at H=512 is 16 registers a thread
at 4 warps, well within bounds; `num_warps` grows with the row).

Time loop (host, one launch per step; the first GPU session should move it into a CUDA graph as
`fastrnn.backends.triton` does): the recurrent product `h_{t-1} W_hh^T + b_hh` is a torch matmul
into the saved `ghs` rows, then the generated forward kernel (grid = active batch rows) computes
the cell and writes the new states in place and the output row. Backward in reverse: the
generated kernel recomputes the step from the saved pre-activations and states and writes the
gate gradients, `dh_{t-1} += dG W_hh` is a torch matmul, and the weight gradients are one GEMM
each after the loop (`fastrnn.custom`). Parameter gradients accumulate per batch row (a program
owns its row for the whole loop, so no atomics) and are summed over rows after the loop.

Layouts and the contract are those of the Numba kernels (`fastrnn.custom._FusedLayer`):
gi [D, N, GH], whh0/1 [GH, H], bhh [D, GH], prm [D, P], zm [D, N, S*H] | [D, 1, 1],
st0 [D, S, B, H] -> out [N, D*H], st [D, S, B, H], saved sprev [D, N, S, H], ghs [D, N, GH].

Numerics: tanh and sigmoid are rnn.py's (written with exp, so the interpreter runs the same
code); constants are materialised in the kernel's dtype (`tl.full`), and constants that depend
on H (the 1/(4H) of a layer-norm backward) are computed in that dtype from H at run time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys

import torch

from fastrnn.kernels.numba.custom import UnsupportedCellError, _BINARY, _UNARY, _cache_dir, lower_cell

__all__ = ["TritonLang", "generate_triton_source", "load_triton_module", "TritonCellKernels"]

_T_UNARY = {
    "neg": "(-{0})", "sigmoid": "_sigmoid({0})", "tanh": "_tanh({0})", "exp": "tl.exp({0})",
    "log": "tl.log({0})", "log1p": "tl.log(DT(1) + {0})", "expm1": "(tl.exp({0}) - DT(1))",
    "sqrt": "tl.sqrt({0})", "rsqrt": "(DT(1) / tl.sqrt({0}))", "reciprocal": "(DT(1) / {0})",
    "abs": "tl.abs({0})", "sin": "tl.sin({0})", "cos": "tl.cos({0})",
    "relu": "tl.where({0} > DT(0), {0}, DT(0))", "logical_not": "({0} == 0)",
    "sign": "tl.where({0} > DT(0), DT(1), tl.where({0} < DT(0), DT(-1), DT(0)))",
}
_T_BINARY = dict(_BINARY, maximum="tl.maximum({0}, {1})", minimum="tl.minimum({0}, {1})",
                 logical_and="(({0} != 0) & ({1} != 0))", logical_or="(({0} != 0) | ({1} != 0))")
assert set(_T_UNARY) == set(_UNARY) and set(_T_BINARY) == set(_BINARY)


def _block_name(width):
    return f"BW_{width.a}_{width.b}".replace("-", "m")


class TritonLang:
    """Row code spelled as Triton block operations (see the module docstring)."""

    name = "Triton"

    def __init__(self):
        self.unary, self.binary = _T_UNARY, _T_BINARY
        self.blocks = set()
        self.n = 0

    def cond(self, c, a, b):
        return f"tl.where({c}, {a}, {b})"

    def in_range(self, j, lo, hi):
        return f"((({j}) >= ({lo})) & (({j}) < ({hi})))"

    def maxf(self, a, b):
        return f"tl.maximum({a}, {b})"

    def minf(self, a, b):
        return f"tl.minimum({a}, {b})"

    def pow(self, a, b, ex, where):
        forms = {0.5: "tl.sqrt({0})", -0.5: "(DT(1) / tl.sqrt({0}))", 3: "({0} * {0} * {0})",
                 -1: "(DT(1) / {0})", 1: "({0})", -2: "(DT(1) / ({0} * {0}))"}
        if ex not in forms:
            raise UnsupportedCellError(f"{where}: pow with exponent {ex!r} is not supported by the fused Triton "
                                       "path (exponents 2, 3, 0.5, -0.5, -1, -2 are)")
        return forms[ex].format(a)

    def rsqrt(self, e):
        return f"(DT(1) / tl.sqrt({e}))"

    def elem(self, v, j, group):
        if group is None:
            return f"tl.load({v.buf} + {v.off} + {j})"
        key = (v.buf, v.off, j, str(v.width))
        if key not in group.loads:
            self.n += 1
            nm = f"ld{self.n}"
            mask = "jm" if j == "j" and v.width == group.width else f"jm & (({j}) >= 0) & (({j}) < {v.width})"
            group.body.append(f"{nm} = tl.load({v.buf} + {v.off} + {j}, mask={mask}, other=0.0)")
            group.loads[key] = nm
        return group.loads[key]

    def store(self, buf, off, e, acc):
        p = f"{buf} + {off} + j"
        if acc:
            return f"tl.store({p}, tl.load({p}, mask=jm, other=0.0) + {e}, mask=jm)"
        return f"tl.store({p}, {e}, mask=jm)"

    def reduce(self, nm, e, kind, width):
        # The whole row is one block: tl.sum/tl.max is the cross-thread reduction.
        if kind == "amax":
            return [], [f"{nm} = tl.max(tl.where(jm, {e}, float('-inf')), axis=0)"], []
        n = f"{width.b}.0" if width.a == 0 else f"({width}).to(DT)"   # H is a run-time i32
        post = [f"{nm} = {nm} / {n}"] if kind == "mean" else []
        return [], [f"{nm} = tl.sum(tl.where(jm, {e}, DT(0)), axis=0)"], post

    def group_lines(self, g, pad, first):
        self.blocks.add(g.width)
        lines = [] if first else ["tl.debug_barrier()"]
        lines += [f"j = tl.arange(0, {_block_name(g.width)})", f"jm = j < ({g.width})"]
        return [pad + s for s in lines + g.pre + g.body + g.post]

    def item_lines(self, lines, pad, first):
        bar = [] if first or not any("tl.load(" in s for s in lines) else ["tl.debug_barrier()"]
        return [pad + s for s in bar + list(lines)]


def _consts(src):
    """`DT(x)` -> a value of the kernel's dtype: a literal through tl.full (exact in float64,
    where a bare Python float in Triton would be taken as float32 first), an expression in H
    through HF (H converted to DT once per program)."""
    out, i = [], 0
    while True:
        k = src.find("DT(", i)
        if k < 0:
            out.append(src[i:])
            return "".join(out)
        if k > 0 and (src[k - 1].isalnum() or src[k - 1] == "_"):
            out.append(src[i:k + 3])
            i = k + 3
            continue
        depth, e = 1, k + 3
        while depth:
            depth += {"(": 1, ")": -1}.get(src[e], 0)
            e += 1
        inner = src[k + 3:e - 1]
        out.append(src[i:k])
        try:
            v = float(inner)
        except ValueError:
            out.append("(" + re.sub(r"\bH\b", "HF", _consts(inner)) + ")")
        else:
            if v != v or v in (float("inf"), float("-inf")):
                out.append(f"tl.full([], float('{v}'), DT)")
            else:
                out.append(f"tl.full([], {v!r}, DT)")
        i = e


_HEADER = '''"""Generated by fastrnn.kernels.triton.custom for cell {name!r}; do not edit."""
import triton
import triton.language as tl
from fastrnn.kernels.triton.rnn import _jit, _sigmoid, _tanh

CELL = {name!r}
N_STATES = {S}
BLOCKS = {blocks!r}   # constexpr name -> (a, b): next power of two of a*H + b


def blocks(H):
    return {{k: triton.next_power_of_2(max(a * H + b, 1)) for k, (a, b) in BLOCKS.items()}}


def ws_size(H):
    return max({fws}, {bws}, 1)


def num_warps(H):
    w = max(v for v in blocks(H).values()) if BLOCKS else 1
    return 4 if w <= 1024 else 8 if w <= 4096 else 16
'''

# One program per active batch row b of the step. Row pointers: gir = gi[d, off+b],
# ghr = ghs[d, off+b] (h_{t-1} W_hh^T + b_hh, computed before the launch), sk{k} =
# sprev[d, off+b, k] (the states entering the step), pr = prm[d], zmr = zm[d, off+b];
# writes ns{k} = st[d, k, b] (new states) and outr = out[off+b, d*H:].
_FWD = '''

@_jit
def fwd_kernel(GI, s_gi, GH, s_gh, SP, s_sp, PR, ZM, s_zm, ST, s_st, OUT, s_out, WS, s_ws, H,
               DT: tl.constexpr, {blockargs}):
    b = tl.program_id(0).to(tl.int64)
    HF = H.to(DT)
    gir = GI + b * s_gi
    ghr = GH + b * s_gh
    pr = PR
    zmr = ZM + b * s_zm
    ws = WS + b * s_ws
    outr = OUT + b * s_out
{bind}
{body}
'''

# Backward of one step, one program per active row: dso{k} = dL/d(new state k) (prepared by the
# host: ds + dout for h); writes dgir = dgi[d, off+b], dghr = dgh[d, off+b], dsk{k} = ds[d, k, b]
# (dL/d(state entering the step), before the recurrent term the host adds), and accumulates this
# row's parameter gradients into dpr = dprow[d, b].
_BWD = '''

@_jit
def bwd_kernel(GI, s_gi, GH, s_gh, SP, s_sp, PR, ZM, s_zm, DSO, s_dso, DS, s_ds, DGI, DGH, s_dg,
               DPR, WS, s_ws, P, H, DT: tl.constexpr, {blockargs}):
    b = tl.program_id(0).to(tl.int64)
    HF = H.to(DT)
    gir = GI + b * s_gi
    ghr = GH + b * s_gh
    pr = PR
    zmr = ZM + b * s_zm
    ws = WS + b * s_ws
    dgir = DGI + b * s_dg
    dghr = DGH + b * s_dg
    dpr = DPR + b * P
{bind}
{body}
'''


def generate_triton_source(spec, traced):
    """The Triton kernel module's source for a cell traced by `trace_cell` (its forward and
    backward step kernels, `blocks(H)`, `ws_size(H)`, `num_warps(H)`)."""
    lang = TritonLang()
    cg, bg = lower_cell(spec, traced, lang, out_bufs=("outr",))
    fwd_body, bwd_body = cg.lines(4), bg.lines(4)
    if not fwd_body or not bwd_body:
        raise UnsupportedCellError(f"cell {spec.name!r}: an empty step")
    S = spec.n_states
    blocks = {_block_name(w): (w.a, w.b) for w in sorted(lang.blocks, key=lambda w: (w.a, w.b))}
    blockargs = ", ".join(f"{k}: tl.constexpr" for k in blocks)
    sk = [f"    sk{k} = SP + b * s_sp + {k} * H" for k in range(S)]
    fbind = sk + [f"    ns{k} = ST + {k} * s_st + b * H" for k in range(S)]
    bbind = sk + [f"    dso{k} = DSO + {k} * s_dso + b * H" for k in range(S)]
    bbind += [f"    dsk{k} = DS + {k} * s_ds + b * H" for k in range(S)]
    src = _HEADER.format(name=spec.name, S=S, blocks=blocks, fws=cg.ws, bws=bg.ws)
    src += _FWD.format(blockargs=blockargs, bind="\n".join(fbind), body=_consts("\n".join(fwd_body)))
    src += _BWD.format(blockargs=blockargs, bind="\n".join(bbind), body=_consts("\n".join(bwd_body)))
    return src


def load_triton_module(src):
    """Write the generated source under the cache dir (Triton's jit reads a kernel's source from
    its file) and import it; returns the runner (`TritonCellKernels`)."""
    h = hashlib.sha256(src.encode()).hexdigest()[:20]
    modname = f"fastrnn_triton_cell_{h}"
    if modname not in sys.modules:
        path = os.path.join(_cache_dir("triton_custom"), modname + ".py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return TritonCellKernels(sys.modules[modname])


# Under the interpreter (tests) every output buffer starts as NaN, so an element no kernel wrote fails.
_POISON = os.environ.get("TRITON_INTERPRET") == "1"


def _new(like, *shape):
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device) if _POISON else like.new_empty(shape)


_TL = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class TritonCellKernels:
    """Host time loops around a generated module's step kernels; the same contract as the Numba
    kernels (`fastrnn.custom._FusedLayer`)."""

    def __init__(self, mod):
        self.mod = mod

    def _meta(self, H, dtype):
        import triton.language as tl
        return dict(DT=getattr(tl, _TL[dtype]), num_warps=self.mod.num_warps(H), **self.mod.blocks(H))

    def forward(self, gi, whh0, whh1, bhh, prm, zm, st0, sizes, offsets, save):
        """gi [D, N, GH] ... (module docstring) -> out, st, sprev, ghs (the last two only when save)."""
        D, N, GH = gi.shape
        _, S, B, H = st0.shape
        sizes, offsets = [int(v) for v in sizes], [int(v) for v in offsets]
        out = _new(gi, N, D * H)
        st = st0.clone()
        sprev = _new(gi, D, N, S, H) if save else _new(gi, 1, max(B, 1), S, H)
        ghs = _new(gi, D, N, GH) if save else _new(gi, 1, max(B, 1), GH)
        ws = _new(gi, max(B, 1), self.mod.ws_size(H))
        meta = self._meta(H, gi.dtype)
        zs = zm.stride(1) if zm.size(1) > 1 else 0
        T = len(sizes)
        for d in range(D):
            whh_t = (whh0 if d == 0 else whh1).t()
            for s in range(T):
                t = T - 1 - s if d == 1 else s
                bs, off = sizes[t], offsets[t]
                sp = sprev[d, off:off + bs] if save else sprev[0, :bs]
                sp.copy_(st[d, :, :bs].transpose(0, 1))
                gh = ghs[d, off:off + bs] if save else ghs[0, :bs]
                torch.addmm(bhh[d], sp[:, 0], whh_t, out=gh)
                self.mod.fwd_kernel[(bs,)](
                    gi[d, off:], GH, gh, GH, sp, S * H, prm[d], zm[d, off:] if zs else zm[d], zs,
                    st[d], B * H, out[off:, d * H:], D * H, ws, ws.stride(0), H, **meta)
        return out, st, sprev, ghs

    def backward(self, gi, ghs, sprev, whh0, whh1, prm, zm, sizes, offsets, dout, ds):
        """Reverse loop; ds [D, S, B, H] in (dL/d final states), out (dL/d initial states).
        Returns dgi, dgh [D, N, GH], dprm [D, P]."""
        D, N, GH = gi.shape
        S, H = sprev.shape[2], sprev.shape[3]
        B = ds.shape[2]
        P = prm.shape[1]
        sizes, offsets = [int(v) for v in sizes], [int(v) for v in offsets]
        dgi, dgh = _new(gi, *gi.shape), _new(gi, *ghs.shape)
        dprow = gi.new_zeros(D, max(B, 1), max(P, 1))
        dso = _new(gi, S, max(B, 1), H)
        ws = _new(gi, max(B, 1), self.mod.ws_size(H))
        meta = self._meta(H, gi.dtype)
        zs = zm.stride(1) if zm.size(1) > 1 else 0
        T = len(sizes)
        for d in range(D):
            whh = whh0 if d == 0 else whh1
            for s in range(T):
                t = s if d == 1 else T - 1 - s
                bs, off = sizes[t], offsets[t]
                torch.add(ds[d, 0, :bs], dout[off:off + bs, d * H:(d + 1) * H], out=dso[0, :bs])
                if S > 1:
                    dso[1:, :bs].copy_(ds[d, 1:, :bs])
                self.mod.bwd_kernel[(bs,)](
                    gi[d, off:], GH, ghs[d, off:], GH, sprev[d, off:], S * H, prm[d],
                    zm[d, off:] if zs else zm[d], zs, dso, dso.stride(0), ds[d], ds.stride(1),
                    dgi[d, off:], dgh[d, off:], GH, dprow[d], ws, ws.stride(0), dprow.size(2), H, **meta)
                ds[d, 0, :bs].addmm_(dgh[d, off:off + bs], whh)
        return dgi, dgh, dprow.sum(1)[:, :P]
