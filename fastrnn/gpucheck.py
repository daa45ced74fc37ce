"""GPU first contact: one prepared run that answers correctness, speed and cuDNN's algorithm.

    make gpu-check                                   # = python3 -m fastrnn.gpucheck
    python -m fastrnn.gpucheck --deadline 300        # hard deadline in seconds (default 300)
    python -m fastrnn.gpucheck --interpret           # on CPU: Triton interpreter, tiny sizes
    python -m fastrnn.gpucheck --count-compiles      # CPU only: the Triton compiles a GPU run asks for
    python -m fastrnn.gpucheck fit RESULTS.json      # the CUDA dispatch table from a results file
    python -m fastrnn.gpucheck build                 # the CUDA extension, only if missing or stale

Sections, in this order, each case written to the JSON as soon as it is done (a killed run keeps
what it found):

0. environment, the CUDA extension (built in the background with every core if missing or stale,
   or skipped with the reason), the measured matmul peak (fp32, tf32, bf16);
1. correctness of every GPU backend (triton step kernels, triton persistent kernels, cuda) against
   torch (cuDNN) in the same dtype and a float64 reference on the same (dtype-rounded) inputs and
   weights: LSTM/GRU/RNN, uni/bi, packed, proj, fp32 (TF32 off), bf16, fp16; outputs, final states
   and every gradient; three calls each (the triton graph is captured on the second and replayed
   on the third); aligned (H=128) and odd (H=67) sizes. Weights at torch.nn's own init scale. A
   tensor passes when its error against float64 is at most 2x torch's own error on the same inputs
   (floor: 4 ulp of the dtype);
2. speed against torch (cuDNN) with CUDA events on the grid LSTM/GRU/RNN, T=100, B in {1, 16, 64},
   H in {128, 512, 1024}, fp32 with TF32 off and on, bf16, fwd and fwd+bwd; achieved TFLOP/s beside
   the matmul peak; with (3) cuDNN's algorithm for the case, from torch's own rule (`cudnn_algo`)
   and confirmed from the profiler's kernel names.

Output: `benchmarks/results/gpu-<device>.json` (interpreter runs: build/gpucheck/interpret-cpu.json),
a short table on stdout, and the JSON path on the last line.

Without CUDA the same code runs on CPU tensors under TRITON_INTERPRET=1 at tiny sizes (torch's
CPU kernels stand in for cuDNN; the speed numbers then mean nothing); `--interpret` re-executes
itself with TRITON_INTERPRET=1 set if needed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastrnn.cells import gates

ROOT = Path(__file__).resolve().parent.parent
COMPILE_BUDGET = 60          # distinct Triton compiles `make gpu-check` may ask for (issue 18)
CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}   # the cells measured -> torch.nn class
DTYPES = {"f32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16,
          "f64": torch.float64}


# ---------------------------------------------------------------------------------------------
# The plan

@dataclasses.dataclass(frozen=True)
class Case:
    backend: str        # "triton-step", "triton-persistent", "triton" (dispatch's own choice), "cuda"
    cell: str           # "lstm", "gru", "rnn_tanh"
    dtype: str          # "f32" (TF32 off), "tf32", "bf16", "f16"
    T: int
    B: int
    I: int
    H: int
    D: int = 1
    proj: int = 0
    packed: bool = False
    grad: bool = True   # speed: fwd+bwd (True) or fwd only

    @property
    def id(self):
        s = f"{self.cell}-T{self.T}-B{self.B}-I{self.I}-H{self.H}" + (f"-P{self.proj}" if self.proj else "")
        s += ("-bi" if self.D == 2 else "") + ("-packed" if self.packed else "")
        return f"{s}-{self.dtype}-{'fwdbwd' if self.grad else 'fwd'}-{self.backend}"


def correctness_cases(tiny: bool, cuda_ext: bool = False) -> list:
    """Step kernels at an aligned (uni) and an odd packed (bi) size per cell and dtype, LSTM with
    proj_size, the persistent kernels at their largest H per dtype (odd batch, packed, bi)."""
    if tiny:
        aligned, odd = dict(T=3, B=2, I=16, H=16), dict(T=4, B=3, I=5, H=13)
        proj = dict(T=4, B=3, I=5, H=13, proj=6)
        pers = {"f32": dict(T=4, B=3, I=5, H=13), "half": dict(T=4, B=3, I=5, H=13)}
    else:
        aligned, odd = dict(T=12, B=16, I=64, H=128), dict(T=17, B=37, I=50, H=67)
        proj = dict(T=12, B=20, I=30, H=80, proj=35)
        pers = {"f32": dict(T=17, B=37, I=50, H=32), "half": dict(T=17, B=37, I=50, H=64)}
    out = []
    for dt in ("f32", "bf16", "f16"):
        for cell in CELLS:
            if not tiny or dt == "f32":  # interpreter: the aligned size in fp32 only (time)
                out.append(Case("triton-step", cell, dt, D=1, **aligned))
            out.append(Case("triton-step", cell, dt, D=2, packed=True, **odd))
    out += [Case("triton-step", "lstm", dt, D=2, packed=True, **proj) for dt in ("f32", "bf16")]
    for dt in ("f32", "bf16", "f16"):
        size = pers["f32" if dt == "f32" else "half"]
        out += [Case("triton-persistent", cell, dt, D=2, packed=True, **size) for cell in CELLS]
    if cuda_ext:
        out += [dataclasses.replace(c, backend="cuda") for c in out
                if c.backend == "triton-step" and c.dtype in ("f32", "bf16")]
    return out


def speed_cases(tiny: bool) -> list:
    Bs, Hs, T = ((3,), (16,), 3) if tiny else ((1, 16, 64), (128, 512, 1024), 100)
    return [Case("triton", cell, dt, T=T, B=B, I=H, H=H, grad=grad)
            for grad in (False, True) for dt in ("f32", "tf32", "bf16") for cell in CELLS
            for H in Hs for B in Bs]


# ---------------------------------------------------------------------------------------------
# cuDNN's algorithm, by torch's own rule

def cudnn_algo(cell, dtype, hidden, input_size, proj, layers, directions, batch, steps, packed,
               forward, capability, sm_count) -> str:
    """The cuDNN RNN algorithm torch asks for: a Python statement of `get_algo`,
    `use_rnn_persist_small_h`, `use_persist_common_heuristics` and `use_persist_device_heuristics`
    in pytorch/pytorch aten/src/ATen/native/cudnn/RNN.cpp (read at commit 00fc08aa616f; the
    profiler's kernel names confirm it per case, since torch 2.11 may differ).
    dtype: torch dtype of the input; capability: (major, minor)."""
    major, minor = capability
    if proj:
        return "standard"                    # projections: standard algorithm only
    if packed:
        return "standard"                    # persistent algos refuse varying lengths
    if dtype != torch.float64 and major >= 6:
        small = {True: {"rnn_tanh": 384, "rnn_relu": 384, "lstm": 192, "gru": 192},
                 False: {"rnn_tanh": 256, "rnn_relu": 256, "lstm": 128, "gru": 128}}[bool(forward)][cell]
        if hidden <= small:
            return "persist_static_small_h"
    if dtype == torch.float16:               # CUDNN_DATA_HALF only (bf16 is CUDNN_DATA_BFLOAT16)
        common = (layers == 1 and hidden <= 1024 and directions == 1 and hidden % 128 == 0
                  and input_size % 128 == 0)
        device = False
        if major == 7 and minor != 5:
            device = (((batch % 16 == 0 and batch not in (80, 112)) or batch == 8)
                      and ((steps >= 40 and batch <= 128) or (steps >= 20 and batch <= 96)
                           or (steps >= 10 and batch <= 32)))
        elif major >= 8 and sm_count >= 98 and minor != 6:
            if cell == "lstm":
                device = batch % 8 == 0 and batch <= 128
            elif cell != "gru":
                device = batch % 8 == 0 and batch <= 128 and (batch < 96 or hidden < 896)
        if common and device:
            return "persist_static"
    return "standard"


def classify_kernels(names) -> str:
    """What the profiler's kernel names say ran; the raw names are kept in the JSON beside it."""
    low = [n.lower() for n in names]
    if any("small" in n and "persist" in n for n in low) or any("smallh" in n for n in low):
        return "persist_static_small_h"
    if any("persist" in n for n in low):
        return "persist_static"
    if any(re.search(r"rnn|lstm|gru|elemwise", n) for n in low):
        return "standard"
    return "no cudnn rnn kernel"


# ---------------------------------------------------------------------------------------------
# Running one case

class _Layer(torch.nn.Module):
    """One layer through a backend's op (the triton backend's `rnn_layer(cell, x, batch_sizes, h0,
    c0, weights)`, or `fastrnn.ops.rnn_layer(cell, backend, ...)` for the others), holding
    torch.nn's parameters under torch.nn's names so that outputs and gradients line up by name."""

    def __init__(self, cell, tmod, backend):
        super().__init__()
        self.cell, self.backend, self.D = cell, backend, 2 if tmod.bidirectional else 1
        for n, p in tmod.named_parameters():
            self.register_parameter(n, torch.nn.Parameter(p.detach().clone()))

    def forward(self, inp, hx=None):
        from fastrnn import backends
        if hx is None:
            p = next(self.parameters())
            B = int(inp.batch_sizes[0]) if isinstance(inp, torch.nn.utils.rnn.PackedSequence) else inp.size(1)
            h = torch.zeros(self.D, B, self.weight_hh_l0.size(1), dtype=p.dtype, device=p.device)
            hx = (h, torch.zeros(self.D, B, self.weight_ih_l0.size(0) // 4, dtype=p.dtype, device=p.device)) \
                if self.cell == "lstm" else h
        impl = backends.get(self.backend).impl
        packed = isinstance(inp, torch.nn.utils.rnn.PackedSequence)
        x = inp.data if packed else inp.reshape(-1, inp.size(-1))
        h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        weights = [tuple(getattr(self, f"{n}_l0{sfx}", None) for n in names) for sfx in ("", "_reverse")[:self.D]]
        bs = inp.batch_sizes if packed else None
        if hasattr(impl, "rnn_layer"):   # a backend with its own op (triton)
            out, hn, cn = impl.rnn_layer(self.cell, x, bs, h0, c0, weights)
        else:                            # the shared op family (fastrnn.ops: cpp, numba, cuda)
            from fastrnn import ops
            out, hn, cn = ops.rnn_layer(self.cell, self.backend, x, bs, h0, c0, weights)
        if packed:
            out = torch.nn.utils.rnn.PackedSequence(out, inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)
        else:
            out = out.view(inp.size(0), inp.size(1), -1)
        return out, ((hn, cn) if self.cell == "lstm" else hn)


def _modules(case: Case, device, backend_name):
    """(float64 reference, torch in the case's dtype, fastrnn in the case's dtype), same weights:
    torch.nn's own init, rounded to the dtype first so the reference computes the same function."""
    tcls = getattr(torch.nn, CELLS[case.cell])
    kw = dict(bidirectional=case.D == 2)
    if case.proj:
        kw["proj_size"] = case.proj
    base = tcls(case.I, case.H, **kw)
    dtype = DTYPES[case.dtype]
    mt = copy.deepcopy(base).to(device=device, dtype=dtype)
    m64 = copy.deepcopy(mt).to(device="cpu", dtype=torch.float64)
    return m64, mt, _Layer(case.cell, mt, backend_name)


def _inputs(case: Case, device, dtype, gen):
    """x (padded [T, B, I] or a PackedSequence), hx, and the lengths; float64 masters rounded
    to `dtype`, every tensor a leaf requiring grad."""
    T, B = case.T, case.B
    x = torch.randn(T, B, case.I, generator=gen, dtype=torch.float64).to(dtype).double()
    hout = case.proj or case.H
    h0 = torch.randn(case.D, B, hout, generator=gen, dtype=torch.float64).to(dtype).double()
    c0 = torch.randn(case.D, B, case.H, generator=gen, dtype=torch.float64).to(dtype).double()
    lengths = None
    if case.packed:
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        lengths = lengths.sort(descending=True).values
    return x, h0, (c0 if case.cell == "lstm" else None), lengths


def _call(module, x, h0, c0, lengths, dtype, device, grad=True):
    """One forward (and backward of a random probe): returns {name: tensor} for outputs and grads."""
    leaf = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    xs, hs, cs = leaf(x), leaf(h0), leaf(c0)
    inp = xs
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xs, lengths, enforce_sorted=True)
    hx = (hs, cs) if cs is not None else hs
    out, h = module(inp, hx)
    out = out.data if lengths is not None else out
    outs = {"out": out}
    if isinstance(h, tuple):
        outs["hn"], outs["cn"] = h
    else:
        outs["hn"] = h
    if not grad:
        return outs
    return outs, [xs, hs, cs]


def _rel(a, e):
    a, e = a.detach().double().cpu(), e.detach().double().cpu()
    return ((a - e).norm() / e.norm().clamp_min(1e-300)).item()


def run_correctness(case: Case, device, calls=3, seed=0):
    """Returns the JSON row: per call, per tensor, ours and torch's error against float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dtype = DTYPES[case.dtype]
    backend = "triton" if case.backend.startswith("triton") else case.backend
    with _persistent_limit(case.backend):
        m64, mt, mo = _modules(case, device, backend)
        floor = 4 * torch.finfo(dtype).eps
        rows, ok = [], True
        for _ in range(calls):
            x, h0, c0, lengths = _inputs(case, device, dtype, gen)
            results = {}
            probes = None
            for tag, mod, dt, dev in (("ref", m64, torch.float64, "cpu"), ("torch", mt, dtype, device),
                                      ("ours", mo, dtype, device)):
                mod.zero_grad(set_to_none=True)
                outs, leaves = _call(mod, x, h0, c0, lengths, dt, dev)
                if probes is None:
                    probes = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in outs.items()}
                loss = sum((v.double() * probes[k].to(v.device)).sum() for k, v in outs.items())
                live = [t for t in leaves if t is not None]
                grads = torch.autograd.grad(loss, live + list(mod.parameters()))
                names = ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + [f"d{n}" for n, _ in mod.named_parameters()]
                results[tag] = {**outs, **dict(zip(names, grads))}
            call = {}
            for name, e in results["ref"].items():
                ours, theirs = results["ours"][name], results["torch"][name]
                finite = bool(torch.isfinite(ours).all())
                eo, et = _rel(ours, e), _rel(theirs, e)
                passed = finite and ours.dtype == dtype and eo <= max(2 * et, floor)
                ok &= passed
                call[name] = {"ours": eo, "torch": et, "ok": passed}
            rows.append(call)
    worst = max(((n, v["ours"] / max(v["torch"], floor)) for c in rows for n, v in c.items()), key=lambda t: t[1])
    return {"case": case.id, **dataclasses.asdict(case), "ok": ok, "worst": {"tensor": worst[0], "ratio": worst[1]},
            "calls": rows}


@contextlib.contextmanager
def _persistent_limit(backend):
    """triton-step forces the step kernels; anything else leaves the dispatch's own limits."""
    old = os.environ.get("FASTRNN_TRITON_PERSISTENT_MAX_H")
    if backend == "triton-step":
        os.environ["FASTRNN_TRITON_PERSISTENT_MAX_H"] = "0"
    else:
        os.environ.pop("FASTRNN_TRITON_PERSISTENT_MAX_H", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTRNN_TRITON_PERSISTENT_MAX_H", None)
        else:
            os.environ["FASTRNN_TRITON_PERSISTENT_MAX_H"] = old


@contextlib.contextmanager
def _tf32(on: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def flops(case: Case) -> float:
    """Multiply-adds x 2 of the layer: input projection + recurrence (+ projection); fwd+bwd = 3x."""
    G, hout = gates(case.cell), case.proj or case.H
    per_step = 2 * case.B * case.D * (G * case.H * (case.I + hout) + (case.H * case.proj if case.proj else 0))
    return case.T * per_step * (3 if case.grad else 1)


class _Timer:
    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def run_speed(case: Case, device, reps, cuda_ext, profile=True):
    torch.manual_seed(0)
    dtype = DTYPES[case.dtype]
    timer = _Timer(device)
    with _tf32(case.dtype == "tf32"):
        _, mt, mo = _modules(case, device, "triton")
        impls = {"torch": mt, "triton": mo}
        if cuda_ext and case.dtype != "tf32":
            impls["cuda"] = _Layer(case.cell, mt, "cuda")
        x = torch.randn(case.T, case.B, case.I, device=device, dtype=dtype, requires_grad=case.grad)
        gout = torch.randn(case.T, case.B, case.D * (case.proj or case.H), device=device, dtype=dtype)

        def step(m):
            if case.grad:
                out, _ = m(x)
                out.backward(gout)
            else:
                with torch.no_grad():
                    m(x)

        times = {k: [] for k in impls}
        for k, m in impls.items():
            for _ in range(3 if device == "cuda" else 1):  # compile, graph capture, first replay
                step(m)
        if device == "cuda":
            torch.cuda.synchronize()
        for _ in range(reps):      # alternate, so drift hits every implementation alike
            for k, m in impls.items():
                times[k].append(timer(lambda: step(m)))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"case": case.id, **dataclasses.asdict(case), "ms": med,
               "spread_ms": {k: [min(v), max(v)] for k, v in times.items()},
               "tflops": {k: flops(case) / (v * 1e-3) / 1e12 for k, v in med.items()},
               "speedup_vs_torch": {k: med["torch"] / v for k, v in med.items() if k != "torch"}}
        # fwd+bwd rows only: their profile shows the forward's kernels too (one profile, not two)
        row["algo"] = algo_row(case, mt, step, device) if profile and case.grad else None
    return row


def algo_row(case: Case, mt, step, device):
    """torch's rule for this case (forward, and backward when timed with it) and the kernel names
    the profiler saw for one call of torch's module."""
    if device != "cuda":
        rule = {"forward": "n/a (no cuDNN on CPU)"}
        acts = [torch.profiler.ProfilerActivity.CPU]
    else:
        props = torch.cuda.get_device_properties(0)
        args = dict(cell=case.cell, dtype=DTYPES[case.dtype], hidden=case.H, input_size=case.I, proj=case.proj,
                    layers=1, directions=case.D, batch=case.B, steps=case.T, packed=case.packed,
                    capability=(props.major, props.minor), sm_count=props.multi_processor_count)
        rule = {"forward": cudnn_algo(forward=True, **args)}
        if case.grad:
            rule["backward"] = cudnn_algo(forward=False, **args)
        acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step(mt)
        if device == "cuda":
            torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events()
                    if device != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA})
    seen = classify_kernels(names) if device == "cuda" else "cpu"
    confirmed = None
    if device == "cuda":
        want = set(rule.values())
        confirmed = seen in want or (seen == "standard" and "standard" in want)
    return {"rule": rule, "profiler": seen, "confirmed": confirmed, "kernels": names[:40]}


def matmul_peak(device):
    """TFLOP/s of one large torch matmul per precision (median of timed repeats, random data)."""
    n, reps = (8192, 10) if device == "cuda" else (256, 3)
    timer = _Timer(device)
    out = {}
    for name in ("f32", "tf32", "bf16"):
        with _tf32(name == "tf32"):
            dt = DTYPES[name]
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            for _ in range(3):
                a @ b
            ms = statistics.median(timer(lambda: a @ b) for _ in range(reps))
            out[name] = 2 * n ** 3 / (ms * 1e-3) / 1e12
            del a, b
    return {"n": n, "tflops": out}


# ---------------------------------------------------------------------------------------------
# Environment, build, compile counting

def environment(device):
    import triton
    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "torch_cuda": torch.version.cuda, "device": "cpu", "hostname_cpu": platform.processor(),
           "interpret": os.environ.get("TRITON_INTERPRET") == "1"}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1),
                   cudnn=torch.backends.cudnn.version(), nvcc=_nvcc_version())
    return env


