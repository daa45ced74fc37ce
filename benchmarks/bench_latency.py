"""Where a small-batch step's time goes (B <= 4, forward, cpp backend, float32).

    python benchmarks/bench_latency.py [--cells lstm gru rnn] [--B 1 4] [--H 256] [--reps 30]

For each case, the layer is timed at T=1 and T=T (default 100) on torch's threads and on one
thread, fastest of --reps calls each (a bound is what the machine can do; load only slows a
call), and split into:
  call      fixed cost of a layer call (T=1 time minus one step): checks, dispatch, buffers, the
            input projection of one step;
  step      per-step time on torch's threads, (t(T) - t(1)) / (T - 1);
  step@1    the same on one thread: the step's product (GEMV) and pointwise work, no barrier;
  split     step - step@1 / threads: what splitting a step over the threads costs beyond the ideal
            (the per-step barrier, load imbalance, the threads' start-up);
  bound     the slower of: the step's recurrent weights (and W_ih where the plan projects inside
            the steps) read once from the threads' caches at the rate `runner.cache_rate`
            measures, and the step's flops (its share of the input projection included, wherever
            the plan makes it) at torch.mm's fastest rate (`runner.matmul_peak`);
  limit     which of the two it is.
Speed is reported, never asserted.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import fastrnn
from fastrnn.bench.runner import cache_rate, matmul_peak
from fastrnn.cells import gates

_CLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def fastest(fn, reps):
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def layer_times(m, B, H, T, reps):
    xs = {t: torch.randn(t, B, H) for t in (1, T)}
    with torch.no_grad():
        return {t: fastest(lambda x=x: m(x), reps) for t, x in xs.items()}


def case(cell, B, H, T, reps, threads, peak_gflops):
    m = getattr(fastrnn, _CLS[cell])(H, H, backend="cpp")
    G = gates("rnn_tanh" if cell == "rnn" else cell)
    t2 = layer_times(m, B, H, T, reps)
    torch.set_num_threads(1)
    try:
        t1 = layer_times(m, B, H, T, reps)
    finally:
        torch.set_num_threads(threads)
    step, step1 = (t2[T] - t2[1]) / (T - 1), (t1[T] - t1[1]) / (T - 1)
    from fastrnn import _ext
    plan = _ext.loop_plan(proj=False, batch=B, steps=T, input_size=H, hidden=H, gates=G)
    in_steps = plan == "panel+step"
    nbytes = G * H * H * 4 * (2 if in_steps else 1)
    cache_s = nbytes / (cache_rate(nbytes) * 1e9)
    compute_s = 2.0 * B * (H + H) * G * H / (peak_gflops * 1e9)  # the step's share of both products
    return dict(cell=cell, B=B, H=H, plan=plan, call=t2[1] - step, step=step, step1=step1,
                split=step - step1 / threads, bound=max(cache_s, compute_s),
                limit="cache" if cache_s >= compute_s else "compute")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--H", type=int, nargs="+", default=[256])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args(argv)
    threads = torch.get_num_threads()
    import os
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    peak = matmul_peak("cpu", best=True)[1]
    print(f"# {_cpu_name()}, torch {torch.__version__}, {threads} threads, load {load:.1f}, T={a.T}, I=H, "
          f"forward, cpp backend, fastest of {a.reps} (us); torch.mm peak {peak:.0f} GFLOP/s")
    print("| cell | B | H | plan | call | step | step@1 | split | bound | limit | step / bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in a.cells:
        for H in a.H:
            for B in a.B:
                r = case(cell, B, H, a.T, a.reps, threads, peak)
                us = {k: r[k] * 1e6 for k in ("call", "step", "step1", "split", "bound")}
                print(f"| {cell} | {B} | {H} | {r['plan']} | {us['call']:.1f} | {us['step']:.2f} | "
                      f"{us['step1']:.2f} | {us['split']:.2f} | {us['bound']:.2f} | {r['limit']} | "
                      f"{r['step'] / r['bound']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
