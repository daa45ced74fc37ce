"""LayerNorm-LSTM/GRU and a user-defined cell: fastrnn's generated fused kernels against the same
math written as users write it today (a Python loop over the step with nn.LayerNorm, eager), and
against torch.compile of that loop.

    python benchmarks/bench_custom.py [--quick] [--threads 1] [--reps 5] [--H 128 256 512] [--B 1 16 64]
        [--cells LayerNormLSTM LayerNormGRU "peephole LSTM"] [--compile step|loop|none] [--out FILE]

Results go to benchmarks/results/custom/<hardware-id>.json (--quick: <hardware-id>.quick.json); `python -m fastrnn.bench report`
puts them in benchmarks/REPORT.md ("Custom cells").

fwd+bwd (loss = output.sum()), float32, T=100, I=H. Each case times every implementation
alternately in one process and reports medians; speed is never asserted. On a shared machine
the medians move by ~10-20% between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import fastrnn
from fastrnn import custom as fcustom
from fastrnn.custom import PEEPHOLE_LSTM_CELL, CustomRNN


class _Loop(nn.Module):
    """A Python loop over `step` (what users write today). compile="step" swaps the step for
    torch.compile(step) (the loop stays in Python); compile="loop" compiles the whole forward,
    the T-step loop unrolled (minutes of inductor time per shape on a small CPU)."""

    n_states = 2

    def forward(self, x):
        st = [x.new_zeros(x.size(1), self.H) for _ in range(self.n_states)]
        outs = []
        step = getattr(self, "_compiled_step", None) or self.step
        for t in range(x.size(0)):
            st = step(x[t], *st)
            outs.append(st[0])
        return torch.stack(outs)


class EagerLNLSTM(_Loop):
    """The step as users write it: nn.LayerNorm modules (haste's formulation)."""

    def __init__(self, I, H):
        super().__init__()
        self.H = H
        self.w_ih = nn.Linear(I, 4 * H)
        self.w_hh = nn.Linear(H, 4 * H, bias=False)
        self.ln_i, self.ln_h, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)

    def step(self, x, h, c):
        i, f, g, o = (self.ln_i(self.w_ih(x)) + self.ln_h(self.w_hh(h))).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.ln_c(c)), c


