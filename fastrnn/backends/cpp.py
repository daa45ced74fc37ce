"""`cpp` backend: fused C++ CPU kernels (the compiled extension `fastrnn._ext`, csrc/).

One C++ call runs a whole layer (both directions): the input projection of every step
as one GEMM, then the time loop in C++ with one recurrent GEMM and one fused,
vectorised pointwise pass per step.  Backward is one C++ call per layer too: the reverse
loop, then every weight gradient as one GEMM over all steps.  This module supplies the kernels
of the op layer's contract (fastrnn/ops.py: forward, backward, saved_like, COMPUTE_DTYPES); where
auto hands a call to torch instead is decided in fastrnn/dispatch.py.
"""
from __future__ import annotations

import torch

from fastrnn.backends import ALL_DTYPES, Backend, LayerCall
from fastrnn.backends import _compiled
from fastrnn.cells import gates

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
    _set_loop_limits(ext)
    global NATIVE_DTYPES, NATIVE_ISA
    NATIVE_ISA = ext.native_bf16()
    NATIVE_DTYPES = frozenset((torch.bfloat16,)) if NATIVE_ISA else frozenset()
    import sys
    return sys.modules[__name__]


def _set_loop_limits(ext):
    """The C++ loop plan's CPU-dependent thresholds (csrc/loop_plan.h) from this CPU's row of the
    dispatch table: where the panel loop projects the input (forward) or makes dx (backward)
    inside its steps, and up to which W_hh size it runs calls of 16 rows or more at all."""
    from fastrnn import dispatch
    t = dispatch.table()
    ext.set_loop_limits({p: {**{k: int(t[f"cpp.step_input.{p}.{k}"]) for k in ("cached_bytes", "bytes_per_row")},
                             "panel_max_bytes": int(t[f"cpp.panel_loop.{p}.max_bytes"])}
                         for p in ("forward", "backward")})


# The kernel contract of fastrnn/ops.py: float32 and float64 natively; the op layer runs the
# half types upcast to float32 (fp32 state and accumulation, like the reference).
COMPUTE_DTYPES = frozenset((torch.float32, torch.float64))
# Half types whose forward runs natively (csrc/layer_forward_bf16.cpp: bf16 weights and activations,
# float32 accumulation and state; AVX512_BF16 steps, AMX input projection): bf16 where the CPU has
# AVX512_BF16 and FASTRNN_ISA does not cap it.  Their saved values are float32 and their backward
# runs upcast on them.  Set when the extension loads (empty before).
NATIVE_DTYPES: frozenset = frozenset()
NATIVE_ISA = ""  # "amx_bf16", "avx512_bf16" or "" (_ext.native_bf16())


def native_dtypes() -> frozenset:
    """NATIVE_DTYPES, loading the extension first (empty where it does not load)."""
    if _ext is None:
        from fastrnn import backends
        ok, _ = backends.get("cpp").availability()
        if not ok:
            return frozenset()
    return NATIVE_DTYPES


def forward(cell, x, batch_sizes, h0, c0, weights, train):
    return _compiled.forward(_ext, cell, x, batch_sizes, h0, c0, weights, train)


def backward(cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw, half=None):
    """half: the layer's own dtype when it is a half type run upcast here (the op layer passes it); for
    bf16 the GEMMs over all steps (dx, weight gradients) then take bf16 operands (csrc/layer_grads.h)."""
    kw = {"bf16_gemms": True} if half == torch.bfloat16 and half in NATIVE_DTYPES else {}
    return _compiled.backward(_ext, cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw,
                              **kw)


def saved_like(cell, x, batch_sizes, h0, c0, weights):
    return _compiled.saved_like(cell, x, h0, c0, weights, x.dtype)


def loop_plan(call: LayerCall):
    """The time loop `_ext` runs for this call ("panel+step", ...; see csrc), None before it loads."""
    if _ext is None:
        return None
    return _ext.loop_plan(proj=bool(call.proj_size), batch=call.batch, steps=call.steps,
                          input_size=call.input_size, hidden=call.hidden_size, gates=gates(call.cell))


BACKEND = Backend(
    name="cpp",
    devices=frozenset(("cpu",)),
    dtypes=ALL_DTYPES,
    load=_load,
)
