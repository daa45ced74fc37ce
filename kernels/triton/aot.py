"""Compile the kernels for a GPU target on a machine without one (ptxas ships with triton), and
count the compiles a run would ask for.

Two tools, both CPU-only, both working from the launches a run actually makes:

* `record_launches()`: while active, a launch of any kernel in `KERNELS` is not run; its
  specialisation key is computed the way Triton 3.6's `JITFunction.run` does (the same binder:
  `create_function_from_signature` + `native_specialize_impl`, for an sm_90 target) and recorded.
  The number of distinct keys is the number of compiles the same calls would cost on a GPU.
* `compile_launch()` / `report()`: compile one recorded key for sm_90 exactly as the JIT would
  (`_pack_args` -> `ASTSource` -> `triton.compile`) and read the compiler's resource report
  (registers, stack, spills, shared memory; instruction counts from the SASS).

    python -m fastrnn.kernels.triton.aot            # every variant the dispatch launches, one line each

Needs the kernels defined without TRITON_INTERPRET (they are then plain JITFunctions).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import triton
from triton.backends.compiler import GPUTarget

from fastrnn.kernels.triton import rnn

SM90 = GPUTarget("cuda", 90, 32)
# Dynamic shared memory one block may use on sm_90 (227 KiB: cudaDevAttrMaxSharedMemoryPerBlockOptin).
SM90_MAX_SHARED = 227 * 1024
KERNELS = (rnn._fwd_step_kernel, rnn._bwd_step_kernel, rnn._fwd_seq_kernel, rnn._bwd_seq_kernel)


@dataclass
class Launch:
    """One distinct specialisation key: what the JIT would compile."""
    fn: object                 # the JITFunction
    args: tuple
    kwargs: dict
    constexprs: dict           # name -> value, for reports
    count: int = 0             # launches that asked for this key

    @property
    def name(self):
        return self.fn.fn.__name__

    def label(self):
        c = self.constexprs
        cell = {v: k for k, v in rnn.CELL_IDS.items()}.get(c.get("CELL"), "none")
        acc = str(c.get("ACC", ""))
        dtype = self.args[0].dtype  # every kernel's first argument has the layer's dtype
        return (f"{self.name.strip('_').replace('_kernel', '')} {cell} {str(dtype).replace('torch.', '')}"
                f" acc={acc.replace('fp', 'f')} {c.get('PREC')}" + (" W_T" if c.get("W_T") else "")
                + f" block_h={c.get('BLOCK_H')}")


@dataclass
class Recorder:
    keys: dict = field(default_factory=dict)   # key -> Launch
    launches: int = 0

    def by_kernel(self) -> dict:
        out = {}
        for launch in self.keys.values():
            out[launch.name] = out.get(launch.name, 0) + 1
        return out


def _binder(fn, target):
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    return backend, create_function_from_signature(fn.signature, fn.params, backend)


@contextlib.contextmanager
def record_launches(target=SM90):
    """Record (don't run) every launch of the kernels in `KERNELS`; yields a `Recorder`.
    Outputs of recorded launches are left as allocated: only the keys mean anything."""
    if rnn.INTERPRETED:
        raise RuntimeError("record_launches needs compiled kernels: run without TRITON_INTERPRET=1")
    rec = Recorder()
    patched = []
    for fn in KERNELS:
        _, bind = _binder(fn, target)

        def run(*args, grid, warmup, _fn=fn, _bind=bind, **kwargs):
            bound, spec, options = _bind(*args, **kwargs)
            # Triton 3.6: key = (tuple(specialization), str(options)) (runtime/jit.py compute_cache_key)
            key = (_fn.fn.__name__, repr(tuple(spec)), repr(sorted(options.items())))
            launch = rec.keys.get(key)
            if launch is None:
                constexprs = {p.name: v for p, (kind, v) in zip(_fn.params, spec) if kind == "constexpr"}
                launch = rec.keys[key] = Launch(_fn, args, dict(kwargs), constexprs)
            launch.count += 1
            rec.launches += 1
            return None

        fn.run = run  # the instance attribute shadows JITFunction.run; `kernel[grid](...)` calls it
        patched.append(fn)
    try:
        yield rec
    finally:
        for fn in patched:
            del fn.run


def compile_launch(launch: Launch, target=SM90):
    """Compile one recorded key for `target`, as `JITFunction.run` -> `_do_compile` would."""
    from triton import knobs
    kwargs = dict(launch.kwargs)
    # what JITFunction.run adds before binding, so the options (and Triton's cache key) match
    kwargs["debug"] = kwargs.get("debug", launch.fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    backend, bind = _binder(launch.fn, target)
    bound, spec, options = bind(*launch.args, **kwargs)
    opts, signature, constexprs, attrs = launch.fn._pack_args(backend, kwargs, bound, spec, options)
    src = triton.compiler.ASTSource(launch.fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=opts.__dict__)


def report(kernel) -> dict:
    """Registers, stack/local bytes, shared memory (static from the cubin, dynamic from the launch
    metadata) and counts of the instructions that matter (LDL/STL: local-memory traffic)."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        run = lambda *a: subprocess.run([os.path.join(tools, "cuobjdump"), *a, f.name],  # noqa: E731
                                        capture_output=True, text=True, check=True).stdout
        usage, sass = run("-res-usage"), run("-sass")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    out = dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups()))) if m else {}
    out["dyn_shared"] = int(kernel.metadata.shared)
    out["num_warps"] = int(kernel.metadata.num_warps)
    for op in ("HGMMA", "HMMA", "DMMA", "FFMA", "LDL", "STL"):
        out[op] = len(re.findall(rf"\b{op}\b", sass))
    return out


def spills(r: dict) -> bool:
    return bool(r["local"] or r["stack"] or r["LDL"] or r["STL"])


def _report_shard(shard, jobs):
    from fastrnn.gpucheck import dispatch_variants
    launches = list(dispatch_variants().keys.values())
    return [(i, launches[i].label(), report(compile_launch(launches[i])))
            for i in range(shard, len(launches), jobs)]


def report_variants(jobs: int = 1) -> list:
    """[(label, report)] for every variant the dispatch can launch (`fastrnn.gpucheck.
    dispatch_variants`), compiled for sm_90; `jobs` > 1 compiles in that many processes."""
    if jobs <= 1:
        rows = _report_shard(0, 1)
    else:
        import concurrent.futures
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            rows = [r for part in ex.map(_report_shard, range(jobs), [jobs] * jobs) for r in part]
    return [(label, r) for _, label, r in sorted(rows)]


def main(argv=None):
    rows = report_variants(int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    print(f"{len(rows)} variants the dispatch can launch (sm_90):")
    bad = 0
    for label, r in rows:
        bad += spills(r) or r["dyn_shared"] > SM90_MAX_SHARED
        print(f"{label:55s} {r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
