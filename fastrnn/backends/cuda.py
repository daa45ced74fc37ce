"""`cuda` backend: fused CUDA C++ cell kernels (the extension `fastrnn._cuda_ext`, csrc/cuda/).

For users without a working Triton.  One C++ call runs a whole layer (both directions): the
input projection of every step as one GEMM, then a host time loop issuing per step one
recurrent GEMM (torch's cuBLAS, current stream) and one fused pointwise kernel for the cell.
Backward is one C++ call per layer too: the reverse loop (fused gate gradients, then the
dh_{t-1} GEMM), then every weight gradient as one GEMM over all steps.  It supplies the kernels
of the op layer's contract (fastrnn/ops.py).

float32 and float64; float16/bfloat16 natively (half GEMMs with fp32 accumulation, fp32 cell
math, fp32 cell state and saved activations: see csrc/cell_math.h).  Only in CUDA builds
(FASTRNN_BUILD_CUDA=1, or auto with nvcc and a CUDA torch).
"""
from __future__ import annotations

import importlib.util
import sys

import torch

from fastrnn.backends import ALL_DTYPES, Backend, LayerCall
from fastrnn.backends import _compiled

_HALF = (torch.float16, torch.bfloat16)
_ext = None


def _load():
    global _ext
    try:
        built = importlib.util.find_spec("fastrnn._cuda_ext") is not None
    except (ImportError, ValueError):
        built = False
    if not built:
        raise ImportError("this fastrnn was built without CUDA (FASTRNN_BUILD_CUDA=0 or no nvcc): the extension "
                          "fastrnn._cuda_ext is not built; rebuild with FASTRNN_BUILD_CUDA=1 `pip install "
                          "--no-build-isolation .` where nvcc and a CUDA build of torch are installed")
    if torch.version.cuda is None:
        raise ImportError(f"torch {torch.__version__} is a build without CUDA; fastrnn._cuda_ext needs a CUDA torch")
    if not torch.cuda.is_available():
        raise ImportError("torch sees no CUDA device (torch.cuda.is_available() is False)")
    try:
        from fastrnn.build_info import check_extension
    except ImportError:  # a source tree older than build_info: nothing recorded to compare
        check_extension = None
    if check_extension is not None:
        check_extension("_cuda_ext")  # a build for another torch/CUDA is refused before it is dlopen'ed
    try:
        from fastrnn import _cuda_ext as ext
    except ImportError as e:
        raise ImportError(f"the CUDA extension fastrnn._cuda_ext does not load ({e}); rebuild fastrnn against "
                          "this torch with FASTRNN_BUILD_CUDA=1 `pip install --no-build-isolation .`") from e
    _ext = ext
    return sys.modules[__name__]


# The kernel contract of fastrnn/ops.py: every dtype natively (half types with float state and
# saved activations, csrc/cell_math.h).
COMPUTE_DTYPES = ALL_DTYPES


def forward(cell, x, batch_sizes, h0, c0, weights, train):
    return _compiled.forward(_ext, cell, x, batch_sizes, h0, c0, weights, train)


def backward(cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw):
    return _compiled.backward(_ext, cell, x, batch_sizes, h0, c0, weights, saved, dout, dhn, dcn, need_dx, need_dw)


def saved_like(cell, x, batch_sizes, h0, c0, weights):
    return _compiled.saved_like(cell, x, h0, c0, weights, torch.float32 if x.dtype in _HALF else x.dtype)


BACKEND = Backend(
    name="cuda",
    devices=frozenset(("cuda",)),
    dtypes=ALL_DTYPES,
    proj=True,
    packed=True,
    load=_load,
)
