"""The benchmark grid: one fixed, named list of cases shared by the runner and pytest-benchmark.

A case is one shape of one network call, timed as inference (`fwd`: forward under
`torch.no_grad()`) or as a training step (`fwdbwd`: forward, then `out.sum().backward()`
into the input and every parameter). Ids read like `lstm-T100-B64-H512-L1-fwd-f32`.

The grid is a set of one-parameter sweeps around a centre (T=100, H=256/512) rather than a
full cartesian product, so each plot (speedup vs batch, vs hidden size, vs length, vs
depth) has its own line of cases and the whole grid stays runnable on a small CPU:

    batch    T=100, H=256, B in 1, 4, 16, 64, 256          latency and throughput
    hidden   T=100, B in 4, 16, 64, H in 128 .. 1024 (2048 GPU)
    length   B=16, H=256, T in 50, 100, 500, 1000
    depth    T=100, B=16, H=256, L in 1, 2, 4, uni- and bidirectional
    packed   T=100, H=256, B in 16, 64, lengths uniform in [T/4, T], sorted and unsorted
    proj     LSTM with proj_size (H=512, P=128; H=1024, P=256)
    input    I != H (I=128, H=512, B=64)
    short    T in 1, 5, 20: one step (B=1, H=64), the tutorial's own models (B=3, I=10, H=20),
             a wide layer (B=16, H=1024); where per-call costs and weight packing dominate
    half     T=100, B in 1, 16, 64, H in 128, 256, 512: bf16 and fp16 (module and input in
             that dtype); `autocast` (a float32 module called under torch.autocast, bf16,
             the CPU default) at B1 H256, B16 H256, B64 H512

for LSTM, GRU and RNN (tanh), fwd and fwdbwd, float32 unless the sweep says otherwise; on
CUDA also bf16 and fp16 for the batch and hidden sweeps. PyTorch's own `benchmarks/fastrnns`
default (LSTM, T=100, B=64, I=H=512, one layer) carries the names `fastrnns-default-fwd` /
`-fwdbwd`.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from fastrnn.cells import gates

CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64,
          "autocast": torch.float32}
# dtype names whose module and input are float32 but whose call runs under torch.autocast in
# this dtype (bf16: CPU autocast's default, what `torch.autocast("cpu")` users get).
AUTOCAST = {"autocast": torch.bfloat16}
PACKED = ("", "sorted", "unsorted")


def _gates(cell: str) -> int:
    """G of a grid cell name ("rnn" is torch's default tanh RNN)."""
    return gates("rnn_tanh" if cell == "rnn" else cell)

FASTRNNS_DEFAULT = dict(cell="lstm", T=100, B=64, H=512, layers=1)


@dataclass(frozen=True)
class Case:
    cell: str                 # "lstm" | "gru" | "rnn" (tanh)
    T: int                    # steps (the longest sequence for packed input)
    B: int
    H: int
    I: int = 0                # input size; 0 means I = H
    layers: int = 1
    bidir: bool = False
    proj: int = 0             # LSTM proj_size
    packed: str = ""          # "" (padded tensor), "sorted" or "unsorted" PackedSequence
    mode: str = "fwd"         # "fwd" (inference) or "fwdbwd" (training step)
    dtype: str = "f32"
    name: str = ""            # a well-known name (e.g. fastrnns-default-fwd) replacing the id
    gpu_only: bool = False    # too big or a dtype that only makes sense on GPU
    sweep: str = ""           # the sweeps it belongs to, comma-separated (for the report's plots)

    def __post_init__(self):
        assert self.cell in CELLS, self.cell
        assert self.mode in MODES, self.mode
        assert self.dtype in DTYPES, self.dtype
        assert self.packed in PACKED, self.packed
        assert self.proj == 0 or self.cell == "lstm", "proj_size is LSTM only"

    @property
    def sweeps(self) -> tuple:
        return tuple(self.sweep.split(",")) if self.sweep else ()

    @property
    def input_size(self) -> int:
        return self.I or self.H

    @property
    def shape_id(self) -> str:
        parts = [self.cell, f"T{self.T}", f"B{self.B}"]
        if self.I and self.I != self.H:
            parts.append(f"I{self.I}")
        parts.append(f"H{self.H}")
        if self.proj:
            parts.append(f"P{self.proj}")
        parts.append(f"L{self.layers}")
        if self.bidir:
            parts.append("bi")
        if self.packed:
            parts.append("packed" if self.packed == "sorted" else "packed-unsorted")
        parts += [self.mode, self.dtype]
        return "-".join(parts)

    @property
    def id(self) -> str:
        return self.name or self.shape_id

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the module and the input."""
        return DTYPES[self.dtype]

    @property
    def autocast(self) -> Optional[torch.dtype]:
        """The autocast dtype the call runs under, or None."""
        return AUTOCAST.get(self.dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the layer computes in (for the matrix peak it is measured against)."""
        return self.autocast or self.torch_dtype

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(id=self.id, shape_id=self.shape_id, I=self.input_size)
        return d


def lengths(case: Case) -> Optional[list]:
    """Sequence lengths of a packed case: uniform in [T/4, T], the first forced to T so the
    longest is T; a fixed seed per case. Batch order is sorted (descending) for `sorted`,
    shuffled for `unsorted`. None for padded cases."""
    if not case.packed:
        return None
    g = torch.Generator().manual_seed(zlib.crc32(case.shape_id.encode()))
    lo = max(1, case.T // 4)
    ls = torch.randint(lo, case.T + 1, (case.B,), generator=g)
    ls[0] = case.T
    if case.packed == "sorted":
        ls = ls.sort(descending=True).values
    else:
        ls = ls[torch.randperm(case.B, generator=g)]
    return ls.tolist()


def flops(case: Case) -> float:
    """GEMM flops of one call: per layer and direction, 2*N*(I_l + Hout)*G*H for the gates
    plus 2*N*H*P for the projection (N = T*B, or the packed rows); fwdbwd counts the backward
    as twice the forward (grad of input/state and grad of the weights)."""
    ls = lengths(case)
    N = sum(ls) if ls is not None else case.T * case.B
    G, H, D = _gates(case.cell), case.H, 2 if case.bidir else 1
    hout = case.proj or H
    total = 0.0
    for layer in range(case.layers):
        i_l = case.input_size if layer == 0 else D * hout
        per_dir = 2.0 * N * (i_l + hout) * G * H + (2.0 * N * H * case.proj if case.proj else 0.0)
        total += D * per_dir
    return total * (3.0 if case.mode == "fwdbwd" else 1.0)


def _dedupe(cases):
    """Each shape once: the first keeps its name and joins the sweeps of its duplicates."""
    out = {}
    for c in cases:
        key = replace(c, name="", sweep="")
        if key in out:
            kept = out[key]
            if c.sweep not in kept.sweeps:
                out[key] = replace(kept, sweep=f"{kept.sweep},{c.sweep}")
        else:
            out[key] = c
    return list(out.values())


def grid(device: str = "cpu") -> list[Case]:
    """Every case for `device` ("cpu" or "cuda"); GPU-only cases are left out on CPU."""
    cases = []
    for mode in MODES:
        # The fastrnns default first, under its name.
        cases.append(Case(**FASTRNNS_DEFAULT, mode=mode, name=f"fastrnns-default-{mode}", sweep="hidden"))
        for cell in CELLS:
            dts = ["f32"] + (["bf16", "f16"] if device == "cuda" else [])
            for dt in dts:
                for B in (1, 4, 16, 64, 256):
                    cases.append(Case(cell, T=100, B=B, H=256, mode=mode, dtype=dt, sweep="batch"))
                for B in (4, 16, 64):
                    for H in (128, 256, 512, 1024, 2048):
                        cases.append(Case(cell, T=100, B=B, H=H, mode=mode, dtype=dt, sweep="hidden",
                                          gpu_only=H >= 2048 or dt != "f32"))
            for T in (50, 100, 500, 1000):
                cases.append(Case(cell, T=T, B=16, H=256, mode=mode, sweep="length"))
            for L in (1, 2, 4):
                for bidir in (False, True):
                    cases.append(Case(cell, T=100, B=16, H=256, layers=L, bidir=bidir, mode=mode, sweep="depth"))
            for B in (16, 64):
                for packed in ("sorted", "unsorted"):
                    cases.append(Case(cell, T=100, B=B, H=256, packed=packed, mode=mode, sweep="packed"))
            if cell != "rnn":
                cases.append(Case(cell, T=100, B=64, H=512, I=128, mode=mode, sweep="input"))
            for T, B, I, H in ((1, 1, 64, 64), (5, 3, 10, 20), (20, 16, 1024, 1024)):
                cases.append(Case(cell, T=T, B=B, H=H, I=I, mode=mode, sweep="short"))
        cases.append(Case("lstm", T=100, B=4, H=512, proj=128, mode=mode, sweep="proj"))
        cases.append(Case("lstm", T=100, B=64, H=512, proj=128, mode=mode, sweep="proj"))
        cases.append(Case("lstm", T=100, B=64, H=1024, proj=256, mode=mode, sweep="proj"))
        for cell in CELLS:
            for dt in ("bf16", "f16"):
                for B in (1, 16, 64):
                    for H in (128, 256, 512):
                        cases.append(Case(cell, T=100, B=B, H=H, mode=mode, dtype=dt, sweep="half"))
            for B, H in ((1, 256), (16, 256), (64, 512)):
                cases.append(Case(cell, T=100, B=B, H=H, mode=mode, dtype="autocast", sweep="half"))
    cases = _dedupe(cases)
    if device != "cuda":
        cases = [c for c in cases if not c.gpu_only]
    return cases


# The --quick subset: one of each kind, sized for a 2-core CPU (under 3 minutes there).
QUICK = (
    "fastrnns-default-fwd",
    "fastrnns-default-fwdbwd",
    "lstm-T100-B1-H256-L1-fwd-f32",                 # latency
    "lstm-T100-B256-H256-L1-fwd-f32",               # throughput
    "gru-T100-B4-H256-L1-fwd-f32",                  # small-batch GRU
    "gru-T100-B4-H256-L1-fwdbwd-f32",
    "rnn-T100-B1-H256-L1-fwd-f32",                  # small-batch RNN
    "rnn-T100-B16-H256-L1-fwdbwd-f32",
    "lstm-T100-B64-H256-L1-packed-fwdbwd-f32",      # packed, sorted
    "gru-T100-B16-H256-L1-packed-unsorted-fwd-f32",  # packed, unsorted
    "lstm-T100-B16-H256-L2-bi-fwdbwd-f32",          # bidirectional, 2 layers
    "lstm-T100-B4-H512-P128-L1-fwd-f32",            # proj_size
    "gru-T500-B16-H256-L1-fwd-f32",                 # long sequence
    "lstm-T100-B16-H256-L1-fwd-bf16",               # half types: oneDNN's native bf16 LSTM
    "gru-T100-B16-H256-L1-fwdbwd-bf16",
    "rnn-T100-B16-H256-L1-fwd-f16",
    "lstm-T100-B16-H256-L1-fwdbwd-autocast",        # a float32 model under torch.autocast("cpu")
)


def plans(device: str = "cpu") -> list[Case]:
    """The --plans set: the float32 single-layer cases where cpp's panel loop may project the input
    inside its steps (4-64 rows), timed with the projection in the steps and before the loop
    (`cpp:input=step`, `cpp:input=before`); `python -m fastrnn.bench fit` reads them for the
    loop plan's byte limits (csrc/loop_plan.h)."""
    return [c for c in grid(device) if c.dtype == "f32" and c.layers == 1 and not c.bidir and not c.packed
            and not c.proj and c.T == 100 and 4 <= c.B <= 64 and not c.I]


def quick(device: str = "cpu") -> list[Case]:
    by_id = {c.id: c for c in grid(device)}
    missing = [i for i in QUICK if i not in by_id]
    assert not missing, f"quick cases not in the grid: {missing}"
    return [by_id[i] for i in QUICK]


def select(cases, cells=None, match=None) -> list[Case]:
    """Filter by cell names and by substrings of the id (any of them)."""
    out = list(cases)
    if cells:
        out = [c for c in out if c.cell in cells]
    if match:
        out = [c for c in out if any(m in c.id or m in c.shape_id for m in match)]
    return out


# ----------------------------------------------------------------------------- streaming

def stream(device: str = "cpu", hidden=(64, 256), batch=(1,), cells=CELLS) -> list[Case]:
    """The streaming cases (`python -m fastrnn.bench stream`): one frame per call (T=1), the state
    carried from call to call, I = H, one layer; timed per step by `runner.run_stream`."""
    return [Case(cell, T=1, B=B, H=H, sweep="stream") for cell in cells for H in hidden for B in batch]


# ----------------------------------------------------------------------------- roofline

def element_size(case: Case) -> int:
    """Bytes per element of the dtype the case computes in (autocast: its autocast dtype)."""
    return torch.empty((), dtype=case.compute_dtype).element_size()


def layer_weight_bytes(case: Case) -> int:
    """Bytes of one layer-direction's recurrent weights (W_hh, and W_hr with proj_size): what
    each step must read, and the size at which the cache-streaming rate is measured."""
    G, H, P = _gates(case.cell), case.H, case.proj or case.H
    return (G * H * P + (H * P if case.proj else 0)) * element_size(case)


def step_weight_bytes(case: Case) -> int:
    """Recurrent-weight bytes one forward step reads over all layers and directions."""
    return layer_weight_bytes(case) * case.layers * (2 if case.bidir else 1)