class EagerLNGRU(_Loop):
    n_states = 1

    def __init__(self, I, H):
        super().__init__()
        self.H = H
        self.w_ih = nn.Linear(I, 3 * H)
        self.w_hh = nn.Linear(H, 3 * H)
        self.ln_i, self.ln_h = nn.LayerNorm(3 * H), nn.LayerNorm(3 * H)

    def step(self, x, h):
        ir, iz, inn = self.ln_i(self.w_ih(x)).chunk(3, 1)
        hr, hz, hn = self.ln_h(self.w_hh(h)).chunk(3, 1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(inn + r * hn)
        return (n + z * (h - n),)


class EagerPeephole(_Loop):
    def __init__(self, I, H):
        super().__init__()
        self.H = H
        self.cell = nn.Linear(I + H, 4 * H)
        self.w = nn.Parameter(torch.randn(3, H) * 0.1)

    def step(self, x, h, c):
        i, f, g, o = self.cell(torch.cat([x, h], 1)).chunk(4, 1)
        i = torch.sigmoid(i + self.w[0] * c)
        f = torch.sigmoid(f + self.w[1] * c)
        c = f * c + i * torch.tanh(g)
        return torch.sigmoid(o + self.w[2] * c) * torch.tanh(c), c


def _compiled(m, how):
    if how == "loop":
        return torch.compile(m)
    m._compiled_step = torch.compile(m.step)
    return m


class _NjitLoop(nn.Module):
    """The fused module with the numba path's @njit whole loop forced (np.dot per step inside
    @njit, what runs without the extension) instead of the C++ loop, for side-by-side timing."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        keep = fcustom.CPP_LOOP_MIN_BATCH
        fcustom.CPP_LOOP_MIN_BATCH = 1 << 30
        try:
            return self.m(x)
        finally:
            fcustom.CPP_LOOP_MIN_BATCH = keep


def _fwd_bwd(m, x):
    def run():
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    return run


GATES = {"LayerNormLSTM": 4, "LayerNormGRU": 3, "peephole LSTM": 4}


def gemm_bound_ms(name, T, B, H, peak_gflops):
    """The GEMMs alone at torch.mm's fastest rate: x W_ih^T and h W_hh^T forward, and the backward's
    dx, dh and two weight gradients (twice the forward's flops), I=H. No implementation that runs
    these products can be faster, so eager / bound is the most any of them can gain over eager."""
    return 3 * 2.0 * T * B * 2 * H * GATES[name] * H / (peak_gflops * 1e9) * 1e3


CELLS = {
    "LayerNormLSTM": (EagerLNLSTM, lambda H: fastrnn.LayerNormLSTM(H, H), lambda H: fastrnn.LSTM(H, H)),
    "LayerNormGRU": (EagerLNGRU, lambda H: fastrnn.LayerNormGRU(H, H), lambda H: fastrnn.GRU(H, H)),
    "peephole LSTM": (EagerPeephole, lambda H: CustomRNN(PEEPHOLE_LSTM_CELL, H, H), lambda H: fastrnn.LSTM(H, H)),
}


TABLE_HEAD = ("| cell | B | H | eager | compiled | fused | njit-loop | plain fastrnn | GEMM bound | fused vs eager | "
              "fused vs compiled | fused / plain | eager / bound |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r) -> str:
    """One markdown row of a result record (times in ms)."""
    nan = float("nan")
    comp = r.get("compiled") or nan
    return (f"| {r['cell']} | {r['B']} | {r['H']} | {r['eager']:.1f} | {comp:.1f} | {r['fused']:.1f} | "
            f"{r['njit']:.1f} | {r['plain']:.1f} | {r['bound']:.1f} | {r['eager'] / r['fused']:.1f}x | "
            f"{comp / r['fused']:.1f}x | {r['fused'] / r['plain']:.2f}x | {r['eager'] / r['bound']:.1f}x |")


def time_case(name, B, H, args, peak) -> dict:
    """Every implementation of one cell and shape, in rounds of one call each in a fresh random
    order: in a fixed cycle the call right after the eager loop measured ~25% slow at B=1 (the same
    module ran 2.4 ms alone, 3.4 there)."""
    x = torch.randn(args.T, B, H)
    eager_cls, fused, plain = CELLS[name]
    impls = {"eager": eager_cls(H, H)}
    if args.compile != "none":
        impls["compiled"] = _compiled(eager_cls(H, H), args.compile)
    impls["fused"] = fused(H)
    impls["njit"] = _NjitLoop(fused(H))
    impls["plain"] = plain(H)
    fns = {k: _fwd_bwd(m, x) for k, m in impls.items()}
    for f in fns.values():  # warm-up: compile (excluded), caches, allocator
        f()
        f()
    times = {k: [] for k in fns}
    order = random.Random(f"{name}-{B}-{H}")
    for _ in range(args.reps):
        for k, f in order.sample(list(fns.items()), len(fns)):
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    rec = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    rec.update(cell=name, B=B, H=H, bound=gemm_bound_ms(name, args.T, B, H, peak))
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="H=128, B in 1 and 16, 3 rounds (under a minute; make bench)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--H", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--compile", choices=["step", "loop", "none"], default="step",
                    help="torch.compile of the eager loop: the step (default) or the whole unrolled loop")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/custom/<hardware-id>[.quick].json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.H, args.B, args.reps = [128], [1, 16], 3
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64  # one compiled step per cell and shape, never an eager fallback
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from fastrnn.bench.runner import matmul_peak
    from fastrnn.hardware import hardware_id
    peak = matmul_peak("cpu", best=True)[1]
    load = os.getloadavg()[0]
    head = (f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}, torch {torch.__version__}, "
            f"threads={args.threads}, float32, T={args.T}, I=H, fwd+bwd, median of {args.reps} (ms); "
            f"compiled = torch.compile of the {args.compile}; njit-loop = the numba @njit whole loop (no "
            f"extension); GEMM bound = the cell's GEMMs at torch.mm's fastest rate on {args.threads} "
            f"thread(s), {peak:.0f} GFLOP/s; eager / bound = the most any implementation could gain over eager")
    print("# " + head)
    print(TABLE_HEAD)
    rows = []
    for H in args.H:
        for B in args.B:
            for name in args.cells:
                rows.append(time_case(name, B, H, args, peak))
                print(table_row(rows[-1]), flush=True)
    doc = {"kind": "custom", "hardware_id": hardware_id("cpu"), "header": head,
           "command": " ".join(["python benchmarks/bench_custom.py"] + (argv if argv is not None else sys.argv[1:])),
           "loadavg_end": os.getloadavg()[0], "rows": rows}
    stem = doc["hardware_id"] + (".quick" if args.quick else "")
    out = args.out or Path(__file__).resolve().parent / "results" / "custom" / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
