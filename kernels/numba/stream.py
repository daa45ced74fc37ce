"""Numba kernel for one time step of a whole stack (all layers), the engine of `fastrnn.Stream`.

Installed as `fastrnn.kernels.numba.stream`; driven by `fastrnn/stream.py`.

One call runs every layer of one frame: the input projection, the recurrent product and the
cell's pointwise update (the cell functions of `kernels/numba/rnn.py`, so the math is written
once for the numba backend and this kernel alike), the projection with proj_size, and returns
the top layer's new h as a fresh array.

Why a packed, transposed copy of the weights. With `fastmath=False` LLVM may not reorder a sum,
so a dot product over a row of torch's W [G*H, K] is a serial chain of dependent adds (~4 cycles
per multiply-add, an estimate: ~50 us for the 32k of one H=64 LSTM step). The transposed layout
W^T [K, G*H] turns the product into K axpy passes over contiguous rows, which vectorise (AVX2
width, checked in the assembly) without reordering any sum
(each output element is still summed in order k = 0..K-1, so float64 results are deterministic).
No fastmath, not even contraction into FMA: measured with `fastmath={"contract"}` on the
products, a step got only 8-16% faster (LSTM H=64 B=1 3.5 -> 3.3 us, B=4 9.2 -> 7.7 us; the
loop is bound by its loads, nine per eight multiply-adds, more than by the arithmetic), not
worth results that change with the CPU's FMA support.
One flat buffer also keeps the call at four array arguments and one signature per dtype,
whatever the cell, depth, bias or projection. `fastrnn.Stream` re-packs when a parameter's
`_version` changes (see its docstring for the cost and the limits of that check).

Layouts (L layers, B batch, H hidden, P = proj_size or H, GH = gates * H):

    meta  int64 [8 + 8*L]  cell, L, B, H, P, GH, index of a 1.0 in w, 0; then per layer
                           I_l, off W_ih^T [I_l, GH], off W_hh^T [P, GH], off bias [GH],
                           off b_hn [H] (gru), off W_hr^T [H, P] (-1 without proj), 0, 0
    w     float [...]      the packed weights; biases folded: lstm/rnn b_ih + b_hh,
                           gru b_ih + (b_hr, b_hz, 0) with b_hn apart (it sits inside r*(...))
    state float [...]      h [L, B, P], c [L, B, H] (lstm), then scratch:
                           gi [B, GH], gh [B, GH], gs [B, 4H], cs [B, H], m [B, H]
    x     float [B, I_0]   the frame (C-contiguous)
"""
from __future__ import annotations

from numba import njit

from fastrnn.kernels.numba.rnn import CELL_IDS, GATES, GRU, LSTM, RNN_RELU, _gru_fwd, _lstm_fwd, _rnn_fwd

__all__ = ["CELL_IDS", "GATES", "META", "scratch_size", "stream_step"]

META = 8      # header length of meta, and the stride of each layer's entry
_JIT = dict(cache=True, fastmath=False, error_model="numpy")


def scratch_size(L: int, B: int, H: int, P: int, GH: int) -> int:
    """Floats of `state`: h, c, then the per-step scratch."""
    return L * B * P + L * B * H + 2 * B * GH + 4 * B * H + B * H + B * H


@njit(**_JIT)
def _axpy_rows(out, wt, v):
    """out[b, :] += wt^T v[b] for every row b, with wt [K, N] row-major: contiguous axpy passes,
    each out[b, n] summed in order k = 0..K-1. Eight rows of wt per pass, written as one
    left-to-right sum (the same rounding as eight single passes), so out is loaded and stored once
    per eight rows: 2.0x faster than one row per pass at K=128, N=256 (float32, measured here),
    where the stores were the bottleneck. The batch loop sits inside the eight-row block, so each
    block of wt is read from memory once per step and from L1 for the other rows of the batch."""
    K = wt.shape[0]
    N = wt.shape[1]
    B = out.shape[0]
    k = 0
    while k + 8 <= K:
        r0, r1, r2, r3 = wt[k], wt[k + 1], wt[k + 2], wt[k + 3]
        r4, r5, r6, r7 = wt[k + 4], wt[k + 5], wt[k + 6], wt[k + 7]
        for b in range(B):
            vb = v[b]
            ob = out[b]
            a0, a1, a2, a3 = vb[k], vb[k + 1], vb[k + 2], vb[k + 3]
            a4, a5, a6, a7 = vb[k + 4], vb[k + 5], vb[k + 6], vb[k + 7]
            for n in range(N):
                ob[n] = (((((((ob[n] + r0[n] * a0) + r1[n] * a1) + r2[n] * a2) + r3[n] * a3)
                           + r4[n] * a4) + r5[n] * a5) + r6[n] * a6) + r7[n] * a7
        k += 8
    while k < K:
        row = wt[k]
        for b in range(B):
            a = v[b, k]
            ob = out[b]
            for n in range(N):
                ob[n] += row[n] * a
        k += 1


@njit(**_JIT)
def stream_step(meta, w, state, x):
    """Advances the state by one frame x [B, I_0]; returns the top layer's h [B, P] (a new array)."""
    cell = meta[0]
    L = meta[1]
    B = meta[2]
    H = meta[3]
    P = meta[4]
    GH = meta[5]
    one = w[meta[6]]
    zero = one - one
    relu = cell == RNN_RELU
    if x.shape[0] != B or x.shape[1] != meta[META]:
        raise ValueError("stream_step: x does not have the [B, I] the buffers were built for")
    hs = state[:L * B * P].reshape((L, B, P))
    o = L * B * P
    cs_all = state[o:o + L * B * H].reshape((L, B, H))
    o += L * B * H
    gi = state[o:o + B * GH].reshape((B, GH))
    o += B * GH
    gh = state[o:o + B * GH].reshape((B, GH))
    o += B * GH
    gs = state[o:o + B * 4 * H].reshape((B, 4 * H))
    o += B * 4 * H
    csave = state[o:o + B * H].reshape((B, H))
    o += B * H
    m = state[o:o + B * H].reshape((B, H))
    for layer in range(L):
        e = META + META * layer
        I = meta[e]
        wih = w[meta[e + 1]:meta[e + 1] + I * GH].reshape((I, GH))
        whh = w[meta[e + 2]:meta[e + 2] + P * GH].reshape((P, GH))
        ob = meta[e + 3]
        bhn = w[meta[e + 4]:meta[e + 4] + H]
        oproj = meta[e + 5]
        h = hs[layer]
        for b in range(B):
            gib = gi[b]
            ghb = gh[b]
            if ob >= 0:
                for n in range(GH):
                    gib[n] = w[ob + n]
            else:
                for n in range(GH):
                    gib[n] = zero
            for n in range(GH):
                ghb[n] = zero
        _axpy_rows(gi, wih, x if layer == 0 else hs[layer - 1])
        _axpy_rows(gh, whh, h)
        for b in range(B):
            if cell == LSTM:
                _lstm_fwd(gi[b], gh[b], cs_all[layer, b], m[b] if oproj >= 0 else h[b], gs[b], csave[b], one)
            elif cell == GRU:
                _gru_fwd(gi[b], gh[b], bhn, h[b], gs[b], one)
            else:
                _rnn_fwd(gi[b], gh[b], h[b], gs[b], relu, one)
        if cell == LSTM and oproj >= 0:
            for b in range(B):
                hb = h[b]
                for p in range(P):
                    hb[p] = zero
            _axpy_rows(h, w[oproj:oproj + H * P].reshape((H, P)), m)
    return hs[L - 1].copy()

