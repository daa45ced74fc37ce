"""`cpp` backend: fused C++ CPU kernels (the compiled extension `fastrnn._ext`, csrc/).

One C++ call runs a whole layer (both directions): the input projection of every step
as one GEMM, then the time loop in C++ with one recurrent GEMM and one fused,
vectorised pointwise pass per step.  Backward is one C++ call per layer too: the reverse
loop, then every weight gradient as one GEMM over all steps.  Same op signature as
`reference.rnn_layer`:

    rnn_layer(cell, x, batch_sizes, h0, c0, weights) -> (out, hn, cn)

float32 and float64 natively; float16/bfloat16 are computed in float32 (fp32 state and
accumulation, like the reference) and cast back.
"""
from __future__ import annotations

import torch

from fastrnn.backends import ALL_DTYPES, Backend, LayerCall
from fastrnn.backends._compiled import layer_function, run_layer
from fastrnn.backends.native import onednn_lstm_applies, torch_runs_one_step_faster

_HALF = (torch.float16, torch.bfloat16)
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


_Layer = layer_function(lambda: _ext)


def rnn_layer(cell, x, batch_sizes, h0, c0, weights):
    out_dtype = x.dtype
    if out_dtype in _HALF:  # fp32 math for half types (fp32 state and accumulation)
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        x, h0, c0 = f32(x), f32(h0), f32(c0)
        weights = [tuple(f32(w) for w in ws) for ws in weights]
    out, hn, cn = run_layer(_Layer, _ext, cell, x, batch_sizes, h0, c0, weights)
    if out_dtype in _HALF:
        out, hn = out.to(out_dtype), hn.to(out_dtype)
        cn = None if cn is None else cn.to(out_dtype)
    return out, hn, cn


def _prefer(call: LayerCall) -> tuple[bool, str]:
    """Auto's veto: hand the call to torch where torch measured faster.

    torch runs float32 LSTM without projection on padded input through oneDNN's fused
    LSTM primitive (JIT GEMMs with pre-packed weights), which beats our panel loop at most sizes
    on the 2-core AMD EPYC Zen4 (T=100, 2 threads, one process, ratio torch time / ours, fwd |
    fwd+bwd): B4 H256 0.96 | 0.96, B16 H256 0.86 | 0.87, B32 H256 0.84 | 0.89, B16 H512 0.88 |
    0.92, B64 H512 0.97 | 1.09, B256 H256 0.82 | 1.09 (T=50: B64 H128/H512 fwd+bwd 0.85/0.84, so
    large-batch training stays with oneDNN).  Our loop wins where a step is bound by streaming
    W_hh: few rows and a wide layer, B4 H1024 1.39 | 1.23 (T=50: B1 H1024 0.94 | 1.90, B2 H1024
    1.12 | 1.40, B8 H1024 0.92 | 0.95), and in training at one or two rows, fwd+bwd: B1 H256
    1.06-1.98 over three runs; T=50 (one loop region per call): B1 H128/H256/H512 1.47/1.30/1.09,
    B2 1.22/1.12/1.16, but B4 1.11/1.03/0.95 and B8 0.87-0.97.  Every other LSTM call takes
    torch's native path, which we beat (packed, proj_size, float64, half types).  GRU and RNN
    have no oneDNN path.
    """
    if torch_runs_one_step_faster(call):
        return False, "a single float32/float64 step is faster in torch (no time loop to fuse)"
    ours = (call.batch <= 4 and call.hidden_size >= 1024) or (call.needs_grad and call.batch <= 2)
    if onednn_lstm_applies(call) and not ours:
        return False, "torch's oneDNN LSTM is faster for float32 LSTM without projection on padded input"
    return True, ""


BACKEND = Backend(
    name="cpp",
    devices=frozenset(("cpu",)),
    dtypes=ALL_DTYPES,
    load=_load,
    prefer=_prefer,
)
