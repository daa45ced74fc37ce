"""Backend registry: each backend declares what it can run; fastrnn/dispatch.py picks one.

Every backend module exposes one op with the same signature (see
`reference.rnn_layer`, the oracle):

    rnn_layer(cell, x, batch_sizes, h0, c0, weights) -> (out, hn, cn)

and a `BACKEND = Backend(...)` entry describing it. The module stays cheap to
import; heavy imports (the extension, numba, triton) happen in `load()`.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

# backend name -> module under fastrnn/backends/ ("torch" lives in native.py: a submodule
# named torch would shadow the torch package inside this one)
_MODULES = {"reference": "reference", "torch": "native", "cpp": "cpp", "numba": "numba",
            "triton": "triton", "cuda": "cuda"}
_HALF = (torch.float16, torch.bfloat16)
ALL_DTYPES = frozenset((torch.float64, torch.float32, torch.float16, torch.bfloat16))


@dataclass(frozen=True)
class LayerCall:
    """What dispatch knows about one layer call (all directions of one layer)."""

    cell: str
    device: str                 # "cpu", "cuda", ...
    dtype: torch.dtype
    input_size: int
    hidden_size: int
    proj_size: int              # 0 = no projection
    batch: int                  # B (largest batch for packed input)
    steps: int                  # T
    directions: int
    packed: bool                # batch_sizes not uniform
    needs_grad: bool


@dataclass
class Backend:
    name: str
    devices: frozenset
    dtypes: frozenset
    cells: frozenset = frozenset(("lstm", "gru", "rnn_tanh", "rnn_relu"))
    proj: bool = True
    packed: bool = True
    auto: bool = True           # may auto pick it at all (False: only by name)
    # Returns the module holding `rnn_layer`; raises ImportError/RuntimeError saying why not.
    load: Callable[[], object] = None
    # Optional veto for any call, for limits finer than the fields above.
    check: Optional[Callable[[LayerCall], tuple[bool, str]]] = None
    _state: dict = field(default_factory=dict, repr=False)

    def availability(self) -> tuple[bool, str]:
        """Whether this install can run the backend at all (cached)."""
        if "ok" not in self._state:
            try:
                self._state["impl"] = self.load()
                self._state["ok"], self._state["why"] = True, ""
            except Exception as e:  # a missing build or package is reported, not raised
                self._state["ok"], self._state["why"] = False, f"{type(e).__name__}: {e}"
        return self._state["ok"], self._state["why"]

    @property
    def impl(self):
        ok, why = self.availability()
        if not ok:
            raise RuntimeError(f"fastrnn backend '{self.name}' is not available: {why}")
        return self._state["impl"]

    def supports(self, call: LayerCall) -> tuple[bool, str]:
        if call.device not in self.devices:
            return False, f"runs on {sorted(self.devices)}, not on device '{call.device}'"
        if call.dtype not in self.dtypes:
            return False, f"does not support dtype {call.dtype}"
        if call.cell not in self.cells:
            return False, f"does not support cell '{call.cell}'"
        if call.proj_size and not self.proj:
            return False, "does not support proj_size > 0"
        if call.packed and not self.packed:
            return False, "does not support PackedSequence input"
        if self.check is not None:
            return self.check(call)
        return True, ""


def this_module(name: str) -> Callable[[], object]:
    """`load` for a backend whose op lives in its own, already imported, module."""
    return lambda: sys.modules[name]


def _registry() -> dict[str, Backend]:
    if not _REGISTRY:
        for mod in _MODULES.values():
            b = importlib.import_module(f"fastrnn.backends.{mod}").BACKEND
            _REGISTRY[b.name] = b
    return _REGISTRY


_REGISTRY: dict[str, Backend] = {}


def names() -> tuple[str, ...]:
    return tuple(_MODULES)


def get(name: str) -> Backend:
    reg = _registry()
    if name not in reg:
        raise ValueError(f"Unknown fastrnn backend {name!r}; expected 'auto' or one of {list(_MODULES)}")
    return reg[name]


def _device_type(device) -> str:
    return torch.device(device).type if not isinstance(device, str) or ":" in device else device


def available_backends(device="cpu") -> list[str]:
    """Backends this install can run on `device`, in auto's preference order."""
    dev = _device_type(device)
    from fastrnn.dispatch import ORDER
    out = []
    for name in ORDER.get(dev, ("torch", "reference")):
        b = get(name)
        if dev in b.devices and b.availability()[0]:
            out.append(name)
    return out


def select(name: str, call: LayerCall, exclude: tuple = ()) -> Backend:
    """The backend that runs `call`: the named one, or auto's pick (fastrnn/dispatch.py)."""
    from fastrnn import dispatch
    return dispatch.pick(name, call, exclude)
