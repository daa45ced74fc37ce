"""Times every implementation of one case side by side, in one process.

For each case: torch's own `nn.LSTM/GRU/RNN` (cuDNN on GPU, ATen on CPU) is the baseline;
every fastrnn backend runs the same network with the same weights (load_state_dict), and
the peers (ONNX Runtime on CPU for inference, flashrnn and haste on GPU) run when they are
importable. After warm-up the implementations are timed in alternation (one call each per
round, in a new random order every round) until every one has `repeats` samples and `min_time`
seconds have passed, so drift in clock speed or background load, and whatever the previous
call left in the caches, hit all of them alike.

Nothing here asserts speed; it records it.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import random
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn.bench.cases import Case, flops, lengths

SCHEMA = 1
TORCH_NN = "torch"          # the baseline's name in results: torch's own module
PEERS = ("onnxruntime", "flashrnn", "haste")
ROOT = Path(fastrnn.__file__).resolve().parent.parent


class Skip(Exception):
    """An implementation that cannot run a case; the message says why."""


def benchmarks_dir() -> Path:
    """`benchmarks/` of the source tree when running from one, else of the working directory."""
    return ROOT / "benchmarks" if (ROOT / "benchmarks").is_dir() else Path.cwd() / "benchmarks"


# ----------------------------------------------------------------------------- environment

def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# What machine this is: shared with the dispatch table, which is keyed by the same hardware id.
from fastrnn.hardware import cpu_cores, cpu_features, cpu_model, cpu_vector_isa, hardware_id, slugify  # noqa: E402,F401


def git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not rev:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> Optional[float]:
    """1-minute load average: above the core count, other work was competing for the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment(device: str) -> dict:
    env = {
        "hardware_id": hardware_id(device),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numba": _version("numba"),
        "onnxruntime": _version("onnxruntime"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "fastrnn": fastrnn.__version__,
        "git_revision": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "available_backends": fastrnn.available_backends(device),
        "loadavg_start": _loadavg(),
    }
    if device == "cuda":
        env["allow_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn": torch.backends.cudnn.allow_tf32}
    if device == "cpu":  # which bf16 path the cpp rows measured (fit: the "<dtype>.native*" keys)
        with contextlib.suppress(Exception):
            from fastrnn.backends import cpp
            cpp.native_dtypes()
            env["cpp_native_bf16"] = cpp.NATIVE_ISA
        if os.environ.get("FASTRNN_ISA"):  # a kernel cap measured on purpose (e.g. vdpbf16ps without AMX)
            env["fastrnn_isa"] = os.environ["FASTRNN_ISA"]
    info = ROOT / "fastrnn" / "build_info.json"
    if info.is_file():
        with contextlib.suppress(ValueError, OSError):
            env["build_info"] = json.loads(info.read_text())
    return env


# ----------------------------------------------------------------------------- timing and memory

def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable, device: str) -> float:
    """Seconds one call of `fn` takes: CUDA events on GPU, perf_counter on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(device: str, dtype=torch.float32, n: int = 2048, reps: int = 5, best: bool = False):
    """This machine's matrix throughput in GFLOP/s: median of `reps` n^3 torch.mm calls; with
    `best`, the pair (median, fastest call): the roofline bounds with the fastest, since load
    from other processes only ever slows a call (the median measured under load let cases
    reach 130% of their "peak")."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    _sync(device)
    ts = sorted(time_call(lambda: torch.mm(a, b, out=out), device) for _ in range(reps))
    median = 2.0 * n ** 3 / ts[len(ts) // 2] / 1e9
    return (median, 2.0 * n ** 3 / ts[0] / 1e9) if best else median


def cache_rate(nbytes: int, device: str = "cpu", reps: int = 30) -> float:
    """GB/s at which torch's threads read a layer's recurrent weights of `nbytes` that already sit
    in their caches: the small-batch bound's rate (at B <= 4 a step reads W_hh once and does ~2B
    flops per element read, so it streams weights rather than computing).

    CPU: each of the T = torch.get_num_threads() threads reads its own nbytes/T share from its own
    L2, so the rate is T x the rate of one thread reading nbytes/T, measured with torch at one
    thread (restored after): the faster of `torch.mv` (the step's own product) and `torch.sum` (a
    plain read), the fastest of `reps` calls each. Measured per thread because a T-thread call
    times the OpenMP barrier, not the reads, once other processes share the cores: at load 6 on 2
    cores every 2-thread mv of 1 MiB took 8-16 ms instead of ~15 us (a preempted thread waited
    out a scheduler slice). The fastest call, not the median: a bound is what the machine can do,
    and load only slows a call. One op's overhead (~1.5 us) is included, which makes the bound
    loose below ~256 KiB. CUDA: one torch.mv over the whole matrix."""
    threads = torch.get_num_threads() if device == "cpu" else 1
    share = max(4096, nbytes // threads)
    cols = max(16, int((share / 4) ** 0.5) // 16 * 16)
    rows = max(1, share // (4 * cols))
    w = torch.randn(rows, cols, device=device)
    v = torch.randn(cols, device=device)
    out = torch.empty(rows, device=device)
    fns = [lambda: torch.mv(w, v, out=out)] + ([lambda: torch.sum(w)] if device == "cpu" else [])
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        best = []
        for fn in fns:
            for _ in range(3):
                fn()
            _sync(device)
            best.append(min(time_call(fn, device) for _ in range(reps)))
    finally:
        if device == "cpu":
            torch.set_num_threads(threads)
    return threads * rows * cols * 4 / min(best) / 1e9


def roofline(case: Case, peak_gflops: Optional[float], rate_gbs: Optional[float]) -> dict:
    """The case's time bound: T * max(step flops / matrix peak, step weight bytes / cache rate);
    a training step counts the backward as 2x the forward's flops (as `flops` does) and reads the
    recurrent weights a second time (the reverse loop)."""
    from fastrnn.bench.cases import step_weight_bytes
    if not peak_gflops or not rate_gbs:
        return {}
    f = flops(case)
    t_compute = f / (peak_gflops * 1e9)
    t_cache = case.T * step_weight_bytes(case) * (2 if case.mode == "fwdbwd" else 1) / (rate_gbs * 1e9)
    return {"bound_s": max(t_compute, t_cache), "bound_by": "compute" if t_compute >= t_cache else "cache",
            "compute_bound_s": t_compute, "cache_bound_s": t_cache}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim():
    """Hand freed heap pages back to the OS (glibc), so that what the next call allocates
    shows up as resident-set growth instead of reusing pages already resident."""
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable, device: str) -> Optional[int]:
    """Bytes one call needs above what was allocated before it.

    CUDA: max_memory_allocated. CPU: growth of the resident set: the high-water mark
    (VmHWM, reset through /proc/self/clear_refs) when the kernel allows the reset, else
    the RSS after the call (statm), which misses memory freed before the call returns.
    Memory a library keeps in its own pool across calls (ONNX Runtime's arena) is resident
    already and not seen here; such implementations are measured on their first call."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    try:
        _malloc_trim()
        base = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            can_reset = True
        except OSError:
            can_reset = False
        fn()
        peak = _hwm_bytes() if can_reset else None
        return max(0, (peak if peak is not None else _rss_bytes()) - base)
    except OSError:
        return None


# ----------------------------------------------------------------------------- implementations

_TORCH_CLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_FASTRNN_CLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


class Setup:
    """What every implementation of a case shares: the torch module (its weights are the
    weights) and the input, padded [T, B, I] and, for packed cases, the PackedSequence."""

    def __init__(self, case: Case, device: str, seed: int = 0):
        self.case, self.device = case, device
        dt = case.torch_dtype
        torch.manual_seed(seed)
        self.kwargs = dict(input_size=case.input_size, hidden_size=case.H, num_layers=case.layers,
                           bidirectional=case.bidir)
        if case.proj:
            self.kwargs["proj_size"] = case.proj
        self.module = _TORCH_CLS[case.cell](**self.kwargs).to(device=device, dtype=dt)
        x = torch.randn(case.T, case.B, case.input_size, device=device, dtype=dt)
        self.lengths = lengths(case)
        self.packed = None
        if self.lengths is not None:
            steps = torch.arange(case.T, device=device).unsqueeze(1)
            x = x * (steps < torch.tensor(self.lengths, device=device)).unsqueeze(2).to(dt)  # zero padding
            self.packed = pack_padded_sequence(x, torch.tensor(self.lengths), enforce_sorted=case.packed == "sorted")
        self.x = x

    def twin(self, backend: str) -> nn.Module:
        m = getattr(fastrnn, _FASTRNN_CLS[self.case.cell])(**self.kwargs, backend=backend)
        m = m.to(device=self.device, dtype=self.case.torch_dtype)
        m.load_state_dict(self.module.state_dict())
        return m

    def input(self, padded: bool = False):
        """A fresh input (its own leaf for fwdbwd) and that leaf."""
        grad = self.case.mode == "fwdbwd"
        if self.packed is None or padded:
            x = self.x.detach().clone().requires_grad_(grad)
            return x, x
        p = self.packed
        data = p.data.detach().clone().requires_grad_(grad)
        return PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices), data


@dataclass
class Impl:
    name: str
    step: Callable[[], torch.Tensor]            # one timed call; returns the output (tensor or packed data)
    grads: Optional[Callable[[], list]] = None  # after a step: grads of input and parameters
    note: str = ""
    info: dict = field(default_factory=dict)


def _data(out):
    return out.data if isinstance(out, PackedSequence) else out


def _autocast_ctx(case: Case, device: str):
    """torch.autocast for an `autocast` case (forward only, as torch recommends), else nothing."""
    if case.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=case.autocast)


def module_impl(name: str, module: nn.Module, setup: Setup, padded: bool = False) -> Impl:
    inp, leaf = setup.input(padded)
    params = list(module.parameters())
    case, dev = setup.case, setup.device
    if case.mode == "fwd":
        def step():
            with torch.no_grad(), _autocast_ctx(case, dev):
                return _data(module(inp)[0])
        return Impl(name, step)

    def step():
        for p in params:                        # optimizer.zero_grad(set_to_none=True)
            p.grad = None
        leaf.grad = None
        with _autocast_ctx(case, dev):
            out = _data(module(inp)[0])
        out.float().sum().backward()
        return out

    return Impl(name, step, grads=lambda: [leaf.grad] + [p.grad for p in params])


@contextlib.contextmanager
def _quiet():
    """Silence fds 1 and 2: the TorchScript exporter prints graphs from C++ on failure."""
    import sys
    for s in (sys.stdout, sys.stderr):
        s.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def onnx_impl(setup: Setup) -> Impl:
    case = setup.case
    if setup.device != "cpu":
        raise Skip("timed on CPU only")
    if case.mode != "fwd":
        raise Skip("inference only")
    if case.packed:
        raise Skip("a PackedSequence cannot be exported to ONNX")
    if case.dtype != "f32":
        raise Skip("float32 only")
    if case.proj:
        raise Skip("torch.onnx cannot export an LSTM with proj_size")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip(f"onnxruntime not importable ({e})") from None
    import warnings
    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(setup.module, (setup.x,), path, dynamo=False, input_names=["x"],
                              output_names=["out"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        # Its workers would otherwise spin between runs and steal the cores from the next
        # implementation in the alternation.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise Skip(f"export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}") from None
    finally:
        os.unlink(path)
    x_np = setup.x.detach().numpy()
    T, B = case.T, case.B

    def step():
        return torch.from_numpy(sess.run(["out"], {"x": x_np})[0]).reshape(T, B, -1)

    return Impl("onnxruntime", step, note="exported with torch.onnx.export(dynamo=False)",
                info={"pooled_memory": True})


def _peer_shape_check(setup: Setup, what: str):
    case = setup.case
    if setup.device != "cuda":
        raise Skip(f"{what} runs on CUDA only")
    if case.cell == "rnn" or case.layers != 1 or case.bidir or case.proj or case.packed:
        raise Skip(f"{what} is timed for single-layer unidirectional LSTM/GRU on padded input only")


def haste_impl(setup: Setup) -> Impl:
    _peer_shape_check(setup, "haste")
    try:
        import haste_pytorch as haste
    except ImportError as e:
        raise Skip(f"haste_pytorch not importable ({e})") from None
    case, m = setup.case, setup.module
    mod = (haste.LSTM if case.cell == "lstm" else haste.GRU)(case.input_size, case.H)
    mod = mod.to(device=setup.device, dtype=case.torch_dtype)
    note = ""
    try:
        mod.from_native_weights(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    except Exception as e:  # its own weights: speed is still comparable, the error is not
        note = f"own weights (from_native_weights failed: {type(e).__name__})"
    impl = module_impl("haste", mod, setup)
    impl.note = note
    if note:
        impl.info["no_error_check"] = True
    return impl


def flashrnn_impl(setup: Setup) -> Impl:
    """flashrnn takes the input projection precomputed (Wx) and its own weight layout; it is
    timed with the input projection done by a torch GEMM and random weights (speed only)."""
    _peer_shape_check(setup, "flashrnn")
    try:
        from flashrnn import flashrnn
    except ImportError as e:
        raise Skip(f"flashrnn not importable ({e})") from None
    case, dev, dt = setup.case, setup.device, setup.case.torch_dtype
    G = 4 if case.cell == "lstm" else 3
    T, B, H = case.T, case.B, case.H
    grad = case.mode == "fwdbwd"
    w_ih = setup.module.weight_ih_l0.detach().clone().requires_grad_(grad)
    R = (torch.randn(G, 1, H, H, device=dev, dtype=dt) / H ** 0.5).requires_grad_(grad)
    b = torch.zeros(G, 1, H, device=dev, dtype=dt, requires_grad=grad)
    x = setup.x.detach().clone().requires_grad_(grad)
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dt]

    def fwd():
        wx = (x.reshape(T * B, -1) @ w_ih.t()).view(T, B, G, 1, H).transpose(0, 1)
        h, _ = flashrnn(wx, R, b, function=case.cell, backend="cuda_fused", dtype=dtype_name)
        return h

    if not grad:
        def step():
            with torch.no_grad():
                return fwd()
        impl = Impl("flashrnn", step)
    else:
        def step():
            for t in (w_ih, R, b, x):
                t.grad = None
            out = fwd()
            out.sum().backward()
            return out
        impl = Impl("flashrnn", step)
    impl.note = "own weight layout: speed only, no error check"
    impl.info["no_error_check"] = True
    return impl


# cpp with its float32 input projection forced into the panel loop's steps or before the loop, the
# backward's dx into its steps or after it, and the BLAS loop instead of the panel loop
# (FASTRNN_INPUT_GEMM, FASTRNN_BACKWARD_INPUT_GEMM, FASTRNN_STEP_GEMM, read per call): `--plans`
# times them for the fit of csrc/loop_plan.h's limits.
INPUT_PLANS = {"cpp:input=step": {"FASTRNN_INPUT_GEMM": "step"},
               "cpp:input=before": {"FASTRNN_INPUT_GEMM": "before"},
               "cpp:input=step/before": {"FASTRNN_INPUT_GEMM": "step", "FASTRNN_BACKWARD_INPUT_GEMM": "before"},
               "cpp:loop=blas": {"FASTRNN_STEP_GEMM": "blas"}}


def _input_plan_impl(name: str, setup: Setup, padded: bool) -> Impl:
    from fastrnn import backends
    ok, why = backends.get("cpp").availability()
    if not ok:
        raise Skip(why)
    env = INPUT_PLANS[name]
    if "FASTRNN_BACKWARD_INPUT_GEMM" in env and setup.case.mode == "fwd":
        raise Skip("forward only: no backward to plan")
    impl = module_impl(name, setup.twin("cpp"), setup, padded)
    inner = impl.step

    def step():
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return inner()
        finally:
            for k, v in old.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v

    impl.step = step
    return impl


def build(name: str, setup: Setup, padded: bool = False) -> Impl:
    """The implementation `name` of `setup.case`, or Skip saying why not."""
    if name == TORCH_NN:
        impl = module_impl(name, setup.module, setup, padded)
    elif name == "onnxruntime":
        impl = onnx_impl(setup)
    elif name == "haste":
        impl = haste_impl(setup)
    elif name == "flashrnn":
        impl = flashrnn_impl(setup)
    elif name == "auto":  # what users get: each layer call goes to the backend auto picks
        impl = module_impl(name, setup.twin(name), setup, padded)
    elif name in INPUT_PLANS:
        impl = _input_plan_impl(name, setup, padded)
    else:
        from fastrnn import backends
        ok, why = backends.get(name).availability()
        if not ok:
            raise Skip(why)
        impl = module_impl(name, setup.twin(name), setup, padded)
    if padded:
        impl.name += "@padded"
    return impl


def default_backends(device: str) -> list[str]:
    """`auto` (what users get), then fastrnn's backends this install can run on `device`,
    minus the baseline and the Python-loop oracle (and Triton's CPU interpreter), then the
    peers for the device."""
    names = [b for b in fastrnn.available_backends(device)
             if b not in ("reference", "torch") and not (device == "cpu" and b == "triton")]
    return ["auto"] + names + (["onnxruntime"] if device == "cpu" else ["flashrnn", "haste"])


# ----------------------------------------------------------------------------- one case

def _max_abs_err(a, b) -> Optional[float]:
    if a is None or b is None:
        return None
    if a.shape != b.shape:
        return float("nan")
    return float((a.detach().double() - b.detach().double().to(a.device)).abs().max()) if a.numel() else 0.0


def cudnn_kernels(fn: Callable) -> dict:
    """Which cuDNN RNN algorithm torch used for `fn`, from the CUDA kernel names the profiler
    sees: persistent kernels carry "persist" in their names; otherwise it is the standard one."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, "device_time_total", 0.0))
    names = [e.key for e in events]
    rnn = [n for n in names if re.search(r"rnn|lstm|gru|persist|elemwise|elementwise", n, re.I)]
    algo = "persistent" if any(re.search("persist", n, re.I) for n in names) else (
        "standard" if rnn else "unknown")
    return {"algo": algo, "kernels": names[:8]}


def _quantiles(xs: list) -> dict:
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(round(p * (len(s) - 1))))]  # noqa: E731
    return {"median_s": q(0.5), "q1_s": q(0.25), "q3_s": q(0.75), "min_s": s[0], "max_s": s[-1], "n": len(s)}


def _prepare(impl: Impl, device: str, warmup: int, ref: dict) -> dict:
    """Warms `impl` up and returns its record so far: first-call time, peak memory and, for
    all but torch's module (which fills `ref`), the error against torch's output and grads."""
    first = []
    first_call = lambda: first.append(time_call(impl.step, device))  # noqa: E731
    _sync(device)
    mem = peak_memory(first_call, device) if impl.info.get("pooled_memory") else first_call()
    for _ in range(max(0, warmup - 1)):
        impl.step()
    r = {"first_call_s": first[0]}
    out = impl.step()
    if impl.name == TORCH_NN:
        ref["out"] = out.detach()
        ref["grads"] = [None if g is None else g.detach().clone() for g in impl.grads()] if impl.grads else None
    elif not impl.info.get("no_error_check") and "@" not in impl.name:
        r["max_abs_err"] = _max_abs_err(out, ref.get("out"))
        if impl.grads and ref.get("grads"):
            pairs = [(a, b) for a, b in zip(impl.grads(), ref["grads"]) if a is not None and b is not None]
            if pairs:
                r["max_abs_err_grad"] = max(_max_abs_err(a, b) for a, b in pairs)
                # Weight grads sum over T*B rows: relative to the largest grad element reads better.
                r["max_rel_err_grad"] = max(_max_abs_err(a, b) / max(float(b.abs().max()), 1e-30)
                                            for a, b in pairs)
    del out
    r["peak_mem_bytes"] = mem if impl.info.get("pooled_memory") else peak_memory(impl.step, device)
    if impl.note:
        r["note"] = impl.note
    return r


def _peak_key(case: Case) -> str:
    """The matrix-peak entry a case is measured against: the dtype it computes in."""
    from fastrnn.bench.cases import DTYPES
    return next(k for k, v in DTYPES.items() if v == case.compute_dtype and k not in ("autocast",))


def run_case(case: Case, device: str, names: list[str], repeats: int = 5, min_time: float = 1.0,
             warmup: int = 2, peaks: Optional[dict] = None, log: Callable[[str], None] = print,
             rates: Optional[dict] = None, best_peaks: Optional[dict] = None) -> dict:
    """Times torch's module and each of `names` on `case`; returns the case's result record.
    `rates`: {str(bytes): GB/s} from `cache_rate` (env["cache_rate_gbs"]) and `best_peaks`
    (env["matmul_best_gflops"], else `peaks`) for the roofline."""
    setup = Setup(case, device)
    impls, skipped = [], {}
    for name in [TORCH_NN] + [n for n in names if n != TORCH_NN]:
        try:
            impls.append(build(name, setup))
            if case.packed and name not in PEERS:
                impls.append(build(name, setup, padded=True))
        except Skip as e:
            skipped[name] = str(e)
        except Exception as e:  # a backend that breaks on a case is recorded, not fatal
            skipped[name] = f"{type(e).__name__}: {e}"

    # Warm-up, the first call's time, errors against torch, peak memory.
    rec, ref = {}, {}
    for impl in list(impls):
        try:
            rec[impl.name] = _prepare(impl, device, warmup, ref)
        except Exception as e:
            impls.remove(impl)
            skipped[impl.name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            log(f"  {case.id}: {impl.name} failed: {skipped[impl.name]}")
    ref.clear()

    cudnn = None
    if device == "cuda" and impls and impls[0].name == TORCH_NN:
        with contextlib.suppress(Exception):
            cudnn = cudnn_kernels(impls[0].step)

    # Alternating timed rounds, each in a fresh random order (seeded by the case): a fixed cycle
    # gave each implementation the same predecessor every round, and the one that always ran
    # right after torch (auto) measured a few percent slower than the same code run after it
    # (rnn B1 H256 fwd+bwd: auto x4.70, cpp x5.74; the order swapped, x5.69 / x5.68).
    samples = {i.name: [] for i in impls}
    order_rng = random.Random(case.id)
    t0, rnd = time.perf_counter(), 0
    while impls:
        for impl in order_rng.sample(impls, len(impls)):
            samples[impl.name].append(time_call(impl.step, device))
        rnd += 1
        if rnd >= repeats and time.perf_counter() - t0 >= min_time:
            break

    f = flops(case)
    peak = (peaks or {}).get(_peak_key(case))
    from fastrnn.bench.cases import layer_weight_bytes
    bound = roofline(case, (best_peaks or peaks or {}).get(_peak_key(case)),
                     (rates or {}).get(str(layer_weight_bytes(case))))
    base = None
    if TORCH_NN in samples:
        base = _quantiles(samples[TORCH_NN])["median_s"]
    for name, ts in samples.items():
        r = rec[name]
        r.update(_quantiles(ts))
        r["gflops"] = f / r["median_s"] / 1e9
        r["peak_frac"] = r["gflops"] / peak if peak else None
        r["speedup"] = base / r["median_s"] if base else None
        if bound:
            r["bound_frac"] = bound["bound_s"] / r["median_s"]  # achieved / bound: 1.0 is at the bound
    results = {n: r for n, r in rec.items() if "@" not in n}
    for name, r in rec.items():
        if name.endswith("@padded"):
            own = results.get(name[:-len("@padded")])
            if own is not None:
                own["padded_median_s"] = r["median_s"]
                own["packed_vs_padded"] = own["median_s"] / r["median_s"]
    out = case.as_dict()
    out.update(flops=f, results=results, skipped=skipped, rounds=rnd)
    out.update(bound)
    plans = cpp_plans(case) if device == "cpu" else None
    if plans:
        out["cpp_plans"] = plans
    if setup.lengths is not None:
        out["lengths"] = {"min": min(setup.lengths), "max": max(setup.lengths),
                          "mean": sum(setup.lengths) / len(setup.lengths)}
    if cudnn is not None:
        out["cudnn"] = cudnn
    return out


def cpp_plans(case: Case) -> Optional[list]:
    """The time loop the cpp extension runs for each layer of the case ("panel+step", "panel",
    "blas"): `python -m fastrnn.bench fit` reads it, so a fit depends on the results file only."""
    try:
        from fastrnn import _ext
    except ImportError:
        return None
    from fastrnn.cells import gates
    G = gates("rnn_tanh" if case.cell == "rnn" else case.cell)
    sizes = [case.input_size] + [case.H * (2 if case.bidir else 1)] * (case.layers - 1)
    return [_ext.loop_plan(proj=bool(case.proj), batch=case.B, steps=case.T, input_size=i, hidden=case.H, gates=G)
            for i in sizes]


def backend_load_times() -> dict:
    """Seconds each fastrnn backend takes to load (import, extension load, eager JIT); None
    for one that is not available. Only meaningful before anything has loaded them."""
    from fastrnn import backends
    out = {}
    for name in backends.names():
        t0 = time.perf_counter()
        ok, _ = backends.get(name).availability()
        out[name] = time.perf_counter() - t0 if ok else None
    return out


def first_calls(device: str, names: list[str], cells=("lstm", "gru", "rnn")) -> dict:
    """Seconds of each fastrnn backend's first call in this process (numba's compile time,
    Triton's JIT, the extension's load), per cell, on a tiny training step."""
    out = {}
    for name in names:
        if name in PEERS:
            continue
        for cell in cells:
            setup = Setup(Case(cell, T=5, B=2, H=8, mode="fwdbwd"), device)
            try:
                impl = build(name, setup)
                _sync(device)
                out.setdefault(name, {})[cell] = time_call(impl.step, device)
            except Exception as e:
                out.setdefault(name, {})[cell] = f"{type(e).__name__}: {str(e)[:120]}"
    return out


# ----------------------------------------------------------------------------- a whole run

def run(cases: list[Case], device: str = "cpu", backends: Optional[list[str]] = None, repeats: int = 5,
        min_time: float = 1.0, warmup: int = 2, peak_n: Optional[int] = None, progress: bool = True,
        settings: Optional[dict] = None) -> dict:
    """Runs `cases` and returns the results document (environment, settings, case records)."""
    import warnings
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    load_s = backend_load_times()  # first: nothing may have loaded the backends before
    names = default_backends(device) if backends is None else list(backends)
    env = environment(device)
    env["backend_load_s"] = load_s
    env["first_call_s"] = first_calls(device, names, sorted({c.cell for c in cases}))
    n = peak_n or (4096 if device == "cuda" else 2048)
    dts = sorted({_peak_key(c) for c in cases} | {"f32"})
    from fastrnn.bench.cases import DTYPES
    peaks = {dt: matmul_peak(device, DTYPES[dt], n, best=True) for dt in dts}
    env["matmul_peak_gflops"] = {dt: p[0] for dt, p in peaks.items()}   # median: peak_frac, as before
    env["matmul_best_gflops"] = {dt: p[1] for dt, p in peaks.items()}   # fastest call: the roofline
    env["matmul_peak_size"] = n
    from fastrnn.bench.cases import layer_weight_bytes
    env["cache_rate_gbs"] = {str(b): cache_rate(b, device) for b in sorted({layer_weight_bytes(c) for c in cases})}

    bar = None
    log = print
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(cases, unit="case", dynamic_ncols=True)
            log = tqdm.write
        except ImportError:
            pass
    records = []
    t0 = time.perf_counter()
    for case in (bar if bar is not None else cases):
        if bar is not None:
            bar.set_postfix_str(case.id)
        try:
            records.append(run_case(case, device, names, repeats, min_time, warmup,
                                    env["matmul_peak_gflops"], log, env["cache_rate_gbs"],
                                    env["matmul_best_gflops"]))
        except Exception as e:  # e.g. out of memory building the inputs: the run goes on
            log(f"  {case.id}: failed: {type(e).__name__}: {e}")
            records.append(dict(case.as_dict(), flops=flops(case), results={},
                                skipped={TORCH_NN: f"{type(e).__name__}: {str(e)[:200]}"}))
        if device == "cuda":
            torch.cuda.empty_cache()
    if bar is not None:
        bar.close()
    env["loadavg_end"] = _loadavg()
    return {
        "schema": SCHEMA,
        "hardware_id": env["hardware_id"],
        "env": env,
        "settings": dict(settings or {}, device=device, backends=names, repeats=repeats, min_time=min_time,
                         warmup=warmup, wall_s=time.perf_counter() - t0),
        "cases": records,
    }


def save(doc: dict, path: Optional[Path] = None) -> Path:
    path = Path(path) if path else benchmarks_dir() / "results" / f"{doc['hardware_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


# ----------------------------------------------------------------------------- streaming (one frame per call)

STREAM_IMPLS = (TORCH_NN, "auto", "stream", "onnxruntime")
STREAM_SCHEMA = 1


def _stream_onnx(module: nn.Module, case: Case, x1: torch.Tensor, hx):
    """ONNX Runtime session of the one-step model (x [1, B, I], h0 (, c0)) -> (y, hn (, cn))."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip(f"onnxruntime not importable ({e})") from None
    import warnings
    lstm = case.cell == "lstm"
    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x1, hx), path, dynamo=False,
                              input_names=["x", "h0", "c0"] if lstm else ["x", "h0"],
                              output_names=["y", "hn", "cn"] if lstm else ["y", "hn"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as in onnx_impl
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise Skip(f"export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}") from None
    finally:
        os.unlink(path)


def stream_impls(case: Case, names=STREAM_IMPLS) -> tuple[dict, dict, dict]:
    """({name: (reset, step)}, {name: why skipped}, {name: note}) for one streaming case: each
    step() feeds the next frame of a fixed 16-frame sequence and returns the output frame [B, H];
    reset() sets the state to zeros and rewinds the frames. All share torch's module's weights."""
    from fastrnn.stream import Stream
    torch.manual_seed(0)
    dt = case.torch_dtype
    B, I, H = case.B, case.input_size, case.H
    kw = dict(input_size=I, hidden_size=H)
    module = _TORCH_CLS[case.cell](**kw).to(dt).eval()
    frames = torch.randn(16, B, I, dtype=dt)
    lstm = case.cell == "lstm"
    zeros = lambda: torch.zeros(1, B, H, dtype=dt)  # noqa: E731
    impls, skipped, notes = {}, {}, {}

    def module_stepper(m):
        st = {"t": 0, "hx": None}
        xs = [frames[t:t + 1] for t in range(16)]   # [1, B, I] views made once

        def reset():
            st["t"], st["hx"] = 0, ((zeros(), zeros()) if lstm else zeros())

        def step():
            t = st["t"]
            y, st["hx"] = m(xs[t], st["hx"])
            st["t"] = (t + 1) & 15
            return y[0]
        reset()
        return reset, step

    for name in names:
        try:
            if name == TORCH_NN:
                impls[name] = module_stepper(module)
                notes[name] = "module(x[1, B, I], hx) with the state carried"
            elif name == "auto" or name in fastrnn.available_backends("cpu"):
                m = getattr(fastrnn, _FASTRNN_CLS[case.cell])(**kw, backend=name).to(dt).eval()
                m.load_state_dict(module.state_dict())
                impls[name] = module_stepper(m)
                notes[name] = "fastrnn module(x[1, B, I], hx) with the state carried"
            elif name == "stream":
                s = Stream(module, batch_size=B)
                xs = [frames[t] for t in range(16)]
                st = {"t": 0}

                def reset(s=s, st=st):
                    s.reset()
                    st["t"] = 0

                def step(s=s, st=st, xs=xs):
                    t = st["t"]
                    st["t"] = (t + 1) & 15
                    return s.step(xs[t])
                impls[name] = (reset, step)
                notes[name] = "fastrnn.Stream(module).step(x[B, I])"
            elif name == "onnxruntime":
                if dt != torch.float32:
                    raise Skip("float32 only")
                hx0 = (zeros(), zeros()) if lstm else zeros()
                sess = _stream_onnx(module, case, frames[:1], hx0)
                xs = [frames[t:t + 1].numpy() for t in range(16)]
                st = {"t": 0}
                feeds = ["x", "h0", "c0"] if lstm else ["x", "h0"]

                def reset(st=st, lstm=lstm):
                    st["t"] = 0
                    st["state"] = [zeros().numpy(), zeros().numpy()][:2 if lstm else 1]

                def step(st=st, sess=sess, xs=xs, feeds=feeds):
                    t = st["t"]
                    st["t"] = (t + 1) & 15
                    out = sess.run(None, dict(zip(feeds, [xs[t]] + st["state"])))
                    st["state"] = out[1:]
                    return torch.from_numpy(out[0][0])
                reset()
                impls[name] = (reset, step)
                notes[name] = "InferenceSession.run on numpy, the state fed back (torch.onnx.export, dynamo=False)"
            else:
                raise Skip("not a streaming implementation")
        except Skip as e:
            skipped[name] = str(e)
        except Exception as e:  # recorded, not fatal
            skipped[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    return impls, skipped, notes


def run_stream_case(case: Case, names=STREAM_IMPLS, steps: int = 20, rounds: int = 200,
                    min_time: float = 1.0) -> dict:
    """Per-step seconds of each streaming implementation of `case`, timed side by side.

    Each round times a block of `steps` consecutive steps of every implementation, in a new random
    order every round; a sample is the block's time / steps. Before timing, each runs the 16
    frames from zero state and its outputs are compared with torch's module over the whole
    sequence (max_abs_err)."""
    impls, skipped, notes = stream_impls(case, names)
    rec = {}
    with torch.inference_mode():
        ref = None
        if TORCH_NN in impls:
            reset, step = impls[TORCH_NN]
            reset()
            ref = torch.stack([step() for _ in range(16)])
        for name, (reset, step) in list(impls.items()):
            try:
                reset()
                got = torch.stack([step() for _ in range(16)])
                rec[name] = {"max_abs_err": _max_abs_err(got, ref) if name != TORCH_NN else 0.0,
                             "note": notes.get(name, "")}
                for _ in range(50):  # warm-up: JIT, allocator, ORT's arena
                    step()
            except Exception as e:
                del impls[name]
                skipped[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        samples = {n: [] for n in impls}
        order_rng = random.Random(case.id)
        pc = time.perf_counter
        t0, rnd = pc(), 0
        while impls:
            for name in order_rng.sample(list(impls), len(impls)):
                step = impls[name][1]
                a = pc()
                for _ in range(steps):
                    step()
                samples[name].append((pc() - a) / steps)
            rnd += 1
            if rnd >= rounds and pc() - t0 >= min_time:
                break
    base = _quantiles(samples[TORCH_NN])["median_s"] if samples.get(TORCH_NN) else None
    for name, ts in samples.items():
        r = rec[name]
        r.update(_quantiles(ts))
        r["speedup"] = base / r["median_s"] if base else None
    out = case.as_dict()
    out.update(flops=flops(case), results=rec, skipped=skipped, rounds=rnd, steps_per_sample=steps)
    return out


def run_stream(cases: list[Case], names=STREAM_IMPLS, steps: int = 20, rounds: int = 200, min_time: float = 1.0,
               progress: bool = True, settings: Optional[dict] = None) -> dict:
    """The streaming results document: environment, settings and one record per case."""
    env = environment("cpu")
    t0 = time.perf_counter()
    records = []
    for case in cases:
        if progress:
            print(f"  {case.id} ...", flush=True)
        records.append(run_stream_case(case, names, steps, rounds, min_time))
    env["loadavg_end"] = _loadavg()
    return {"schema": STREAM_SCHEMA, "kind": "stream", "hardware_id": env["hardware_id"], "env": env,
            "settings": dict(settings or {}, impls=list(names), steps_per_sample=steps, rounds=rounds,
                             min_time=min_time, wall_s=time.perf_counter() - t0),
            "cases": records}


def save_stream(doc: dict, path: Optional[Path] = None) -> Path:
    """benchmarks/results/stream/<hardware-id>.json (beside the grid's file, which it leaves alone)."""
    return save(doc, Path(path) if path else benchmarks_dir() / "results" / "stream" / f"{doc['hardware_id']}.json")
