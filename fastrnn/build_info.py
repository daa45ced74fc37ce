"""What the compiled extensions were built against, and the check that refuses a mismatch.

setup.py writes `build_info.json` next to the extensions it builds (so editable installs and
wheels both carry it): fastrnn's version, the torch and CUDA versions compiled against, the
compiler, nvcc, CUDA archs, which extensions were built, the Python version and the date.

torch's C++ ABI is not stable across minor releases, and a CUDA extension also needs the CUDA
release torch was built with; loading a `.so` built for another torch can fail with an undefined
symbol or, worse, crash later.  So the backends call `check_extension(name)` *before* importing
the extension: a mismatch becomes an ImportError naming both versions and the fix, and the
mismatched library is never dlopen'ed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

FILE_NAME = "build_info.json"


def _extension_dir(name: str) -> Path | None:
    """The folder holding the compiled `fastrnn.<name>` (found without loading it)."""
    try:
        spec = importlib.util.find_spec(f"fastrnn.{name}")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def load(directory: Path | str | None = None) -> dict:
    """The build record: from `directory`, else beside `fastrnn._ext`, else beside this file.

    Empty dict when there is none (a source tree that was never built, or an extension built by
    running CMake by hand).
    """
    candidates = [Path(directory)] if directory is not None else \
        [d for d in (_extension_dir("_ext"), Path(__file__).parent) if d is not None]
    for d in candidates:
        f = d / FILE_NAME
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                return {}
    return {}


def _minor(version: str | None) -> str | None:
    """'2.11.0+cu130' -> '2.11': the part of torch's version that fixes its C++ ABI."""
    if not version:
        return None
    return ".".join(version.split("+")[0].split(".")[:2])


def _cuda(version: str | None) -> str | None:
    """'13.0' -> '13.0'.  Major.minor, what a wheel's local tag (cu130) names: torch's builds for
    two CUDA minors are different binaries, and _cuda_ext links the CUDA libraries of its torch."""
    return ".".join(version.split(".")[:2]) if version else None


def mismatch(name: str, info: dict, torch_version: str, torch_cuda: str | None,
             cxx11_abi: bool | None) -> str | None:
    """Why an extension recorded in `info` cannot load into this torch, or None if it can."""
    built = info.get("torch")
    if not built:
        return None  # no record (hand-built with CMake): nothing to compare, let the import decide
    built_cuda = info.get("torch_cuda")
    problems = []
    if _minor(built) != _minor(torch_version):
        problems.append("torch version")
    if name == "_cuda_ext" and _cuda(built_cuda) != _cuda(torch_cuda):
        problems.append("CUDA version")
    built_abi = info.get("cxx11_abi")
    if built_abi is not None and cxx11_abi is not None and bool(built_abi) != bool(cxx11_abi):
        problems.append("C++11 ABI (_GLIBCXX_USE_CXX11_ABI)")
    if not problems:
        return None
    differ = " and ".join(problems) + (" differ" if len(problems) > 1 else " differs")
    return (f"fastrnn.{name} was built against torch {built} (CUDA {built_cuda or 'none'}) but torch "
            f"{torch_version} (CUDA {torch_cuda or 'none'}) is installed ({differ}); "
            "rebuild fastrnn against this torch: `pip install --no-build-isolation --force-reinstall "
            "--no-deps .` from the source tree (or `pip install --no-build-isolation -e .`), or install "
            "the fastrnn wheel made for this torch")


def check_extension(name: str) -> None:
    """Raise ImportError if `fastrnn.<name>` was built for another torch/CUDA than the running one.

    Call before `import fastrnn.<name>`.
    """
    import torch

    d = _extension_dir(name)
    info = load(d) if d is not None else {}
    abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", None)
    why = mismatch(name, info, torch.__version__, torch.version.cuda, abi)
    if why:
        raise ImportError(why)
