"""`triton` backend: not built in this version of fastrnn."""
from __future__ import annotations

import torch

from fastrnn.backends import ALL_DTYPES, Backend


def _load():
    raise ImportError("the triton backend is not implemented in this build")


BACKEND = Backend(name="triton", devices=frozenset(("cuda",) if "triton" in ("triton", "cuda") else ("cpu",)),
                  dtypes=ALL_DTYPES, load=_load)
