"""torch.compile(fullgraph=True) on models holding fastrnn's RNN modules.

Dynamo refuses to trace any instance of nn.RNN/GRU/LSTM unless the global
`torch._dynamo.config.allow_rnn` is set (pytorch#91439: torch's own RNN kernels do not trace; on
CPU with torch 2.13 setting it makes a plain nn.LSTM fail with a TypeError in mkldnn_rnn_layer).
fastrnn's modules subclass those (so `isinstance(m, nn.LSTM)` holds) but their forward is
traceable: module -> functional -> the custom op `fastrnn::rnn_layer`, one graph node per layer.

So fastrnn lifts the refusal for its own modules only: `VariableBuilder.wrap_module`, the one
place Dynamo makes that check (torch/_dynamo/variables/builder.py), is wrapped to set `allow_rnn`
while it wraps a fastrnn module, and only then; every other module, a user's own nn.LSTM
included, is treated exactly as before. The wrapper is installed when Dynamo's builder module is
first imported (a meta-path hook that removes itself), so `import fastrnn` does not import Dynamo
(~1.3 s). Tested with torch 2.13; on a torch whose builder has no `wrap_module`, nothing is
patched and Dynamo's own message stands.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys

_BUILDER = "torch._dynamo.variables.builder"
_CLASSES: tuple = ()


def install(classes: tuple) -> None:
    global _CLASSES
    _CLASSES = tuple(classes)
    if _BUILDER in sys.modules:
        _patch(sys.modules[_BUILDER])
    elif not any(isinstance(f, _BuilderHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _BuilderHook())


def _patch(builder) -> None:
    vb = getattr(builder, "VariableBuilder", None)
    orig = getattr(vb, "wrap_module", None)
    if orig is None or getattr(orig, "_fastrnn", False):
        return
    from torch._dynamo import config

    @functools.wraps(orig)
    def wrap_module(self, value):
        if isinstance(value, _CLASSES) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return orig(self, value)
        return orig(self, value)

    wrap_module._fastrnn = True
    vb.wrap_module = wrap_module


class _BuilderHook(importlib.abc.MetaPathFinder):
    """Patches Dynamo's builder module right after it is first executed, then removes itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec
