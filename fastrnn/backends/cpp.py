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
from fastrnn.cells import gates
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
    Every other LSTM call takes torch's native path, which we beat (packed, proj_size, float64),
    GRU and RNN have no oneDNN path; bf16/fp16, which torch runs natively on CPUs with the
    kernels and we run upcast, go to torch where measured faster (_TORCH_HALF).
    """
    half = _TORCH_HALF.get(call.dtype)  # bf16/fp16 run upcast to float32 here: see _TORCH_HALF
    if half is not None and call.device == "cpu" and torch.backends.mkldnn.is_available() \
            and getattr(torch.ops.mkldnn, half[0])():
        grad = bool(call.needs_grad)
        fused_above = half[1][grad]
        if (fused_above is not None and call.cell == "lstm" and not call.proj_size and not call.packed
                and torch.backends.mkldnn.enabled):
            if call.batch > fused_above:
                return False, f"torch's native {call.dtype} oneDNN LSTM is faster than our float32 upcast here"
        else:
            G = gates(call.cell)
            if 2.0 * call.batch * (call.proj_size or call.hidden_size) * G * call.hidden_size > half[2][grad]:
                return False, f"torch's native {call.dtype} GEMMs are faster than our float32 upcast at this size"
    onednn = onednn_lstm_applies(call)
    if torch_runs_one_step_faster(call) and not onednn:  # oneDNN's LSTM: see _ONEDNN_SHORT_STEPS
        return False, "a single float32/float64 step is faster in torch (no time loop to fuse)"
    if onednn and not _beats_onednn(call):
        return False, "torch's oneDNN LSTM is faster for float32 LSTM without projection on padded input at this size"
    return True, ""


# Half types: this backend computes bf16/fp16 upcast to float32 (fp32 GEMMs, fp32 state), while
# torch runs them natively where oneDNN has the kernels: bf16 on AVX-512 CPUs (AVX512_BF16 and AMX
# GEMMs; the fused oneDNN LSTM for padded LSTM without projection, forward and backward), fp16 on
# AVX512-FP16/AMX-FP16 CPUs (its GEMMs; the fused LSTM for inference only).  Where the dtype's
# oneDNN check (the entry's first field) fails, torch's half path is slow and nothing is vetoed.
# Entry: (check, {needs_grad: rows above which torch's fused LSTM wins, None: no fused LSTM},
#         {needs_grad: per-step GEMM flops 2*B*Hout*G*H above which torch wins, every other call}).
# Measured on the 2-core Intel Xeon (Sapphire Rapids class: AVX512_BF16, AMX, AVX512_FP16), torch
# 2.13, T=100, I=H, torch time / cpp time side by side in one process, min of 7 alternating calls
# of CPU time on one thread (the two cores were shared with three other engineers' jobs, load 5-8:
# two-thread wall times swung 2-100x between runs, while 12 shapes measured twice on one thread
# agreed within 15%; a two-thread wall run at load 2-5 agreed in sign on most shapes away from
# the edges):
#   bf16 LSTM fused  fwd     B1 H128/256/512 0.56/0.50/0.37, B16 0.20-0.32, B64 0.18-0.24 (2 threads:
#                            B1 H128 1.0-1.24, B1 H256 0.60-0.95): torch at any batch
#                    fwd+bwd B1 1.36/2.43/1.70, B2 H256 1.77 | B4 H128/256 0.77/0.88, B8 0.60-0.66,
#                            B16 0.39-0.44, B64 0.26-0.37: torch above 2 rows
#   bf16 GRU/RNN     fwd     GRU 1.6 MF (B1 H512, B16 H128) 1.11/1.97, RNN 2.1 MF 1.27/1.35 |
#                            GRU 6.3 MF 0.84/0.85, RNN 8.4 MF 0.55/0.62, larger 0.35-0.48: torch above 4 MF
#                    fwd+bwd GRU 6.3 MF 1.02/1.08, RNN 2.1 MF 1.08/1.31 | RNN 8.4 MF 0.58/0.74,
#                            GRU 25 MF 0.52/0.75, larger 0.37-0.40: torch above 8 MF
#   fp16 LSTM fused  fwd     B16 H128/256/512 1.24/1.02/1.05 | B64 0.84-0.89: torch above 16 rows
#   fp16 (unfused)   fwd     RNN 8.4 MF 1.15, GRU 25 MF 1.01 | RNN 33.5 MF 1.00, GRU 100 MF 0.96
#                    fwd+bwd RNN 8.4 MF 1.14, GRU 25 MF 1.09 | LSTM 33.5 MF 1.10-1.12, RNN 33.5 MF 0.78,
#                            GRU 100 MF 0.84, LSTM 134 MF 0.84: torch above 30 MF
# bf16 LSTM with proj_size or packed input runs torch's unfused path, like GRU/RNN (not measured
# there; the GRU/RNN thresholds apply).  Handing a call to torch can only make auto as fast as
# torch, so each edge sits at or below the last shape where we won.
_TORCH_HALF = {
    torch.bfloat16: ("_is_mkldnn_bf16_supported", {False: 0, True: 2}, {False: 4e6, True: 8e6}),
    torch.float16: ("_is_mkldnn_fp16_supported", {False: 16, True: None}, {False: 30e6, True: 30e6}),
}


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
