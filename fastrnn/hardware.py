"""What machine this is, in the words the benchmark results and the dispatch table are keyed by.

`hardware_id("cpu")` names a results file (benchmarks/results/<id>.json) and the row of
fastrnn/dispatch_table.py fitted from it, e.g. "cpu-intel-xeon-avx512-2c".
"""
from __future__ import annotations

import functools
import os
import platform
import re


@functools.lru_cache(maxsize=None)
def _cpuinfo_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slugify(s: str) -> str:
    s = re.sub(r"\((r|tm|c)\)", "", s.lower())
    s = re.sub(r"\bcpu\b|@.*$|\bprocessor\b|\bwith .*$", "", s)
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def cpu_vector_isa() -> str:
    """The widest vector ISA of this CPU: the same model name ("AMD EPYC") covers AVX2-only and
    AVX-512 parts, whose results differ (torch's oneDNN kernels use AVX-512 where present)."""
    flags = _cpuinfo_flags()
    return next((isa for isa in ("avx512f", "avx2") if isa in flags), "").replace("f", "")


def cpu_features() -> list[str]:
    """The CPU flags that decide which kernels torch and fastrnn run (a VM's model name is often
    just "Intel(R) Xeon(R) Processor"): vector width, and native bf16/fp16 (AVX512_BF16, AMX)."""
    flags = _cpuinfo_flags()
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16") if f in flags]


def hardware_id(device: str) -> str:
    if device == "cuda":
        import torch
        return slugify(torch.cuda.get_device_name())
    isa = cpu_vector_isa()
    return "cpu-" + slugify(cpu_model()) + (f"-{isa}" if isa else "") + f"-{cpu_cores()}c"
