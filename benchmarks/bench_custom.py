"""LayerNorm-LSTM and a user-defined cell: fastrnn's generated fused kernels against the same
math written as users write it today (a Python loop over the step with nn.LayerNorm, eager).

    python benchmarks/bench_custom.py [--threads 1] [--reps 5] [--H 128 256] [--B 1 16 64]

fwd+bwd (loss = output.sum()), float32, T=100, I=H. Each case times every implementation
alternately in one process and reports medians; speed is never asserted. On a shared machine
the medians move by ~10-20% between runs.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

import fastrnn
from fastrnn.custom import PEEPHOLE_LSTM_CELL, CustomRNN


class EagerLNLSTM(nn.Module):
    """The step as users write it: nn.LayerNorm modules and a Python loop over time."""

    def __init__(self, I, H):
        super().__init__()
        self.H = H
        self.w_ih = nn.Linear(I, 4 * H, bias=False)
        self.w_hh = nn.Linear(H, 4 * H, bias=False)
        self.ln_i, self.ln_h, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)

    def forward(self, x):
        h = x.new_zeros(x.size(1), self.H)
        c = x.new_zeros(x.size(1), self.H)
        outs = []
        for t in range(x.size(0)):
            i, f, g, o = (self.ln_i(self.w_ih(x[t])) + self.ln_h(self.w_hh(h))).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
            outs.append(h)
        return torch.stack(outs)


class EagerPeephole(nn.Module):
    def __init__(self, I, H):
        super().__init__()
        self.H = H
        self.cell = nn.Linear(I + H, 4 * H)
        self.w = nn.Parameter(torch.randn(3, H) * 0.1)

    def forward(self, x):
        h = x.new_zeros(x.size(1), self.H)
        c = x.new_zeros(x.size(1), self.H)
        outs = []
        for t in range(x.size(0)):
            i, f, g, o = self.cell(torch.cat([x[t], h], 1)).chunk(4, 1)
            i = torch.sigmoid(i + self.w[0] * c)
            f = torch.sigmoid(f + self.w[1] * c)
            c = f * c + i * torch.tanh(g)
            h = torch.sigmoid(o + self.w[2] * c) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)


def _fwd_bwd(m, x):
    def run():
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--H", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads={args.threads}, "
          f"float32, T={args.T}, I=H, fwd+bwd, median of {args.reps} (ms)")
    print("| cell | B | H | eager loop | fastrnn fused | speedup | fastrnn.LSTM (cpp) | fused / plain LSTM |")
    print("|---|---|---|---|---|---|---|---|")
    for H in args.H:
        for B in args.B:
            x = torch.randn(args.T, B, H)
            for name in ("LayerNormLSTM", "peephole LSTM"):
                if name == "LayerNormLSTM":
                    impls = {"eager": EagerLNLSTM(H, H), "fused": fastrnn.LayerNormLSTM(H, H)}
                else:
                    impls = {"eager": EagerPeephole(H, H), "fused": CustomRNN(PEEPHOLE_LSTM_CELL, H, H)}
                impls["lstm"] = fastrnn.LSTM(H, H)
                fns = {k: _fwd_bwd(m, x) for k, m in impls.items()}
                for f in fns.values():  # warm-up: compile, caches, allocator
                    f()
                times = {k: [] for k in fns}
                for _ in range(args.reps):
                    for k, f in fns.items():
                        t0 = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t0)
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                print(f"| {name} | {B} | {H} | {med['eager']:.1f} | {med['fused']:.1f} | "
                      f"{med['eager'] / med['fused']:.1f}x | {med['lstm']:.1f} | {med['fused'] / med['lstm']:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
