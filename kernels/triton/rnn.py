"""Fused Triton step kernels for LSTM, GRU and Elman RNN (one template, `CELL: tl.constexpr`).

Reference (same math, same op signature one level up): `fastrnn.backends.reference`.

Forward, one launch per time step (`fwd_step`): each program owns a [BLOCK_B x BLOCK_H] tile of
the batch x hidden plane and computes *all* G gate columns of that tile,
`gates = gi_t + h_{t-1} @ W_hh^T + b_hh` with `tl.dot` (fp32 accumulation, fp64 for fp64), so
the epilogue can apply the whole cell: activations, cell-state update, h_t, and the saved
activations backward needs. The input projection `gi = x @ W_ih^T + b_ih` for every step is one
GEMM done by the caller.

Backward, one launch per reverse step (`bwd_step`): the gradient reaching h_t is formed inside
the kernel as `dout_t + dG_{t+1} @ W_hh` (tl.dot over G*H), then the pointwise gate gradients are
applied from the saved activations and written as dG_t; the weight gradients are GEMMs over all
steps done by the caller after the loop.

PackedSequence: a step has `bs` active rows; rows `< n_prev` take h_{t-1} (and c_{t-1}) from the
previously processed step, rows `>= n_prev` from h0/c0 (a reverse-direction sequence starts at its
own last step). Backward mirrors it with `n_next`: rows `< n_next` receive their gradient from the
next processed step, the others from dhn/dcn.

Persistent forward (`fwd_seq`, small H only): one launch per direction runs all T steps, one
program per batch tile holding W_hh in registers; it writes the same buffers as `fwd_step`.

`CELL == NONE` turns `bwd_step` into a plain `Y = dY + A @ W` (rows >= n_a: `Y = DF`), used for the
LSTM projection (`h = W_hr r` forward, `dh = dout + dG_{t+1} W_hh` before `dr = dh W_hr` backward).

Numerics: `tanh` is written with `exp` (no libdevice call, so the interpreter runs the same code);
`sign(x) (1 - e) / (1 + e)`, `e = exp(-2|x|)` has absolute error ~1 ulp of 1, which is what matters
for a bounded activation. fp32 dots use `PREC` ("ieee" unless torch allows tf32).

Compile budget: every argument that is not a `tl.constexpr` (sizes H, K, N, KA, T, B; row counts;
strides; the 0/1 flags STORE_S, HAS_BIAS, HAS_DY, HAS_EF, REVERSE) is a run-time value, and neither
integers nor pointers are specialised (`_jit`: no "== 1" or "% 16" keys, no 16-byte alignment keys,
which the per-step row views `o[poff:]` at odd H flipped from step to step). One compile serves
every layer shape of a (kernel, cell, dtype, tf32) variant; the step kernels always use one
16 x 32 tile (`_blocks`), the persistent ones one BLOCK_H per dtype (`SEQ_BLOCK_H`).
`tests/test_triton_compile.py` counts the compiles a run asks for and compiles every variant for
sm_90 checking for spills. (Cost: no 16-byte vector loads; a GPU measurement decides whether an
aligned variant is worth its compiles.)
"""
from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from fastrnn.cells import CELLS

# The cells' facts come from fastrnn/cells.py (CELL below is their id, a constexpr); the saved
# fp32 activations per row, in units of H: lstm i,f,g,o; gru r,z,n,(W_hn h + b_hn); rnn h.
CELL_IDS = {name: c.id for name, c in CELLS.items()}
LSTM, GRU, RNN_TANH, RNN_RELU = (CELL_IDS[n] for n in ("lstm", "gru", "rnn_tanh", "rnn_relu"))
NONE = 4  # no cell: the kernels' projection-only variant
GATES = {c.id: c.gates for c in CELLS.values()}
SAVED = {c.id: c.saved for c in CELLS.values()}


