"""Run one fastrnn call in this (fresh) process and report the process state it changed.

Used by tests/test_process_state.py, one subprocess per case, because the first call in a
process is the one that used to leak (torch went single-threaded for good after it):

    python tests/state_probe.py '{"backend": "cpp", "cell": "lstm", ...}'

prints one JSON line {"changed": {name: [before, after], ...}, "ran": [...]}.  The state read
is everything a library call could leave behind: thread counts (torch intra/inter-op, OpenMP,
MKL, SciPy's OpenBLAS, numba), flush-denormal, default dtype, grad/inference mode, autocast,
determinism and backend flags, matmul precision, environment variables, signal handlers.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import signal
import sys

import torch

_SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGCHLD", "SIGSEGV", "SIGFPE", "SIGPIPE", "SIGUSR1") if hasattr(signal, s)]


def _lib_fn(pattern: str, name: str):
    for path in sorted(glob.glob(pattern)):
        try:
            fn = getattr(ctypes.CDLL(path), name)
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        return fn
    return None


_TORCH_LIB = os.path.join(os.path.dirname(torch.__file__), "lib")
_omp_max = _lib_fn(os.path.join(_TORCH_LIB, "libgomp*.so*"), "omp_get_max_threads") or _lib_fn(
    os.path.join(_TORCH_LIB, "libiomp*.so*"), "omp_get_max_threads")
_mkl_max = _lib_fn(os.path.join(_TORCH_LIB, "libtorch_cpu.so"), "mkl_get_max_threads")


def _openblas_threads():
    try:
        import scipy
    except ImportError:
        return None
    site = os.path.dirname(os.path.dirname(scipy.__file__))
    fn = _lib_fn(os.path.join(site, "scipy.libs", "*openblas*"), "scipy_openblas_get_num_threads")
    return None if fn is None else fn()


def _denormals_flushed() -> bool:
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 subnormal
    return bool((tiny * 1.0).item() == 0.0)


def snapshot() -> dict:
    s = {
        "torch.get_num_threads": torch.get_num_threads(),
        "torch.get_num_interop_threads": torch.get_num_interop_threads(),
        "omp_get_max_threads": _omp_max() if _omp_max else None,
        "mkl_get_max_threads": _mkl_max() if _mkl_max else None,
        "openblas (scipy) threads": _openblas_threads(),
        "flush_denormal": _denormals_flushed(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "autocast_cpu_dtype": str(torch.get_autocast_dtype("cpu")),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "mkldnn.enabled": torch.backends.mkldnn.enabled,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "environ": dict(os.environ),
        "signals": {n: repr(signal.getsignal(getattr(signal, n))) for n in _SIGNALS},
        "recursionlimit": sys.getrecursionlimit(),
    }
    if "numba" in sys.modules:
        s["numba threads"] = sys.modules["numba"].get_num_threads()
    return s


def _module(case):
    import fastrnn
    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn_tanh": fastrnn.RNN}[case["cell"]]
    kw = dict(num_layers=case.get("layers", 1), bidirectional=case.get("bidir", False), backend=case["backend"])
    if case.get("proj"):
        kw["proj_size"] = case["proj"]
    return cls(case.get("input", 16), case["hidden"], **kw).to(getattr(torch, case.get("dtype", "float32")))


def run(case):
    torch.manual_seed(0)
    m = _module(case)
    dt = getattr(torch, case.get("dtype", "float32"))
    T, B = case["steps"], case["batch"]
    x = torch.randn(T, B, case.get("input", 16), dtype=dt)
    if case.get("bad"):  # a call that raises: the state must be restored on the error path too
        try:
            m(torch.randn(T, B, case.get("input", 16) + 1, dtype=dt))
        except (RuntimeError, ValueError):
            pass
        else:
            raise AssertionError("the bad call did not raise")
    if case.get("packed"):
        lengths = torch.linspace(T, 1, B).round().long()
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    if case.get("train"):
        out = m(x)[0]
        (out.data if case.get("packed") else out).float().sum().backward()
    else:
        with torch.no_grad():
            m(x)


def main():
    case = json.loads(sys.argv[1])
    if torch.get_num_threads() < 2:  # so that a drop to one thread can be seen on any machine
        torch.set_num_threads(2)
    before = snapshot()  # before fastrnn is imported: importing must not change anything either
    import fastrnn  # noqa: F401
    run(case)
    for c in case.get("then", []):  # later calls, each complete in itself, on the same backend
        run({"backend": case["backend"], **c})
    ran = 1 + len(case.get("then", []))
    after = snapshot()
    changed = {}
    for k in sorted(set(before) | set(after)):
        b, a = before.get(k), after.get(k)
        if k == "numba threads" and b is None:
            continue  # numba imported by the call: it has no earlier state to compare
        if b != a:
            if isinstance(b, dict) and isinstance(a, dict):
                diff = {kk: [b.get(kk), a.get(kk)] for kk in set(b) | set(a) if b.get(kk) != a.get(kk)}
                changed[k] = diff
            else:
                changed[k] = [b, a]
    print(json.dumps({"changed": changed, "ran": ran}))


if __name__ == "__main__":
    main()
