"""A module's remembered plan for a call it has seen before (fastrnn/modules.py).

Most of a small call's time is front-end, not kernel: a one-step RNN call (B=1, H=64) on a
2-core Sapphire Rapids took ~70 us, of which the kernel ~5 us; torch's argument checks, the
shape, dtype and device checks of every layer and auto's pick took the rest. Those depend only on
the call's facts (input shape and dtype, hx shapes, whether autograd is needed, the backend
asked for) and the module's own settings, so a module runs them once per set of facts and
remembers the outcome: the backend picked for each layer, or TORCH where auto hands the whole
call to torch. A call with remembered facts runs straight to the picked kernels.

Skipping the checks is safe because the kernels check every shape, dtype and device before they
touch memory (csrc/layer_checks.h, the numba backend's `_validate`): a call they reject (a weight
replaced by one of another shape, dtype or device since) raises one of REJECTED, and the module
then runs the checked path, which raises torch's own error. What the facts leave out is exactly
what those checks cover. Layers picked for the torch or reference backends are never remembered
(torch's ops do not all check: oneDNN's LSTM reads a misshaped weight), and a call auto hands to
torch as a whole (TORCH) runs torch.nn's forward with all of torch's checks.

Plans are kept for CPU calls outside autocast, torch.compile, tracing, exports and torch.func
transforms (those take the checked path every time), at most MAX_PLANS per module, and are forgotten
whenever auto's picks are (`dispatch.clear`, a refit, a test's own table).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastrnn import dispatch, ops

TORCH = "torch"  # the plan of a call auto hands to torch's own forward as a whole


class Plan(NamedTuple):
    picks: tuple  # the backend per layer
    # no autograd and float32/float64: the call can go straight to the kernels
    # (functional.rnn_inference), without the op layer's general cases
    inference: bool


MAX_PLANS = 64  # per module: each sequence length is its own set of facts
REJECTED = (RuntimeError, ValueError, TypeError, IndexError)
_FULL = (torch.float32, torch.float64)  # the kernels reject other weight dtypes than x's in these
# the module attribute holding (dispatch.PICKS, dispatch.EPOCH, {facts: plan}); dropped when the
# module is pickled or copied (the mixins' __getstate__, modules._copy_as)
ATTR = "_fastrnn_plans"

# The checks a call pays before its plan is found, bound once: ~0.3-1.5 us each of attribute
# walks and argument parsing, in a call of ~20 us (torch's own spellings in comments).
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu"))  # torch.is_autocast_enabled(device) for any device
_functorch = torch._C._are_functorch_transforms_active
_tracing = torch._C._is_tracing  # torch.jit.is_tracing()
_mkldnn = torch._C._get_mkldnn_enabled  # torch.backends.mkldnn.enabled
_grad_enabled = torch.is_grad_enabled
_compiling = torch.compiler.is_compiling
_exporting = torch.compiler.is_exporting


def _plans(module) -> dict:
    held = module.__dict__.get(ATTR)
    if held is None or held[0] is not dispatch.PICKS or held[1] != dispatch.EPOCH:
        held = module.__dict__[ATTR] = (dispatch.PICKS, dispatch.EPOCH, {})
    return held[2]


def lookup(module, facts):
    """The plan remembered for `facts` (None: none, or facts is None)."""
    return None if facts is None else _plans(module).get(facts)


def remember(module, facts, picks) -> None:
    """Remember TORCH or the picks (a backend name per layer) under `facts`. Picks of the torch or
    reference backend are not remembered: their layers run torch ops, and oneDNN's LSTM reads a
    weight of the wrong shape without a check, so those calls keep ours."""
    if facts is None or (picks != TORCH and not all(p in ops.KERNEL_BACKENDS for p in picks)):
        return
    plan = picks if picks == TORCH else Plan(tuple(picks), not facts[3] and facts[1] in _FULL)
    plans = _plans(module)
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[facts] = plan


def facts(module, input, hx, weights):
    """What a call's checks and picks depend on beyond the module's settings: None where the call
    is not one to remember (not a plain CPU tensor, hx not tensors, under autocast, torch.compile,
    a torch.func transform, torch.jit.trace or an export). `weights()`: the module's current weight
    tensors (None entries allowed), asked only for half types.

    Grad mode stands for "needs autograd": a call under grad mode whose tensors all have
    requires_grad off is remembered as needing it, which only costs it the autograd path's
    overhead (the op layer looks again) and never drops a gradient."""
    if type(input) is not Tensor or not input.is_cpu or _any_autocast() or _compiling() or _functorch() or _tracing() \
            or _exporting():
        return None
    if hx is None:
        h = None
    elif type(hx) is Tensor:
        h = hx.shape
    elif type(hx) is tuple and len(hx) == 2 and type(hx[0]) is Tensor and type(hx[1]) is Tensor:
        h = (hx[0].shape, hx[1].shape)
    else:
        return None
    dt = input.dtype
    # half types are cast to their compute dtype before the kernels, which would hide a weight or
    # state of another dtype: for them the dtypes of all tensors are facts too
    dts = None
    if dt not in _FULL:
        states = () if hx is None else (hx,) if type(hx) is Tensor else hx
        dts = tuple([None if t is None else t.dtype for t in (*weights(), *states)])
    # the backend asked for: the module's and FASTRNN_BACKEND's raw value (dispatch.requested)
    return (input.shape, dt, h, _grad_enabled(), dts, module.backend, dispatch.env_backend_raw(), _mkldnn())