def _jit(fn):
    """`triton.jit` for a kernel whose run-time arguments are never specialised (see the module
    docstring: one compile per variant, not per shape, stride or alignment)."""
    runtime = [n for n, p in inspect.signature(fn).parameters.items() if "constexpr" not in str(p.annotation)]
    return triton.jit(fn, do_not_specialize=runtime, do_not_specialize_on_alignment=runtime)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    # DOT_F32 only under the interpreter: its bf16 tl.dot is wrong (triton 3.6), so bf16 operands
    # are widened there (exact products, same fp32 accumulation). On GPU it is always False.
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _load_rows2(P, s_p, Q, s_q, rows, cols, n_first, n_rows, n_cols):
    """Rows < n_first from P, rows in [n_first, n_rows) from Q (both [rows, n_cols] views)."""
    inb = (rows < n_rows) & (cols < n_cols)
    a = tl.load(P + rows * s_p + cols, mask=inb & (rows < n_first), other=0.0)
    b = tl.load(Q + rows * s_q + cols, mask=inb & (rows >= n_first), other=0.0)
    return tl.where(rows < n_first, a, b)


@_jit
def _fwd_step_kernel(GI, s_gi, HP, s_hp, H0, s_h0, CP, s_cp, C0, s_c0, W, s_w, BHH,
                     HO, s_ho, CO, s_co, S, s_s,
                     bs, n_prev, H, K, HAS_BIAS, STORE_S,
                     CELL: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_b.to(tl.int64)[:, None]          # int64: row * stride may pass 2**31
    cols = offs_h[None, :]
    wrow = offs_h.to(tl.int64)[None, :] * s_w     # W^T tile: element (k, j) = W[j, k]
    gate = H * s_w  # elements between gate blocks of W_hh

    acc0 = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    acc1 = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    acc2 = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    acc3 = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = _load_rows2(HP, s_hp, H0, s_h0, rows, kk[None, :], n_prev, bs, K)
        wmask = (kk[:, None] < K) & (cols < H)
        wp = W + wrow + kk[:, None]
        acc0 += _dot(a, tl.load(wp, mask=wmask, other=0.0), PREC, DOT_F32)
        if CELL <= 1:
            acc1 += _dot(a, tl.load(wp + gate, mask=wmask, other=0.0), PREC, DOT_F32)
            acc2 += _dot(a, tl.load(wp + 2 * gate, mask=wmask, other=0.0), PREC, DOT_F32)
        if CELL == 0:
            acc3 += _dot(a, tl.load(wp + 3 * gate, mask=wmask, other=0.0), PREC, DOT_F32)

    m = (rows < bs) & (cols < H)
    hmask = offs_h < H
    if HAS_BIAS != 0:
        acc0 += tl.load(BHH + offs_h, mask=hmask, other=0.0).to(ACC)[None, :]
        if CELL <= 1:
            acc1 += tl.load(BHH + H + offs_h, mask=hmask, other=0.0).to(ACC)[None, :]
            acc2 += tl.load(BHH + 2 * H + offs_h, mask=hmask, other=0.0).to(ACC)[None, :]
        if CELL == 0:
            acc3 += tl.load(BHH + 3 * H + offs_h, mask=hmask, other=0.0).to(ACC)[None, :]
    c_prev = acc0
    h_prev = acc0
    if CELL == 0:
        c_prev = _load_rows2(CP, s_cp, C0, s_c0, rows, cols, n_prev, bs, H).to(ACC)
    if CELL == 1:
        h_prev = _load_rows2(HP, s_hp, H0, s_h0, rows, cols, n_prev, bs, H).to(ACC)
    h, c = _cell_fwd(GI + rows * s_gi + cols, S + rows * s_s + cols, m, acc0, acc1, acc2, acc3,
                     c_prev, h_prev, H, STORE_S, CELL, ACC)
    if CELL == 0:
        tl.store(CO + rows * s_co + cols, c.to(CO.dtype.element_ty), mask=m)
    tl.store(HO + rows * s_ho + cols, h.to(HO.dtype.element_ty), mask=m)


@triton.jit
def _cell_fwd(gp, sp, m, x0, x1, x2, x3, c_prev, h_prev, H, STORE_S,
              CELL: tl.constexpr, ACC: tl.constexpr):
    """The cell's pointwise forward for one tile. x*: W_hh h + b_hh per gate; gp/sp: pointers to
    the tile's gi and saved-activation rows. Returns (h, c); c is c_prev for cells without one."""
    st = sp.dtype.element_ty
    g0 = tl.load(gp, mask=m, other=0.0).to(ACC)
    c = c_prev
    if CELL == 0:
        i = _sigmoid(x0 + g0)
        f = _sigmoid(x1 + tl.load(gp + H, mask=m, other=0.0).to(ACC))
        g = _tanh(x2 + tl.load(gp + 2 * H, mask=m, other=0.0).to(ACC))
        o = _sigmoid(x3 + tl.load(gp + 3 * H, mask=m, other=0.0).to(ACC))
        c = f * c_prev + i * g
        h = o * _tanh(c)
        if STORE_S != 0:
            tl.store(sp, i.to(st), mask=m)
            tl.store(sp + H, f.to(st), mask=m)
            tl.store(sp + 2 * H, g.to(st), mask=m)
            tl.store(sp + 3 * H, o.to(st), mask=m)
    elif CELL == 1:
        r = _sigmoid(x0 + g0)
        z = _sigmoid(x1 + tl.load(gp + H, mask=m, other=0.0).to(ACC))
        n = _tanh(tl.load(gp + 2 * H, mask=m, other=0.0).to(ACC) + r * x2)  # b_hn inside r*(.)
        h = n + z * (h_prev - n)
        if STORE_S != 0:
            tl.store(sp, r.to(st), mask=m)
            tl.store(sp + H, z.to(st), mask=m)
            tl.store(sp + 2 * H, n.to(st), mask=m)
            tl.store(sp + 3 * H, x2.to(st), mask=m)
    else:
        if CELL == 2:
            h = _tanh(x0 + g0)
        else:
            h = tl.maximum(x0 + g0, 0.0)
        if STORE_S != 0:
            tl.store(sp, h.to(st), mask=m)
    return h, c


@triton.jit
def _load_gate_blocks(wp, gate, wmask, CELL: tl.constexpr):
    """The G gate blocks of W_hh (G = 4, 3, 1 by CELL) as register tiles, one `gate` stride
    apart; unused ones alias the first so every cell returns four."""
    w0 = tl.load(wp, mask=wmask, other=0.0)
    w1 = w0
    w2 = w0
    w3 = w0
    if CELL <= 1:
        w1 = tl.load(wp + gate, mask=wmask, other=0.0)
        w2 = tl.load(wp + 2 * gate, mask=wmask, other=0.0)
    if CELL == 0:
        w3 = tl.load(wp + 3 * gate, mask=wmask, other=0.0)
    return w0, w1, w2, w3


@_jit
def _fwd_seq_kernel(GI, s_gi, H0, s_h0, C0, s_c0, W, s_w, BHH, OUT, s_o, CO, s_co, S, s_s,
                    HN, s_hn, CN, s_cn, BS, OFF, T, B, H, HAS_BIAS, STORE_S, REVERSE,
                    CELL: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Persistent forward: the whole sequence of one direction in one launch. One program per
    batch tile holds W_hh (all G gates, H <= BLOCK_H) and its rows' h, c in registers for all
    T steps; no program depends on another, so no grid barrier. Writes the same out/C/S as
    the step kernel (backward is shared) plus hn/cn. Packed rows: a row outside the step's
    batch keeps its state, which is its final state (forward) or h0 until it starts (reverse)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    rows = offs_b.to(tl.int64)[:, None]
    cols = offs_h[None, :]
    hmask = offs_h < H
    wmask = (offs_h[:, None] < H) & (cols < H)
    wp = W + offs_h.to(tl.int64)[None, :] * s_w + offs_h[:, None]  # W^T: element (k, j) = W[j, k]
    w0, w1, w2, w3 = _load_gate_blocks(wp, H * s_w, wmask, CELL)
    b0 = tl.zeros([BLOCK_H], ACC)
    b1 = b0
    b2 = b0
    b3 = b0
    if HAS_BIAS != 0:
        b0 = tl.load(BHH + offs_h, mask=hmask, other=0.0).to(ACC)
        if CELL <= 1:
            b1 = tl.load(BHH + H + offs_h, mask=hmask, other=0.0).to(ACC)
            b2 = tl.load(BHH + 2 * H + offs_h, mask=hmask, other=0.0).to(ACC)
        if CELL == 0:
            b3 = tl.load(BHH + 3 * H + offs_h, mask=hmask, other=0.0).to(ACC)

    bm = (rows < B) & (cols < H)
    h = tl.load(H0 + rows * s_h0 + cols, mask=bm, other=0.0).to(ACC)
    c = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    if CELL == 0:
        c = tl.load(C0 + rows * s_c0 + cols, mask=bm, other=0.0).to(ACC)
    step = tl.program_id(0) * 0
    while step < T:
        if REVERSE != 0:
            t = T - 1 - step
        else:
            t = step
        bs = tl.load(BS + t)
        r = rows + tl.load(OFF + t).to(tl.int64)
        m = (rows < bs) & (cols < H)
        a = h.to(W.dtype.element_ty)
        x0 = _dot(a, w0, PREC, DOT_F32) + b0[None, :]
        x1 = x0
        x2 = x0
        x3 = x0
        if CELL <= 1:
            x1 = _dot(a, w1, PREC, DOT_F32) + b1[None, :]
            x2 = _dot(a, w2, PREC, DOT_F32) + b2[None, :]
        if CELL == 0:
            x3 = _dot(a, w3, PREC, DOT_F32) + b3[None, :]
        h_new, c_new = _cell_fwd(GI + r * s_gi + cols, S + r * s_s + cols, m, x0, x1, x2, x3,
                                 c, h, H, STORE_S, CELL, ACC)
        tl.store(OUT + r * s_o + cols, h_new.to(OUT.dtype.element_ty), mask=m)
        if CELL == 0:
            tl.store(CO + r * s_co + cols, c_new.to(CO.dtype.element_ty), mask=m)
        h = tl.where(rows < bs, h_new, h)
        c = tl.where(rows < bs, c_new, c)
        step += 1
    tl.store(HN + rows * s_hn + cols, h.to(HN.dtype.element_ty), mask=bm)
    if CELL == 0:
        tl.store(CN + rows * s_cn + cols, c.to(CN.dtype.element_ty), mask=bm)


@_jit
def _bwd_step_kernel(DY, s_dy, A, s_a, W, s_w, DF, s_df, EN, s_en, EF, s_ef,
                     S, s_s, CS, s_cs, CP, s_cp, C0, s_c0, HP, s_hp, H0, s_h0,
                     DG, s_dg, DGN, s_dgn, EO, s_eo,
                     bs, n_a, n_next, n_prev, N, KA, HAS_DY, HAS_EF,
                     CELL: tl.constexpr, W_T: tl.constexpr,
                     ACC: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_b.to(tl.int64)[:, None]
    cols = offs_h[None, :]
    m = (rows < bs) & (cols < N)

    # Gradient reaching this step's output: rows < n_a get it through A @ W (the next step's
    # gate gradients times W_hh, or dh times W_hr), the rest from DF (dhn where a row ends).
    acc = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    if n_a > 0:
        for k0 in range(0, KA, BLOCK_K):
            kk = k0 + offs_k
            a = tl.load(A + rows * s_a + kk[None, :], mask=(rows < n_a) & (kk[None, :] < KA), other=0.0)
            if W_T:  # W is [N, KA]: element (k, n) at W[n, k]
                wp = W + kk[:, None] + cols.to(tl.int64) * s_w
            else:    # W is [KA, N]
                wp = W + kk.to(tl.int64)[:, None] * s_w + cols
            w = tl.load(wp, mask=(kk[:, None] < KA) & (cols < N), other=0.0)
            acc += _dot(a.to(W.dtype.element_ty), w, PREC, DOT_F32)
    dh = acc + tl.load(DF + rows * s_df + cols, mask=m & (rows >= n_a), other=0.0).to(ACC)
    if HAS_DY != 0:
        dh += tl.load(DY + rows * s_dy + cols, mask=m, other=0.0).to(ACC)

    if CELL == 4:
        tl.store(DG + rows * s_dg + cols, dh.to(DG.dtype.element_ty), mask=m)
    else:
        H = N
        carry = tl.load(EN + rows * s_en + cols, mask=m & (rows < n_next), other=0.0).to(ACC)
        c_prev = acc
        h_prev = acc
        c_t = acc
        dc = acc
        if CELL == 0:
            c_prev = _load_rows2(CP, s_cp, C0, s_c0, rows, cols, n_prev, bs, H).to(ACC)
            c_t = tl.load(CS + rows * s_cs + cols, mask=m, other=0.0).to(ACC)
            dc = carry
            if HAS_EF != 0:
                dc += tl.load(EF + rows * s_ef + cols, mask=m & (rows >= n_next), other=0.0).to(ACC)
        if CELL == 1:
            dh += carry  # z * dh of the next step: GRU's direct path h_{t-1} -> h_t
            h_prev = _load_rows2(HP, s_hp, H0, s_h0, rows, cols, n_prev, bs, H).to(ACC)
        d0, d1, d2, d3, e = _cell_bwd(S + rows * s_s + cols, DG + rows * s_dg + cols,
                                      DGN + rows * s_dgn + cols, m, dh, dc, c_t, c_prev, h_prev,
                                      H, CELL, ACC)
        if CELL <= 1:
            tl.store(EO + rows * s_eo + cols, e.to(EO.dtype.element_ty), mask=m)


@triton.jit
def _cell_bwd(sp, gp, gnp, m, dh, dc, c_t, c_prev, h_prev, H,
              CELL: tl.constexpr, ACC: tl.constexpr):
    """The cell's pointwise backward for one tile, from the saved activations at `sp`. dh: gradient
    reaching h_t (the GRU carry z*dh included); dc: gradient reaching c_t from later steps (LSTM).
    Stores the gate gradients at `gp` (GRU: the n-gate input gradient at `gnp` too) and returns
    them with the elementwise carry to the previous step: dc*f (LSTM), dh*z (GRU)."""
    gt = gp.dtype.element_ty
    d1 = dh
    d2 = dh
    d3 = dh
    e = dh
    if CELL == 0:
        i = tl.load(sp, mask=m, other=0.0).to(ACC)
        f = tl.load(sp + H, mask=m, other=0.0).to(ACC)
        g = tl.load(sp + 2 * H, mask=m, other=0.0).to(ACC)
        o = tl.load(sp + 3 * H, mask=m, other=0.0).to(ACC)
        tc = _tanh(c_t)
        dc = dc + dh * o * (1.0 - tc * tc)
        d0 = dc * g * i * (1.0 - i)
        d1 = dc * c_prev * f * (1.0 - f)
        d2 = dc * i * (1.0 - g * g)
        d3 = dh * tc * o * (1.0 - o)
        e = dc * f
        tl.store(gp + H, d1.to(gt), mask=m)
        tl.store(gp + 2 * H, d2.to(gt), mask=m)
        tl.store(gp + 3 * H, d3.to(gt), mask=m)
    elif CELL == 1:
        r = tl.load(sp, mask=m, other=0.0).to(ACC)
        z = tl.load(sp + H, mask=m, other=0.0).to(ACC)
        n = tl.load(sp + 2 * H, mask=m, other=0.0).to(ACC)
        hn = tl.load(sp + 3 * H, mask=m, other=0.0).to(ACC)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        d0 = dn * hn * r * (1.0 - r)
        d1 = dh * (h_prev - n) * z * (1.0 - z)
        d2 = dn * r
        e = dh * z
        tl.store(gp + H, d1.to(gt), mask=m)
        tl.store(gp + 2 * H, d2.to(gt), mask=m)
        tl.store(gnp, dn.to(gnp.dtype.element_ty), mask=m)
    else:
        h = tl.load(sp, mask=m, other=0.0).to(ACC)
        if CELL == 2:
            d0 = dh * (1.0 - h * h)
        else:
            d0 = tl.where(h > 0, dh, 0.0)
    tl.store(gp, d0.to(gt), mask=m)
    return d0, d1, d2, d3, e


@_jit
def _bwd_seq_kernel(DY, s_dy, DHN, s_dhn, DCN, s_dcn, W, s_w, S, s_s, C, s_c, C0, s_c0,
                    OUT, s_o, H0, s_h0, DG, s_dg, DGN, s_dgn, DH0, s_dh0, DC0, s_dc0, BS, OFF, T, B,
                    H, REVERSE, CELL: tl.constexpr, ACC: tl.constexpr,
                    PREC: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Persistent backward of one direction, the mirror of `_fwd_seq_kernel`: steps in reverse
    processing order, W_hh and the carries (gradient reaching h, and c for LSTM) in registers.
    A row outside a step's batch keeps its carry: dhn/dcn until its last step, and what is left
    after the loop is dh0/dc0. Writes dG (and the GRU n-gate input gradient) for the weight GEMMs."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    rows = offs_b.to(tl.int64)[:, None]
    cols = offs_h[None, :]
    wmask = (offs_h[:, None] < H) & (cols < H)
    wp = W + offs_h.to(tl.int64)[:, None] * s_w + cols  # gate block g: element (k, j) = W[g*H + k, j]
    w0, w1, w2, w3 = _load_gate_blocks(wp, H * s_w, wmask, CELL)
    wt = W.dtype.element_ty

    bm = (rows < B) & (cols < H)
    dh_c = tl.load(DHN + rows * s_dhn + cols, mask=bm, other=0.0).to(ACC)
    dc_c = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    if CELL == 0:
        dc_c = tl.load(DCN + rows * s_dcn + cols, mask=bm, other=0.0).to(ACC)
    step = tl.program_id(0) * 0
    while step < T:
        if REVERSE != 0:  # forward ran t = T-1..0, so backward runs t = 0..T-1; h_{t-1} came from t+1
            t = step
            tp = tl.minimum(t + 1, T - 1)
            has_prev = t < T - 1
        else:
            t = T - 1 - step
            tp = tl.maximum(t - 1, 0)
            has_prev = t > 0
        bs = tl.load(BS + t)
        r = rows + tl.load(OFF + t).to(tl.int64)
        n_prev = tl.where(has_prev, tl.minimum(bs, tl.load(BS + tp)), 0)
        poff = tl.load(OFF + tp).to(tl.int64)
        m = (rows < bs) & (cols < H)
        dh = dh_c + tl.load(DY + r * s_dy + cols, mask=m, other=0.0).to(ACC)
        c_prev = dh
        h_prev = dh
        c_t = dh
        if CELL == 0:
            c_prev = _load_rows2(C + poff * s_c, s_c, C0, s_c0, rows, cols, n_prev, bs, H).to(ACC)
            c_t = tl.load(C + r * s_c + cols, mask=m, other=0.0).to(ACC)
        if CELL == 1:
            h_prev = _load_rows2(OUT + poff * s_o, s_o, H0, s_h0, rows, cols, n_prev, bs, H).to(ACC)
        d0, d1, d2, d3, e = _cell_bwd(S + r * s_s + cols, DG + r * s_dg + cols, DGN + r * s_dgn + cols,
                                      m, dh, dc_c, c_t, c_prev, h_prev, H, CELL, ACC)
        nxt = _dot(d0.to(wt), w0, PREC, DOT_F32)
        if CELL <= 1:
            nxt += _dot(d1.to(wt), w1, PREC, DOT_F32) + _dot(d2.to(wt), w2, PREC, DOT_F32)
        if CELL == 0:
            nxt += _dot(d3.to(wt), w3, PREC, DOT_F32)
            dc_c = tl.where(rows < bs, e, dc_c)
        if CELL == 1:
            nxt += e
        dh_c = tl.where(rows < bs, nxt, dh_c)
        step += 1
    tl.store(DH0 + rows * s_dh0 + cols, dh_c.to(DH0.dtype.element_ty), mask=bm)
    if CELL == 0:
        tl.store(DC0 + rows * s_dc0 + cols, dc_c.to(DC0.dtype.element_ty), mask=bm)


def _blocks(bs: int, n: int):
    """(BLOCK_B, BLOCK_H, BLOCK_K) of the step kernels: always 16 x 32 (x 32). One tile means one
    compile per variant; 16 rows is tl.dot's least M and spill-free at 4 warps for every cell and
    dtype (32 or 64 rows spilled: issue 18), and keeps more programs busy at small batches."""
    return 16, 32, 32


# BLOCK_H of the persistent kernels per dtype: the backend's largest H for them
# (`_PERSISTENT_MAX_H` in fastrnn/backends/triton.py); one tile per dtype, so one compile.
# Larger H (only when FASTRNN_TRITON_PERSISTENT_MAX_H raises the limit) takes the next power of two.
SEQ_BLOCK_H = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32, torch.float64: 16}
SEQ_WARPS = 8  # twice the registers per program for W_hh (see the aot report)
# Let ptxas use every register 8 warps can have (255): left to itself it capped the GRU bf16/fp16
# forward at 128 and spilled 8 bytes (sm_90, ptxas of triton 3.6); with the cap it takes 154.
SEQ_MAXNREG = 255


def _seq_block_h(H, dtype):
    return max(SEQ_BLOCK_H[dtype], triton.next_power_of_2(H))


INTERPRETED = type(_fwd_step_kernel).__name__ == "InterpretedFunction"


def _numpy24_interpreter_shim():
    """Triton 3.6's interpreter turns a scalar argument into a 1-element array and reads it as a
    Python int with `int(array)`, which numpy >= 2.4 refuses for 1-d arrays ("only 0-dimensional
    arrays can be converted to Python scalars"): every run-time loop bound (`range(0, K, ...)`)
    fails. Read it with `.item()` instead. Interpreter only (tests); compiled kernels are untouched."""
    from triton.runtime import interpreter as ti
    if getattr(ti._patch_lang_tensor, "_fastrnn_shim", False):
        return
    orig = ti._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patched._fastrnn_shim = True
    ti._patch_lang_tensor = patched


if INTERPRETED:
    _numpy24_interpreter_shim()


def _dot_f32(w):
    return INTERPRETED and w.dtype == torch.bfloat16


def _s(t):
    return 0 if t is None else t.stride(0)


_DUMMY: dict = {}


def _dummy(dtype, device):
    """A pointer of `dtype` for an operand a launch never dereferences (S without grad): the same
    pointer type as the real operand, so it is not a second compile."""
    key = (dtype, str(device))
    if key not in _DUMMY:
        _DUMMY[key] = torch.empty(16, dtype=dtype, device=device)
    return _DUMMY[key]


def _torch_dtype(acc):
    return torch.float64 if acc == tl.float64 else torch.float32


def fwd_step(cell_id, gi, hp, h0, cp, c0, w, bhh, ho, co, s, bs, n_prev, H, K, acc, prec):
    """One forward step. Views start at the step's first row; hp/cp: previous step's h/c,
    h0/c0: initial states; ho/co/s: outputs (h, fp32 c, saved activations); s may be None."""
    block_b, block_h, block_k = _blocks(bs, H)
    grid = (triton.cdiv(bs, block_b), triton.cdiv(H, block_h))
    _fwd_step_kernel[grid](
        gi, gi.stride(0), hp, hp.stride(0), h0, h0.stride(0),
        cp if cp is not None else gi, _s(cp), c0 if c0 is not None else gi, _s(c0),
        w, w.stride(0), bhh if bhh is not None else w,
        ho, ho.stride(0), co if co is not None else gi, _s(co),
        s if s is not None else _dummy(_torch_dtype(acc), gi.device), _s(s),
        bs, n_prev, H, K, int(bhh is not None), int(s is not None),
        CELL=cell_id, ACC=acc, PREC=prec,
        DOT_F32=_dot_f32(w), BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)


def bwd_step(cell_id, dy, a, w, s_wk, s_wn, df, en, ef, s, cs, cp, c0, hp, h0, dg, dgn, eo,
             bs, n_a, n_next, n_prev, N, KA, acc, prec):
    """One backward step (or, with cell_id NONE, Y = dY + A @ W with rows >= n_a from DF).
    `w` is read as a [KA, N] matrix with strides (s_wk, s_wn), one of which must be 1."""
    block_b, block_h, block_k = _blocks(bs, N)
    grid = (triton.cdiv(bs, block_b), triton.cdiv(N, block_h))
    d = dg  # any valid pointer for operands a cell does not read
    if s_wn != 1 and s_wk != 1:
        raise ValueError(f"fastrnn triton: bwd_step reads W with one unit stride; got ({s_wk}, {s_wn})")
    w_t = s_wn != 1

    def p(t):
        return t if t is not None else d

    _bwd_step_kernel[grid](
        p(dy), _s(dy), p(a), _s(a), w, s_wn if w_t else s_wk, p(df), _s(df), p(en), _s(en), p(ef), _s(ef),
        p(s), _s(s), p(cs), _s(cs), p(cp), _s(cp), p(c0), _s(c0), p(hp), _s(hp), p(h0), _s(h0),
        dg, dg.stride(0), p(dgn), _s(dgn), p(eo), _s(eo),
        bs, n_a, n_next, n_prev, N, KA, int(dy is not None), int(ef is not None),
        CELL=cell_id, W_T=w_t, ACC=acc, PREC=prec,
        DOT_F32=_dot_f32(w), BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)


def fwd_seq(cell_id, gi, h0, c0, w, bhh, out, co, s, hn, cn, bs_dev, off_dev, T, B, H, reverse, acc, prec):
    """Whole-sequence forward of one direction (persistent kernel). bs_dev/off_dev: int32 device
    tensors [T] with each step's batch size and first row; hn/cn: [B, Hout]/[B, H] outputs."""
    block_b = 16  # more batch tiles = more SMs busy; each program holds its own copy of W_hh
    _fwd_seq_kernel[(triton.cdiv(B, block_b),)](
        gi, gi.stride(0), h0, h0.stride(0), c0 if c0 is not None else h0, _s(c0),
        w, w.stride(0), bhh if bhh is not None else w, out, out.stride(0),
        co if co is not None else out, _s(co),
        s if s is not None else _dummy(_torch_dtype(acc), gi.device), _s(s),
        hn, hn.stride(0), cn if cn is not None else hn, _s(cn), bs_dev, off_dev, T, B,
        H, int(bhh is not None), int(s is not None), int(reverse),
        CELL=cell_id, ACC=acc, PREC=prec, DOT_F32=_dot_f32(w), BLOCK_B=block_b,
        BLOCK_H=_seq_block_h(H, w.dtype), num_warps=SEQ_WARPS, maxnreg=SEQ_MAXNREG)


def bwd_seq(cell_id, dy, dhn, dcn, w, s, c, c0, out, h0, dg, dgn, dh0, dc0, bs_dev, off_dev, T, B, H,
            reverse, acc, prec):
    """Whole-sequence backward of one direction (persistent kernel); views as in `bwd_step`,
    dh0/dc0: [B, H] outputs."""
    block_b = 16
    d = dg  # any valid pointer for operands a cell does not read

    def p(t):
        return t if t is not None else d

    _bwd_seq_kernel[(triton.cdiv(B, block_b),)](
        dy, dy.stride(0), dhn, dhn.stride(0), p(dcn), _s(dcn), w, w.stride(0), s, s.stride(0),
        p(c), _s(c), p(c0), _s(c0), out, out.stride(0), h0, h0.stride(0), dg, dg.stride(0),
        p(dgn), _s(dgn), dh0, dh0.stride(0), p(dc0), _s(dc0), bs_dev, off_dev, T, B,
        H, int(reverse), CELL=cell_id, ACC=acc, PREC=prec, DOT_F32=_dot_f32(w),
        BLOCK_B=block_b, BLOCK_H=_seq_block_h(H, w.dtype), num_warps=SEQ_WARPS, maxnreg=SEQ_MAXNREG)
