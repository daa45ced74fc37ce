"""`python -m fastrnn.info`: how this install was built and what it can run here.

Prints build_info.json (what the extensions were compiled against), the versions of torch,
numba and triton, the backends available for CPU and CUDA (with the reason for each one that
is not), the CPU and the paths the C++ extension picked for it at run time, and two measured
rates that bound a recurrent layer (the benchmark report's roofline): the matrix peak (torch.mm)
and the rate at which the threads stream cached weights (torch.mv, the small-batch bound); `--no-measure`
skips those (about a second).  Paste it into bug reports.  Needs no GPU: the CUDA list says what
could run on one.
"""
from __future__ import annotations

import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed (no __version__)")
    except Exception as e:  # an optional dependency: absent or broken is a fact to print
        return f"not available ({type(e).__name__}: {e})"


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and the ISA flags that matter to the kernels (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
              "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
    return model, [f for f in wanted if f in flags]


def _ext_paths() -> dict:
    """What fastrnn._ext chose at run time (only if the cpp backend loads: never forces a bad .so)."""
    from fastrnn import backends
    ok, why = backends.get("cpp").availability()
    if not ok:
        return {"isa": f"n/a (cpp backend unavailable: {why})"}
    from fastrnn import _ext
    out = {}
    for name in ("isa", "native_bf16", "gemm_path", "parallel_threads"):
        fn = getattr(_ext, name, None)
        out[name] = fn() if fn is not None else "unknown (this build of _ext does not report it)"
    return out


def measured_rates() -> list[str]:
    """The roofline's two rates on this machine, measured now (noisy on a busy machine)."""
    import os

    import torch

    from fastrnn.bench import runner
    lines = [f"measured (torch threads {torch.get_num_threads()}, load average "
             f"{os.getloadavg()[0]:.2f} on {runner.cpu_cores()} cores):"]
    median, best = runner.matmul_peak("cpu", torch.float32, 1024, reps=5, best=True)
    lines.append(f"  matrix peak (float32 torch.mm 1024^3, 5 calls): {best:.0f} GFLOP/s fastest, {median:.0f} median")
    for label, nbytes in (("LSTM H=256 W_hh, 1 MiB", 4 * 256 * 256 * 4), ("LSTM H=512 W_hh, 4 MiB", 4 * 512 * 512 * 4)):
        lines.append(f"  cache-streaming rate ({label}, each thread reading its share): "
                     f"{runner.cache_rate(nbytes, 'cpu'):.1f} GB/s")
    return lines


def report(measure: bool = True) -> str:
    import torch

    import fastrnn
    from fastrnn import backends, build_info

    lines = [f"fastrnn {fastrnn.__version__} at {fastrnn.__file__}"]
    info = build_info.load()
    lines.append("build_info:" if info else
                 "build_info: none (source tree not built, or extension built by hand with CMake)")
    for k, v in info.items():
        lines.append(f"  {k}: {v}")

    lines.append("runtime:")
    lines.append(f"  python: {platform.python_version()} ({sys.executable})")
    cuda = torch.version.cuda or "none"
    lines.append(f"  torch: {torch.__version__} (CUDA {cuda}, "
                 f"cuda available: {torch.cuda.is_available()})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            lines.append(f"  gpu {i}: {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
    for mod in ("numba", "triton", "numpy"):
        lines.append(f"  {mod}: {_version(mod)}")

    model, flags = cpu_model_and_flags()
    lines.append(f"cpu: {model}")
    lines.append(f"  flags: {' '.join(flags) or 'none of avx/avx2/fma/avx512/amx'}")
    for k, v in _ext_paths().items():
        lines.append(f"  cpp {k}: {v}")

    if measure:
        lines += measured_rates()

    for device in ("cpu", "cuda"):
        avail = backends.available_backends(device)
        lines.append(f"available_backends({device!r}): {avail}")
        for name in backends.names():
            b = backends.get(name)
            if device in b.devices and name not in avail:
                lines.append(f"  {name}: unavailable: {b.availability()[1]}")
    return "\n".join(lines)


def main() -> None:
    print(report(measure="--no-measure" not in sys.argv[1:]))


if __name__ == "__main__":
    main()
