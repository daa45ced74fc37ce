"""Numba kernels for one recurrent layer (all cells, both directions, packed batches).

Installed as `fastrnn.kernels.numba.rnn`; driven by `fastrnn.backends.numba`.

Cells are data (DESIGN §4b): the time loops `rnn_fwd` / `rnn_bwd` are written once;
each cell contributes only a pointwise forward and backward over one batch row
(`_lstm_fwd`, `_gru_fwd`, `_rnn_fwd`, and the `_bwd` twins), picked by a cell id.
The cell id is a runtime integer rather than a compile-time specialisation: the
branch is taken once per row, which costs nothing next to the row's transcendental
math, and it keeps the compiled set to one forward and one backward per dtype
(4 specialisations in all), which is what CI pays for on a cold cache.

Layouts (D directions, N packed rows, B batch, H hidden, P = Hout = proj or H,
S = saved floats per row and hidden unit: 4 for lstm [i f g o] and gru [r z n ghn],
1 for rnn [activation]):

    gi      [D, N, G*H] input projections, all biases folded in except gru's b_hn
    whh0/1  [G*H, P]    W_hh of each direction as torch stores it (no copies; the GEMMs
                        read W^T as a Fortran-order view); whh1 is whh0 when D = 1
    whr0/1  [P, H]      W_hr of each direction (lstm with proj_size), else dummies
    out     [N, D*P]    direction d in columns d*P:(d+1)*P
    hn      [D, B, P]   the running hidden state; holds hn when the loop ends
    cn      [D, B, H]   the running cell state (lstm)
    gates   [D, R, S*H] saved activations, R = N when saving for backward, else B
    cs      [D, R, H]   saved cell states (lstm)
    hprev   [D, N, P]   saved h_{t-1} per row, the right operand of dW_hh = dG^T Hprev
    ms      [D, R, H]   o*tanh(c) before the projection (lstm with proj_size)

Per step the only BLAS call is the recurrent GEMM `h_{t-1} @ W_hh^T` (plus the
projection GEMM with proj_size), through `np.dot(a, b, out)` into preallocated
buffers; nothing is allocated inside the loops. Packed batches run natively: step t
touches only its first `sizes[t]` rows; the reverse direction picks up each longer
sequence from h0 at its last step because rows not yet active still hold h0.

Numerics. float64 uses libm's exp/tanh and no fastmath: results match torch to
~1e-12. float32 uses a branch-free rational tanh (Eigen's, max abs error 3.6e-7,
the same order as float32 rounding of the result) and sigmoid(x) = 0.5 + 0.5*tanh(x/2),
so the pointwise loops vectorise (AVX2: 1.3 ns per tanh against 41 ns for libm's
tanhf, measured here). `error_model="numpy"` everywhere: Python's division-by-zero
check is a branch that stops LLVM from vectorising any loop with a division.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from fastrnn.cells import CELLS

_JIT = dict(cache=True, error_model="numpy")

# The cells' facts come from fastrnn/cells.py; the ids are the constants the njit code branches on.
CELL_IDS = {name: c.id for name, c in CELLS.items()}
LSTM, GRU, RNN_TANH, RNN_RELU = (CELL_IDS[n] for n in ("lstm", "gru", "rnn_tanh", "rnn_relu"))
GATES = {name: c.gates for name, c in CELLS.items()}
SAVED = {name: c.saved for name, c in CELLS.items()}


# ---------------------------------------------------------------- activations

@njit(error_model="numpy")
def _tanh_f32(x):
    # Eigen's float32 tanh: a 13/6 rational function on [-7.9, 7.9], clamped outside
    # (tanh(7.9) rounds to 1 - 2.7e-7). Selects, not branches; NaN passes through.
    c = np.float32(7.90531110763549805)
    x = c if x > c else x
    x = -c if x < -c else x
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * x
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q


def tanh_(x):
    return np.tanh(x)


def sigmoid_(x):
    return 1.0 / (1.0 + np.exp(-x))


@overload(tanh_)
def _ov_tanh(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _tanh_f32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid_)
def _ov_sigmoid(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: np.float32(0.5) + np.float32(0.5) * _tanh_f32(np.float32(0.5) * x)
    return lambda x: 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- pointwise: forward
# `one` carries the array dtype so float32 math stays float32.

@njit(**_JIT)
def _lstm_fwd(gi, gh, c, m, gs, cs, one):
    """gi, gh [4H] pre-activations; c [H] cell state in/out; m [H] <- o*tanh(c');
    gs [4H] <- i f g o; cs [H] <- c'."""
    H = c.shape[0]
    for j in range(H):
        i = sigmoid_(gi[j] + gh[j])
        f = sigmoid_(gi[H + j] + gh[H + j])
        g = tanh_(gi[2 * H + j] + gh[2 * H + j])
        o = sigmoid_(gi[3 * H + j] + gh[3 * H + j])
        cj = f * c[j] + i * g
        c[j] = cj
        cs[j] = cj
        m[j] = o * tanh_(cj)
        gs[j] = i
        gs[H + j] = f
        gs[2 * H + j] = g
        gs[3 * H + j] = o


@njit(**_JIT)
def _gru_fwd(gi, gh, bhn, h, gs, one):
    """gi, gh [3H]; bhn [H] (b_hn sits inside r*(...)); h [H] in/out;
    gs [4H] <- r z n (W_hn h + b_hn)."""
    H = h.shape[0]
    for j in range(H):
        r = sigmoid_(gi[j] + gh[j])
        z = sigmoid_(gi[H + j] + gh[H + j])
        ghn = gh[2 * H + j] + bhn[j]
        n = tanh_(gi[2 * H + j] + r * ghn)
        h[j] = n + z * (h[j] - n)
        gs[j] = r
        gs[H + j] = z
        gs[2 * H + j] = n
        gs[3 * H + j] = ghn


@njit(**_JIT)
def _rnn_fwd(gi, gh, h, gs, relu, one):
    """gi, gh [H]; h [H] <- act(gi + gh); gs [H] <- the same activation."""
    H = h.shape[0]
    zero = one - one
    for j in range(H):
        a = gi[j] + gh[j]
        if relu:
            a = a if a > zero else zero
        else:
            a = tanh_(a)
        h[j] = a
        gs[j] = a


# ---------------------------------------------------------------- pointwise: backward

@njit(**_JIT)
def _lstm_bwd(gs, c, cp, dh, dc, dg, one):
    """gs [4H] i f g o; c [H] c_t; cp [H] c_{t-1}; dh [H] total dL/dm; dc [H] in: dL/dc_t
    from later steps, out: dL/dc_{t-1}; dg [4H] <- dL/d(pre-activations)."""
    H = c.shape[0]
    for j in range(H):
        i = gs[j]
        f = gs[H + j]
        g = gs[2 * H + j]
        o = gs[3 * H + j]
        tc = tanh_(c[j])
        dhj = dh[j]
        dcj = dc[j] + dhj * o * (one - tc * tc)
        dg[j] = dcj * g * i * (one - i)
        dg[H + j] = dcj * cp[j] * f * (one - f)
        dg[2 * H + j] = dcj * i * (one - g * g)
        dg[3 * H + j] = dhj * tc * o * (one - o)
        dc[j] = dcj * f


@njit(**_JIT)
def _gru_bwd(gs, hp, dh, dgi, dgh, one):
    """gs [4H] r z n ghn; hp [H] h_{t-1}; dh [H] in: total dL/dh_t, out: the direct part
    of dL/dh_{t-1} (z*dh); dgi [3H] <- dL/d(input pre-activations); dgh [3H] <- dL/d(W_hh h + b_hh)."""
    H = hp.shape[0]
    for j in range(H):
        r = gs[j]
        z = gs[H + j]
        n = gs[2 * H + j]
        ghn = gs[3 * H + j]
        dhj = dh[j]
        dnp = dhj * (one - z) * (one - n * n)
        dzp = dhj * (hp[j] - n) * z * (one - z)
        drp = dnp * ghn * r * (one - r)
        dgi[j] = drp
        dgi[H + j] = dzp
        dgi[2 * H + j] = dnp
        dgh[j] = drp
        dgh[H + j] = dzp
        dgh[2 * H + j] = dnp * r
        dh[j] = dhj * z


@njit(**_JIT)
def _rnn_bwd(gs, dh, dg, relu, one):
    """gs [H] activation a; dh [H] total dL/da; dg [H] <- dL/d(pre-activation)."""
    H = dh.shape[0]
    zero = one - one
    for j in range(H):
        a = gs[j]
        if relu:
            dg[j] = dh[j] if a > zero else zero
        else:
            dg[j] = dh[j] * (one - a * a)


# ---------------------------------------------------------------- time loops

@njit(nogil=True, **_JIT)
def rnn_fwd(cell, gi, bhn, whh0, whh1, whr0, whr1, proj, sizes, offsets, out, hn, cn,
            gates, cs, hprev, ms, save, one):
    """Forward over all steps and directions. hn/cn must hold h0/c0 on entry.

    bhn [D, H] gru's b_hn (zeros if none; unused otherwise); sizes [T], offsets [T+1] int64.
    With save False, gates/cs/ms have R = B rows (scratch) and hprev is not touched.
    """
    D = hn.shape[0]
    B = hn.shape[1]
    P = hn.shape[2]
    H = cn.shape[2] if cell == LSTM else P
    T = sizes.shape[0]
    GH = whh0.shape[0]
    gh = np.empty((max(B, 1), GH), dtype=gi.dtype)
    relu = cell == RNN_RELU
    for d in range(D):
        h = hn[d]
        c = cn[d]
        whh = whh0 if d == 0 else whh1
        whr = whr0 if d == 0 else whr1
        for s in range(T):
            t = T - 1 - s if d == 1 else s
            bs = sizes[t]
            off = offsets[t]
            srow = off if save else 0
            if save:
                hp = hprev[d]
                for b in range(bs):
                    for j in range(P):
                        hp[off + b, j] = h[b, j]
            np.dot(h[:bs], whh.T, gh[:bs])
            for b in range(bs):
                r = off + b
                gir = gi[d, r]
                if cell == LSTM:
                    dst = ms[d, srow + b] if proj else h[b]
                    _lstm_fwd(gir, gh[b], c[b], dst, gates[d, srow + b], cs[d, srow + b], one)
                elif cell == GRU:
                    _gru_fwd(gir, gh[b], bhn[d], h[b], gates[d, srow + b], one)
                else:
                    _rnn_fwd(gir, gh[b], h[b], gates[d, srow + b], relu, one)
            if proj:
                np.dot(ms[d, srow:srow + bs], whr.T, h[:bs])
            for b in range(bs):
                for j in range(P):
                    out[off + b, d * P + j] = h[b, j]
    return H


@njit(nogil=True, **_JIT)
def rnn_bwd(cell, dout, gates, cs, hprev, ms, c0, whh0, whh1, whr0, whr1, proj, sizes, offsets,
            dh0, dc0, dgi, dgh, dhs, one):
    """Backward over all steps and directions, in reverse of the forward order.

    dout [N, D*P]; whh0/1, whr0/1 as in `rnn_fwd`.
    dh0/dc0 [D, B, P]/[D, B, H] hold dL/dhn, dL/dcn on entry and dL/dh0, dL/dc0 on
    exit. dgi/dgh [D, N, G*H] <- gate pre-activation gradients (input side and
    hidden side; the same array except for gru). dhs [D, N, P] <- total dL/dh_t per
    row when proj (for dW_hr), else a dummy.
    """
    D = dh0.shape[0]
    B = dh0.shape[1]
    P = dh0.shape[2]
    H = gates.shape[2] // 4 if cell == LSTM or cell == GRU else gates.shape[2]
    T = sizes.shape[0]
    dm = np.empty((max(B, 1), H), dtype=dout.dtype)
    relu = cell == RNN_RELU
    for d in range(D):
        dh = dh0[d]
        dc = dc0[d]
        whh = whh0 if d == 0 else whh1
        whr = whr0 if d == 0 else whr1
        for s in range(T):
            t = s if d == 1 else T - 1 - s
            bs = sizes[t]
            off = offsets[t]
            if proj:
                for b in range(bs):
                    for j in range(P):
                        dhs[d, off + b, j] = dh[b, j] + dout[off + b, d * P + j]
                np.dot(dhs[d, off:off + bs], whr, dm[:bs])
            else:
                for b in range(bs):
                    for j in range(P):
                        dm[b, j] = dh[b, j] + dout[off + b, d * P + j]
            tp = t + 1 if d == 1 else t - 1  # the step that produced h_{t-1}
            for b in range(bs):
                r = off + b
                if cell == LSTM:
                    if tp >= 0 and tp < T and b < sizes[tp]:
                        cp = cs[d, offsets[tp] + b]
                    else:
                        cp = c0[d, b]
                    _lstm_bwd(gates[d, r], cs[d, r], cp, dm[b], dc[b], dgi[d, r], one)
                elif cell == GRU:
                    _gru_bwd(gates[d, r], hprev[d, r], dm[b], dgi[d, r], dgh[d, r], one)
                else:
                    _rnn_bwd(gates[d, r], dm[b], dgi[d, r], relu, one)
            np.dot(dgh[d, off:off + bs], whh, dh[:bs])
            if cell == GRU:
                for b in range(bs):
                    for j in range(P):
                        dh[b, j] += dm[b, j]
    return H