def _nvcc_version():
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"release ([\d.]+)", out)
        return m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


def results_path(env) -> Path:
    """benchmarks/results/gpu-<device>.json; interpreter runs (no GPU figure in them) go to the
    ignored build/ folder, away from the results the benchmark report reads."""
    if env["device"] == "cpu":
        return ROOT / "build" / "gpucheck" / "interpret-cpu.json"
    name = "gpu-" + re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")
    return ROOT / "benchmarks" / "results" / f"{name}.json"


def cuda_ext_state():
    """(usable, why): whether fastrnn._cuda_ext is built, for this torch, and newer than its sources."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("fastrnn._cuda_ext")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return False, "not built"
    so = Path(spec.origin)
    sources = [*ROOT.glob("csrc/cuda/*"), *ROOT.glob("csrc/*.h"), *ROOT.glob("csrc/*.cpp"), ROOT / "CMakeLists.txt"]
    newer = [s.name for s in sources if s.exists() and s.stat().st_mtime > so.stat().st_mtime]
    if newer:
        return False, f"stale (older than {', '.join(sorted(newer)[:3])})"
    from fastrnn.build_info import check_extension
    try:
        check_extension("_cuda_ext")
    except Exception as e:  # built for another torch/CUDA
        return False, str(e).splitlines()[0]
    return True, "current"


def start_cuda_build(log_path: Path):
    """Build the CUDA extension in place, in the background, with every core, for this GPU only.
    Returns (Popen or None, reason it was not started)."""
    ok, why = cuda_ext_state()
    if ok:
        return None, "present and current"
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return None, "no CUDA device or CPU-only torch"
    if not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()):
        return None, "nvcc not found"
    if not (ROOT / "setup.py").exists():
        return None, f"no setup.py at {ROOT} (installed package, not a source tree)"
    p = torch.cuda.get_device_properties(0)
    env = dict(os.environ, FASTRNN_BUILD_CUDA="1", MAX_JOBS=str(os.cpu_count() or 1),
               TORCH_CUDA_ARCH_LIST=f"{p.major}.{p.minor}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"building ({why})"


@contextlib.contextmanager
def cpu_triton():
    """The triton backend on CPU tensors with compiled (not interpreted) kernels, for recording
    launches only (`fastrnn.kernels.triton.aot.record_launches`): nothing may run them."""
    from fastrnn import backends
    from fastrnn.backends import triton as tb
    from fastrnn.kernels.triton import rnn
    b = backends.get("triton")
    saved = (dict(b._state), b.check, tb._K, tb._config)
    tb._K = rnn
    tb._register_ops()
    b._state.update(ok=True, why="", impl=tb)
    b.check = lambda call: (True, "")
    orig_config = tb._config

    def config(*a, **k):  # on CUDA, fp32 dots follow torch's TF32 flag; CPU tensors never do
        cfg = orig_config(*a, **k)
        if cfg.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
            cfg = cfg._replace(prec="tf32")
        return cfg

    tb._config = config
    try:
        yield
    finally:
        b._state.clear()
        b._state.update(saved[0])
        b.check, tb._K, tb._config = saved[1], saved[2], saved[3]


def shrink(case: Case) -> Case:
    """The same launches at a few steps, rows and units: a kernel's compile key depends on the
    cell, dtype and TF32 (and, for the persistent kernels, BLOCK_H) only, never on T, B, I or H
    (see the kernels' `_jit`), so H above every persistent limit (64) stands for any step-kernel
    size; tests/test_triton_compile.py checks that claim on full-size cases."""
    H = case.H if case.H <= 64 else 67
    return dataclasses.replace(case, T=min(case.T, 3), B=min(case.B, 3), I=min(case.I, 8), H=H)


def record_plan(cases, do_shrink=True):
    """Run `cases` through the triton backend on CPU with every launch recorded, not run."""
    from fastrnn.kernels.triton import aot
    with aot.record_launches() as rec:
        for case in cases:
            if not case.backend.startswith("triton"):
                continue
            c = shrink(case) if do_shrink else case
            with cpu_triton(), _tf32(c.dtype == "tf32"), _persistent_limit(c.backend):
                _, _, mo = _modules(c, "cpu", "triton")
                x, h0, c0, lengths = _inputs(c, "cpu", DTYPES[c.dtype], torch.Generator().manual_seed(0))
                if c.grad:
                    outs, leaves = _call(mo, x, h0, c0, lengths, DTYPES[c.dtype], "cpu")
                    loss = sum(v.double().sum() for v in outs.values())
                    torch.autograd.grad(loss, [t for t in leaves if t is not None] + list(mo.parameters()))
                else:
                    with torch.no_grad():
                        _call(mo, x, h0, c0, lengths, DTYPES[c.dtype], "cpu", grad=False)
    return rec


def gpu_check_plan(tiny=False, cuda_ext=False):
    return correctness_cases(tiny, cuda_ext) + speed_cases(tiny)


def dispatch_variants():
    """Every kernel variant the triton backend can launch under its default limits: each cell and
    dtype (fp32 with and without TF32, bf16, fp16, fp64), the step kernels (H=67) and, where the
    dtype has them, the persistent ones (H at most the limit), proj_size, with and without grad,
    with and without bias. Returns the `aot.Recorder` of their launches."""
    from fastrnn.backends import triton as tb
    from fastrnn.kernels.triton import aot
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    with aot.record_launches() as rec, cpu_triton():
        for name in ("f32", "tf32", "bf16", "f16", "f64"):
            dtype = DTYPES[name]
            hs = [67] + ([min(20, tb._PERSISTENT_MAX_H[dtype])] if tb._PERSISTENT_MAX_H[dtype] else [])
            combos = [(c, H, 0) for c in cells for H in hs] + [("lstm", 67, 35)]
            for cell, H, proj in combos:
                for grad, bias in ((True, True), (False, True), (True, False)):
                    with _tf32(name == "tf32"):
                        _record_layer(tb, cell, dtype, H, proj, grad, bias)
    return rec


def _record_layer(tb, cell, dtype, H, proj, grad, bias, B=3, I=5, D=2):
    G = gates(cell)
    hout = proj or H
    mk = lambda *s: torch.randn(*s).to(dtype).requires_grad_(grad)  # noqa: E731
    weights = [(mk(G * H, I), mk(G * H, hout), mk(G * H) if bias else None, mk(G * H) if bias else None,
                mk(hout, H) if proj else None) for _ in range(D)]
    sizes = [B, B - 1, 1]  # packed: shrinking batches cover every step-plan branch
    x, h0 = mk(sum(sizes), I), mk(D, B, hout)
    c0 = mk(D, B, H) if cell == "lstm" else None
    bs = torch.tensor(sizes)
    with torch.set_grad_enabled(grad):
        out, hn, cn = tb.rnn_layer(cell, x, bs, h0, c0, weights)
    if grad:
        loss = out.double().sum() + hn.double().sum() + (0 if cn is None else cn.double().sum())
        leaves = [t for t in (x, h0, c0, *[w for ws in weights for w in ws]) if t is not None]
        torch.autograd.grad(loss, leaves)


def count_compiles(cases, do_shrink=True):
    rec = record_plan(cases, do_shrink)
    return len(rec.keys), rec


def triton_compiles_so_far() -> int:
    """Kernels the Triton JIT has compiled in this process (its in-memory caches)."""
    from fastrnn.kernels.triton import aot
    n = 0
    for fn in aot.KERNELS:
        for caches in getattr(fn, "device_caches", {}).values():
            n += len(caches[0])
    return n


# ---------------------------------------------------------------------------------------------
# The run

class Deadline(BaseException):
    """Raised by the alarm at the deadline. A BaseException, so that no `except Exception` on the
    way (the Triton interpreter's, torch's autograd bridge, a case's own) swallows it."""


def _on_alarm(signum, frame):
    raise Deadline()


def _watchdog(seconds):
    """Last resort for a call the alarm cannot interrupt (a hang inside C code): end the process.
    The JSON on disk already holds every case finished before."""
    import threading

    def fire():
        time.sleep(seconds)
        sys.stderr.write(f"fastrnn.gpucheck: still running {seconds:.0f} s after the start; exiting\n")
        os._exit(3)

    threading.Thread(target=fire, daemon=True).start()


class Results:
    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def run(deadline: float, out: Path | None, tiny: bool, sections, reps: int | None):
    t0 = time.monotonic()
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("fastrnn.gpucheck: no CUDA device and TRITON_INTERPRET is not 1: "
                         "run with --interpret (or on a GPU machine)")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, deadline)
    _watchdog(deadline + 30)
    left = lambda: deadline - (time.monotonic() - t0)  # noqa: E731
    env = environment(device)
    path = out or results_path(env)
    res = Results(path, {"schema": "fastrnn-gpucheck/1", "mode": "gpu" if device == "cuda" else "interpret",
                         "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "deadline_s": deadline,
                         "finished": False, "stopped_by_deadline": False, "env": env,
                         "build": {}, "compiles": {"budget": COMPILE_BUDGET}, "peak": None,
                         "correctness": [], "speed": [], "skipped": []})
    res.save()
    build, why = (None, "not needed (no CUDA)") if device == "cpu" else start_cuda_build(ROOT / "build" / "gpucheck-build.log")
    res.data["build"]["cuda_ext"] = {"status": "building" if build else why, "started_s": time.monotonic() - t0}
    cuda_ready = device == "cuda" and cuda_ext_state()[0]
    plan = []
    if "correctness" in sections:
        plan += [("correctness", c) for c in correctness_cases(tiny) if c.backend != "cuda"]
    if "speed" in sections:
        plan += [("speed", c) for c in speed_cases(tiny)]
    try:
        from fastrnn import backends
        ok, why_t = backends.get("triton").availability()
        res.data["env"]["triton_backend"] = "ok" if ok else why_t
        if device == "cuda":  # every Triton compile of the plan at once, in parallel, into Triton's cache
            res.data["compiles"]["precompile"] = precompile(tiny, jobs=max(1, (os.cpu_count() or 2) // 2))
            res.save()
        res.data["peak"] = matmul_peak(device)
        res.save()
        n_speed_reps = reps or (10 if device == "cuda" else 1)
        cuda_done = "correctness" not in sections
        for section, case in plan:
            if left() <= 0:
                raise Deadline()
            if build is not None and build.poll() is not None:   # the build finished meanwhile
                cuda_ready = _finish_build(res, build, t0)
                build = None
            if section == "speed" and not cuda_done and build is None:
                cuda_done = True  # before the speed grid, so that it times the cuda backend too
                _cuda_correctness(res, None, cuda_ready, tiny, left, t0)
            try:
                if section == "correctness":
                    row = run_correctness(case, device)
                else:
                    row = run_speed(case, device, n_speed_reps, cuda_ready)
            except Deadline:
                raise
            except Exception as e:  # a failing case is an answer too
                row = {"case": case.id, **dataclasses.asdict(case), "ok": False,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            row["t_s"] = round(time.monotonic() - t0, 2)
            res.data[section].append(row)
            res.data["compiles"]["triton_jit"] = triton_compiles_so_far()
            res.save()
        if not cuda_done:   # the build outlasted the triton cases: wait for it while time is left
            _cuda_correctness(res, build, cuda_ready, tiny, left, t0)
            build = None
        res.data["finished"] = True
    except Deadline:
        res.data["stopped_by_deadline"] = True
        done = {r["case"] for s in ("correctness", "speed") for r in res.data[s]}
        res.data["skipped"] = [c.id for _, c in plan if c.id not in done]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if build is not None and build.poll() is None:
            build.terminate()
            res.data["build"]["cuda_ext"].update(status="stopped at the deadline")
        res.data["elapsed_s"] = round(time.monotonic() - t0, 2)
        res.data["compiles"]["triton_jit"] = triton_compiles_so_far()
        res.save()
    summary(res.data)
    print(res.path)
    return res


def _precompile_shard(tiny, shard, jobs, capability):
    from triton.backends.compiler import GPUTarget
    from fastrnn.kernels.triton import aot
    launches = list(record_plan(gpu_check_plan(tiny)).keys.values())
    target = GPUTarget("cuda", capability, 32)
    for launch in launches[shard::jobs]:
        aot.compile_launch(launch, target)
    return len(launches[shard::jobs])


def precompile(tiny, jobs) -> dict:
    """Compile every Triton variant the plan launches (recorded on CPU, `record_plan`) in `jobs`
    processes for this GPU, filling Triton's on-disk cache, so the run's JIT finds them there
    instead of compiling them one after another. A failure only costs the time: the JIT compiles."""
    import concurrent.futures
    import multiprocessing
    t = time.monotonic()
    p = torch.cuda.get_device_properties(0)
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            n = sum(ex.map(_precompile_shard, [tiny] * jobs, range(jobs), [jobs] * jobs, [p.major * 10 + p.minor] * jobs))
        return {"variants": n, "jobs": jobs, "seconds": round(time.monotonic() - t, 1)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "seconds": round(time.monotonic() - t, 1)}


def _finish_build(res, build, t0):
    import importlib
    rc = build.wait()
    importlib.invalidate_caches()
    ok, why = cuda_ext_state()
    res.data["build"]["cuda_ext"].update(status="built" if rc == 0 and ok else f"failed (exit {rc}): {why}",
                                         finished_s=round(time.monotonic() - t0, 2))
    if rc:
        log = ROOT / "build" / "gpucheck-build.log"
        res.data["build"]["cuda_ext"]["log_tail"] = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
    res.save()
    if ok:
        from fastrnn import backends
        backends.get("cuda")._state.clear()  # loaded on next use
    return ok


def _cuda_correctness(res, build, cuda_ready, tiny, left, t0):
    """The cuda backend's correctness cases, once its extension is there (waits for the build
    while more than a minute of the deadline is left)."""
    if build is not None:
        try:
            build.wait(timeout=max(1.0, left() - 60))
        except subprocess.TimeoutExpired:
            build.terminate()
            res.data["build"]["cuda_ext"].update(status="skipped: the build did not finish a minute before the deadline")
            res.save()
            return
        cuda_ready = _finish_build(res, build, t0)
    if not cuda_ready:
        return
    for case in [c for c in correctness_cases(tiny, True) if c.backend == "cuda"]:
        try:
            row = run_correctness(case, "cuda")
        except Deadline:
            raise
        except Exception as e:
            row = {"case": case.id, **dataclasses.asdict(case), "ok": False, "error": f"{type(e).__name__}: {e}"}
        row["t_s"] = round(time.monotonic() - t0, 2)
        res.data["correctness"].append(row)
        res.save()


def summary(data):
    print(f"\nfastrnn gpu-check: {data['env'].get('device')}  torch {data['env']['torch']}  "
          f"triton {data['env']['triton']}  ({data['mode']}, {data.get('elapsed_s')} s, "
          f"{'finished' if data['finished'] else 'STOPPED at the deadline' if data['stopped_by_deadline'] else 'incomplete'})")
    b = data["build"].get("cuda_ext", {})
    print(f"cuda extension: {b.get('status')}; triton compiles: {data['compiles'].get('triton_jit')}"
          f" (budget {data['compiles']['budget']})")
    if data.get("peak"):
        print("matmul peak TFLOP/s: " + ", ".join(f"{k} {v:.3g}" for k, v in data["peak"]["tflops"].items()))
    corr = data["correctness"]
    bad = [r for r in corr if not r.get("ok")]
    print(f"correctness: {len(corr) - len(bad)}/{len(corr)} cases pass")
    for r in bad[:15]:
        why = r.get("error") or f"worst {r['worst']['tensor']} at {r['worst']['ratio']:.2f}x torch's error"
        print(f"  FAIL {r['case']}: {why}")
    sp = [r for r in data["speed"] if "ms" in r]
    for r in data["speed"]:
        if "ms" not in r:
            print(f"  speed ERROR {r['case']}: {r.get('error')}")
    if sp:
        grid = sorted({(r["B"], r["H"]) for r in sp})
        print("speed: torch time / triton time (>1: triton faster)" + (", cuda in ()" if any("cuda" in r["ms"] for r in sp) else "")
              + "\n" + f"{'':22s}" + "".join(f"{f'B{b}/H{h}':>12s}" for b, h in grid))
        groups = {}
        for r in sp:
            groups.setdefault((r["cell"], r["dtype"], "fwd+bwd" if r["grad"] else "fwd"), {})[(r["B"], r["H"])] = r
        for (cell, dt, pas), rows in groups.items():
            cells = []
            for bh in grid:
                r = rows.get(bh)
                if r is None:
                    cells.append(f"{'-':>12s}")
                    continue
                x = r["speedup_vs_torch"]
                txt = f"{x['triton']:.2f}" + (f"({x['cuda']:.2f})" if "cuda" in x else "")
                cells.append(f"{txt:>12s}")
            print(f"{cell + ' ' + dt + ' ' + pas:22s}" + "".join(cells))
        best = max(sp, key=lambda r: r["tflops"]["triton"])
        print(f"best triton TFLOP/s: {best['tflops']['triton']:.3g} ({best['case']}); "
              f"torch there {best['tflops']['torch']:.3g}")
        algos = [r["algo"] for r in sp if r.get("algo")]
        if algos:
            conf = sum(a.get("confirmed") is True for a in algos)
            seen = {}
            for a in algos:
                k = "/".join(a["rule"].values()) + " -> " + str(a["profiler"])
                seen[k] = seen.get(k, 0) + 1
            print(f"cuDNN algorithm (rule -> profiler), {conf}/{len(algos)} confirmed: "
                  + "; ".join(f"{k} x{n}" for k, n in sorted(seen.items())))
    if data.get("skipped"):
        print(f"not reached: {len(data['skipped'])} cases")


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastrnn.gpucheck", description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=("run", "fit", "build"),
                    help="run (default); fit: the CUDA dispatch table from results; build: the CUDA "
                         "extension in place if it is missing or stale (every core, this GPU's arch)")
    ap.add_argument("results", nargs="?", help="fit: the results JSON to build the CUDA dispatch table from")
    ap.add_argument("--deadline", type=float, default=300.0, help="hard deadline in seconds (default 300)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/gpu-<device>.json)")
    ap.add_argument("--interpret", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (implied by --interpret)")
    ap.add_argument("--sections", default="correctness,speed")
    ap.add_argument("--reps", type=int, help="timed repeats per speed case (default 10 on GPU)")
    ap.add_argument("--count-compiles", action="store_true",
                    help="CPU: count the Triton compiles this plan asks for (launches recorded, not run)")
    a = ap.parse_args(argv)
    if a.command == "build":
        t = time.monotonic()
        proc, why = start_cuda_build(ROOT / "build" / "gpucheck-build.log")
        if proc is None:
            print(f"fastrnn: CUDA extension not built: {why}")
            return 0
        rc = proc.wait()
        ok, state = cuda_ext_state()
        print(f"fastrnn: CUDA extension build {'done' if rc == 0 and ok else f'FAILED (exit {rc}, {state})'} in "
              f"{time.monotonic() - t:.0f} s; log: build/gpucheck-build.log")
        return 0 if rc == 0 else 1
    if a.command == "fit":
        from fastrnn import gpu_dispatch
        src = Path(a.results) if a.results else None
        print(gpu_dispatch.fit(src))
        return 0
    if a.count_compiles:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise SystemExit("--count-compiles needs the compiled kernels: unset TRITON_INTERPRET")
        n, rec = count_compiles(gpu_check_plan(tiny=a.tiny or a.interpret))
        for name, k in sorted(rec.by_kernel().items()):
            print(f"  {name}: {k}")
        print(f"{n} distinct Triton compiles for {rec.launches} launches (budget {COMPILE_BUDGET})")
        return 0 if n <= COMPILE_BUDGET else 1
    tiny = a.tiny or a.interpret or not torch.cuda.is_available()
    if tiny and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # The interpreter must be on before triton defines the kernels: start again with it set.
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "fastrnn.gpucheck", *(argv if argv is not None else sys.argv[1:])])
    run(a.deadline, a.out, tiny, set(a.sections.split(",")), a.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
