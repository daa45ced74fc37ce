"""`numba` backend: the CPU fallback when the C++ extension is not built.

Same algorithm as the C++ backend (DESIGN §3), with the time loops in `@njit`
(`fastrnn.kernels.numba.rnn`):

1. torch: one GEMM per direction for the input projections of all steps, biases
   folded in (`gi[d] = x @ W_ih^T + b`).
2. numba: the time loop; per step one BLAS GEMM `h_{t-1} @ W_hh^T` into a
   preallocated buffer and one fused pointwise pass per row (gates, state update,
   output, the values backward needs). Packed batches run natively.
3. numba: the reverse loop (fused pointwise gate gradients and the `dh_{t-1}` GEMM).
4. torch: the weight gradients as one GEMM each over all steps
   (`dW_hh = dG^T Hprev`, `dW_ih = dG^T X`, `dW_hr = dH^T M`), `dx = dG W_ih`.

It supplies the kernels of the op layer's contract (fastrnn/ops.py: forward, backward,
saved_like, COMPUTE_DTYPES); autograd, the half-type upcast and double backward live there.

Threads. numba's `np.dot` calls SciPy's bundled OpenBLAS. OpenBLAS worker threads
busy-wait after each call and fight torch's OpenMP threads for the cores: on 2
cores, a 100-step loop of 2-thread OpenBLAS GEMMs made the next torch GEMM 2x
slower, and torch ops right before the loop made small per-step GEMMs 100x slower.
The loop therefore runs OpenBLAS single-threaded. In SciPy's pthreads OpenBLAS the
`openblas_set_num_threads_local` setter changes the process-wide count, so concurrent
layer calls share one setting: the first to enter sets it, the last to leave restores it
(`_loop_blas_threads`). Meanwhile other SciPy BLAS calls in the process run single-threaded.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import threading

import torch

from fastrnn.cells import gates

from fastrnn.checks import check_layer_args
from fastrnn.backends import ALL_DTYPES, Backend, LayerCall

_DTYPES = frozenset((torch.float32, torch.float64))  # what the kernels compile for
_HALF = (torch.float16, torch.bfloat16)
_K = None            # the kernel module, set by _load()
_np = None
_blas_local = None   # openblas_set_num_threads_local, when SciPy's BLAS is OpenBLAS
_LOOP_THREADS = int(os.environ.get("FASTRNN_NUMBA_BLAS_THREADS", "1"))
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0      # layer calls inside their time loop right now
_BLAS_SAVED = None   # the thread count to restore when the last one leaves


@contextlib.contextmanager
def _loop_blas_threads():
    """OpenBLAS at _LOOP_THREADS threads while any time loop runs (see the module docstring)."""
    global _BLAS_USERS, _BLAS_SAVED
    if _blas_local is None:
        yield
        return
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_SAVED = _blas_local(_LOOP_THREADS)
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                _blas_local(_BLAS_SAVED)


# ---------------------------------------------------------------- validation

def _validate(cell, x, batch_sizes, h0, c0, weights):
    """Everything the njit loops rely on, checked before any of them touches memory."""
    if cell not in _K.CELL_IDS:
        raise ValueError(f"Unknown cell type {cell!r}; expected one of {sorted(_K.CELL_IDS)}")
    tensors = [("x", x), ("h0", h0), ("c0", c0)] + [
        (f"{name} of direction {d}", w) for d, ws in enumerate(weights)
        for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), ws)]
    for name, t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu":
            raise RuntimeError(f"the numba backend runs on CPU tensors only; {name} is on {t.device}")
        if t.dtype != x.dtype:
            raise RuntimeError(f"expected all tensors to have dtype {x.dtype} (that of the input), "
                               f"but {name} has {t.dtype}")
        if t.layout != torch.strided or t.is_sparse:
            raise RuntimeError(f"the numba backend needs dense tensors; {name} is {t.layout}")
    problem = check_layer_args(cell, x, batch_sizes, h0, c0, weights)  # after dtype/device: torch's types
    if problem:
        raise ValueError(problem)
    if x.dtype not in _DTYPES:
        raise RuntimeError(f"the numba backend supports float32 and float64, got {x.dtype}; "
                           f"use backend='torch' or 'reference' for half types")
    if batch_sizes is not None and batch_sizes.numel() and int(batch_sizes.max()) > h0.size(1):
        raise ValueError(f"batch_sizes must not exceed the batch size {h0.size(1)}, "
                         f"got {int(batch_sizes.max())}")


def _np_(t):
    """A numpy view of a CPU tensor, C-contiguous (copies only when it is not)."""
    return t.detach().contiguous().numpy()


# ---------------------------------------------------------------- launchers

def _prepare(cell, x, batch_sizes, h0, c0, weights):
    """Sizes: D, B, P (= Hout), H, and the per-step batch sizes and row offsets (int64)."""
    np = _np
    D, B, P = h0.shape
    H = c0.size(2) if c0 is not None else P
    if batch_sizes is None:
        T = x.size(0) // B if B else 0
        sizes = np.full(T, B, dtype=np.int64)
    else:
        sizes = batch_sizes.numpy().astype(np.int64, copy=True)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return D, B, P, H, sizes, offsets


def _forward(cell, x, batch_sizes, h0, c0, weights, save):
    """Runs the layer. Returns out, hn, cn (tensors) and, with save, what backward needs."""
    np = _np
    D, B, P, H, sizes, offsets = _prepare(cell, x, batch_sizes, h0, c0, weights)
    S = _K.SAVED[cell]
    N = x.size(0)
    dt = x.dtype
    proj = weights[0][4] is not None
    has_bias = weights[0][2] is not None
    # 1. input projections of all steps, one GEMM per direction into gi[d]; biases folded
    #    in except gru's b_hn, which sits inside r * (W_hn h + b_hn)
    gi = torch.empty(D, N, _K.GATES[cell] * H, dtype=dt)
    bhn = torch.zeros(D, H, dtype=dt)
    with torch.no_grad():
        xd = x.detach()
        for d, (w_ih, _, b_ih, b_hh, _) in enumerate(weights):
            if has_bias:
                if cell == "gru":
                    b = b_ih.detach().clone()
                    b[:2 * H] += b_hh[:2 * H]
                    bhn[d] = b_hh[2 * H:]
                else:
                    b = b_ih.detach() + b_hh.detach()
                torch.addmm(b, xd, w_ih.detach().t(), out=gi[d])
            else:
                torch.mm(xd, w_ih.detach().t(), out=gi[d])
    whh, whr = _recurrent_weights(weights, proj, dt)
    R = N if save else B
    out = torch.empty(N, D * P, dtype=dt)
    hn = h0.detach().clone(memory_format=torch.contiguous_format)
    cn = (c0.detach().clone(memory_format=torch.contiguous_format) if c0 is not None
          else torch.empty(D, max(B, 1), 1, dtype=dt))
    gates = torch.empty(D, R, S * H, dtype=dt)
    cs = torch.empty(D, R, H, dtype=dt) if cell == "lstm" else torch.zeros(D, 1, 1, dtype=dt)  # a saved dummy: defined values
    hprev = torch.empty(D, N, P, dtype=dt) if save else torch.empty(D, 1, 1, dtype=dt)
    ms = torch.empty(D, R, H, dtype=dt) if proj else torch.zeros(D, 1, 1, dtype=dt)
    one = np.float32(1) if dt == torch.float32 else np.float64(1)
    # 2. the time loop
    with _loop_blas_threads():
        _K.rnn_fwd(_K.CELL_IDS[cell], gi.numpy(), bhn.numpy(), *whh, *whr, proj,
                   sizes, offsets, out.numpy(), hn.numpy(), cn.numpy(), gates.numpy(), cs.numpy(),
                   hprev.numpy(), ms.numpy(), save, one)
    cn_out = cn if c0 is not None else None
    saved = (gates, cs, hprev, ms, sizes, offsets) if save else None
    return out, hn, cn_out, saved


def _recurrent_weights(weights, proj, dt):
    """(whh0, whh1), (whr0, whr1) as numpy views of the weights, no copies when contiguous;
    direction 1 repeats direction 0 when D = 1, dummies stand in for absent W_hr."""
    whh = [_np_(w[1]) for w in weights]
    whr = [_np_(w[4]) for w in weights] if proj else [_np.zeros((1, 1), dtype=_np.dtype(str(dt)[6:]))]
    return (whh[0], whh[-1]), (whr[0], whr[-1])


# ---------------------------------------------------------------- the op layer's kernel contract

COMPUTE_DTYPES = _DTYPES  # half types run upcast to float32 (fastrnn/ops.py)


def forward(cell, x, batch_sizes, h0, c0, weights, train):
    """out, hn, cn | None and, with train, saved = [gates, cs, hprev, ms] (dummies [D, 1, 1]
    where a cell or option has none)."""
    _validate(cell, x, batch_sizes, h0, c0, weights)
    if torch.is_autocast_enabled("cpu"):  # the caller cast already; our own GEMMs must not be recast
        with torch.autocast("cpu", enabled=False):
            out, hn, cn, saved = _forward(cell, x, batch_sizes, h0, c0, weights, save=train)
    else:
        out, hn, cn, saved = _forward(cell, x, batch_sizes, h0, c0, weights, save=train)
    return out, hn, cn, list(saved[:4]) if train else []


def saved_like(cell, x, batch_sizes, h0, c0, weights):
    D, N, P = len(weights), x.size(0), h0.size(2)
    H = weights[0][1].size(0) // gates(cell)
    S = _K.SAVED[cell]
    dummy = lambda: x.new_empty(D, 1, 1)  # noqa: E731
    return [x.new_empty(D, N, S * H), x.new_empty(D, N, H) if cell == "lstm" else dummy(),
            x.new_empty(D, N, P), x.new_empty(D, N, H) if weights[0][4] is not None else dummy()]


def backward(cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw):
    """(dx, dh0, dc0, per direction dw_ih, dw_hh, db_ih, db_hh, dw_hr): the reverse loop in numba,
    then dx and the weight gradients as one GEMM each over all steps."""
    np = _np
    gates, cs, hprev, ms = saved
    D, B, P, H, sizes, offsets = _prepare(cell, x, batch_sizes, h0, c0, weights)
    is_lstm, has_bias, proj = c0 is not None, weights[0][2] is not None, weights[0][4] is not None
    dt, N, G = x.dtype, x.size(0), _K.GATES[cell]
    dh0 = dhn.clone(memory_format=torch.contiguous_format)
    dc0 = dcn.clone(memory_format=torch.contiguous_format) if is_lstm else torch.empty(D, max(B, 1), 1, dtype=dt)
    whh, whr = _recurrent_weights(weights, proj, dt)
    dgi = torch.empty(D, N, G * H, dtype=dt)
    dgh = torch.empty(D, N, G * H, dtype=dt) if cell == "gru" else dgi
    dhs = torch.empty(D, N, P, dtype=dt) if proj else torch.empty(D, 1, 1, dtype=dt)
    c0a = c0 if is_lstm else torch.empty(D, 1, 1, dtype=dt)
    one = np.float32(1) if dt == torch.float32 else np.float64(1)
    with _loop_blas_threads():
        _K.rnn_bwd(_K.CELL_IDS[cell], _np_(dout), gates.numpy(), cs.numpy(), hprev.numpy(),
                   ms.numpy(), _np_(c0a), *whh, *whr, proj, sizes, offsets,
                   dh0.numpy(), dc0.numpy(), dgi.numpy(), dgh.numpy(), dhs.numpy(), one)
    dx = None
    if need_dx:
        dx = torch.mm(dgi[0], weights[0][0])
        for d in range(1, D):
            dx.addmm_(dgi[d], weights[d][0])
    grads = []
    for d in range(D):
        if not need_dw:
            grads += [None] * 5
            continue
        grads += [dgi[d].t().mm(x), dgh[d].t().mm(hprev[d]), dgi[d].sum(0) if has_bias else None,
                  dgh[d].sum(0) if has_bias else None, dhs[d].t().mm(ms[d]) if proj else None]
    return (dx, dh0, dc0 if is_lstm else None, *grads)


# ---------------------------------------------------------------- registration

def _find_openblas_local():
    """SciPy's OpenBLAS `openblas_set_num_threads_local`, or None (other BLAS: leave it be)."""
    import scipy
    for pat in ("scipy.libs/*openblas*", "scipy/.dylibs/*openblas*", "scipy.libs/*/*openblas*"):
        for path in glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), pat)):
            try:
                lib = ctypes.CDLL(path)
                fn = lib.openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            return fn
    return None


def _load():
    global _K, _np, _blas_local
    try:
        import numba  # noqa: F401
        import numpy
    except ImportError as e:
        raise ImportError(f"the numba backend needs numba (pip install 'fastrnn[numba]'): {e}") from e
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls BLAS through SciPy)
    except ImportError as e:
        raise ImportError("the numba backend needs SciPy, which numba uses for BLAS in np.dot "
                          f"(pip install scipy): {e}") from e
    from fastrnn.kernels.numba import rnn as kernels
    _K, _np = kernels, numpy
    _blas_local = _find_openblas_local()
    return sys.modules[__name__]


BACKEND = Backend(
    name="numba",
    devices=frozenset(("cpu",)),
    dtypes=ALL_DTYPES,  # half types run in float32 (upcast, compute, cast back)
    load=_load,
)
