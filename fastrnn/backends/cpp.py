"""`cpp` backend: fused C++ CPU kernels (the compiled extension `fastrnn._ext`, csrc/).

One C++ call runs a whole layer (both directions): the input projection of every step
as one GEMM, then the time loop in C++ with one recurrent GEMM and one fused,
vectorised pointwise pass per step.  Backward is one C++ call per layer too: the reverse
loop, then every weight gradient as one GEMM over all steps.  This module supplies the kernels
of the op layer's contract (fastrnn/ops.py: forward, backward, saved_like, COMPUTE_DTYPES) and
auto's veto (_prefer).
"""
from __future__ import annotations

import torch

from fastrnn.backends import ALL_DTYPES, Backend, LayerCall
from fastrnn.backends import _compiled
from fastrnn.backends.native import onednn_lstm_applies, torch_runs_one_step_faster

_ext = None


def _load():
    global _ext
    from fastrnn.build_info import check_extension
    check_extension("_ext")  # a build for another torch is refused before it is dlopen'ed
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


# The kernel contract of fastrnn/ops.py: float32 and float64 natively; the op layer runs the
# half types upcast to float32 (fp32 state and accumulation, like the reference).
COMPUTE_DTYPES = frozenset((torch.float32, torch.float64))


def forward(cell, x, batch_sizes, h0, c0, weights, train):
    return _compiled.forward(_ext, cell, x, batch_sizes, h0, c0, weights, train)


def backward(cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw):
    return _compiled.backward(_ext, cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw)


def saved_like(cell, x, batch_sizes, h0, c0, weights):
    return _compiled.saved_like(cell, x, h0, c0, weights, x.dtype)


def _prefer(call: LayerCall) -> tuple[bool, str]:
    """Auto's veto: hand the call to torch where torch measured faster.

    torch runs float32 LSTM without projection on padded input through oneDNN's fused LSTM
    primitive (JIT GEMMs, pre-packed weights).  Our loops match or beat it where a call runs the
    panel loop with the input side in its steps (4-512 rows, weights cached; `_ext.loop_plan`), at
    one or two rows, at up to four rows of a narrow (<= 256) or wide (>= 1024) layer, and over up
    to 20 steps, where oneDNN's per-call weight reorder dominates (_ONEDNN_SHORT_STEPS).  Measured
    on the 2-core AMD EPYC Zen4 with `python -m fastrnn.bench --cell lstm --backend cpp` and side
    by side in one process (T=100 unless said, torch time / ours, fwd | fwd+bwd): B16 H256
    1.03-1.04 | 0.88-1.00, B64 H256 0.98-1.01 | 1.22, B64 H128 1.01-1.02 | 1.02-1.04, B16 H256 bi
    1.09-1.10 | 1.04, 4 layers 1.02-1.04 | 1.04-1.17, T=500 1.05-1.06 | 1.37, fastrnns-default
    (B64 H512) 1.00-1.07 | 1.10; B256 H256 0.98 | 1.28, T=50 B512 H256 1.12; B1 H256 1.09 | 1.18,
    B4 H128 1.15-1.32 | 1.41, B4 H512 1.05 | 1.29, B4 H1024 1.70 | 1.04.  It stays with torch
    where the weights are too large for the in-step projection: B64 H1024 0.95-0.99 | 0.90-0.95.
    Every other LSTM call takes torch's native path, which we beat (packed, proj_size, float64,
    half types).  GRU and RNN have no oneDNN path.
    """
    onednn = onednn_lstm_applies(call)
    if torch_runs_one_step_faster(call) and not onednn:  # oneDNN's LSTM: see _ONEDNN_SHORT_STEPS
        return False, "a single float32/float64 step is faster in torch (no time loop to fuse)"
    if onednn and not _beats_onednn(call):
        return False, "torch's oneDNN LSTM is faster for float32 LSTM without projection on padded input at this size"
    return True, ""


# torch's oneDNN LSTM reorders the weights into its own layout on every call, which a short
# sequence does not amortise: at up to 20 steps our loop won every shape auto otherwise leaves to
# oneDNN (2-core AMD EPYC Zen4, torch time / cpp time, T=1 | 5 | 20 | 50, fwd then fwd+bwd):
# B3 H512 4.64 | 3.63 | 2.10 | 1.39, 1.56 | 1.17 | 1.02 | 0.93; B8 H768 5.12 | 1.29 | 1.06 | 1.06,
# 3.36 | 2.01 | 1.49 | 1.26; B16 H1024 1.25 | 1.03 | 1.18 | 1.19, 3.09 | 1.58 | 1.09 | 1.02;
# B64 H1024 1.05 | 1.26 | 1.07 | 1.00, 2.05 | 1.16 | 1.03 | 0.97 (T=100: 0.95-1.14).  One step of
# nn.LSTM too (B1-64 x H64-1024: 0.82-7.5 fwd, 1.04-4.7 fwd+bwd), unlike an LSTMCell, which torch
# runs without oneDNN (backends.native.ONE_STEP_TO_TORCH).
_ONEDNN_SHORT_STEPS = 20


def _beats_onednn(call: LayerCall) -> bool:
    if call.steps <= _ONEDNN_SHORT_STEPS or call.batch <= 2:
        return True
    if call.batch <= 4 and not 256 < call.hidden_size < 1024:
        return True
    if _ext is None:
        return False
    plan = _ext.loop_plan(proj=bool(call.proj_size), batch=call.batch, steps=call.steps,
                          input_size=call.input_size, hidden=call.hidden_size, gates=4)
    return plan == "panel+step"


BACKEND = Backend(
    name="cpp",
    devices=frozenset(("cpu",)),
    dtypes=ALL_DTYPES,
    load=_load,
    prefer=_prefer,
)
