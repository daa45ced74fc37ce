"""`python -m fastrnn.bench [run options]` times the grid; `python -m fastrnn.bench report`
renders benchmarks/REPORT.md and benchmarks/plots/ from every results file;
`python -m fastrnn.bench models` times whole models (training steps), each implementation in
its own process (fastrnn.bench.models); `python -m fastrnn.bench stream` times one frame per
call (torch.nn and fastrnn modules with T=1, fastrnn.Stream.step, ONNX Runtime).

    python -m fastrnn.bench --quick                      # ~17 cases, a few minutes on 2 cores
    python -m fastrnn.bench --cell lstm --backend cpp    # the full LSTM grid, cpp vs torch only
    python -m fastrnn.bench --list                       # the case ids, nothing run
    python -m fastrnn.bench report
    python -m fastrnn.bench models --quick               # 9 whole models, torch.nn vs auto
    python -m fastrnn.bench fit [RESULTS.json ...]       # refit auto's dispatch table from results
    python -m fastrnn.bench --plans                      # cpp's input projection in / before its steps
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from fastrnn.bench import cases as C
    from fastrnn.bench import report, runner

    if argv[:1] == ["report"]:
        ap = argparse.ArgumentParser(prog="python -m fastrnn.bench report")
        ap.add_argument("--results", type=Path, default=runner.benchmarks_dir() / "results")
        ap.add_argument("--out", type=Path, default=runner.benchmarks_dir() / "REPORT.md")
        ap.add_argument("--plots", type=Path, default=runner.benchmarks_dir() / "plots")
        a = ap.parse_args(argv[1:])
        md, plots = report.write(a.results, a.out, a.plots)
        print(f"wrote {md}" + "".join(f"\nwrote {p}" for p in plots))
        return 0
    if argv[:1] == ["fit"]:  # auto's dispatch table from the results files (fastrnn/bench/fit.py)
        from fastrnn.bench import fit
        print(fit.fit([Path(p) for p in argv[1:]]))
        return 0
    if argv[:1] == ["models"]:
        from fastrnn.bench import models
        return models.main(argv[1:])
    if argv[:1] == ["stream"]:
        return stream_main(argv[1:])
    if argv[:1] == ["run"]:
        argv = argv[1:]

    ap = argparse.ArgumentParser(prog="python -m fastrnn.bench",
                                 description="Time torch.nn RNNs against every fastrnn backend, side by side.")
    ap.add_argument("--quick", action="store_true", help="the representative subset (%d cases)" % len(C.QUICK))
    ap.add_argument("--plans", action="store_true",
                    help="the cases where cpp may project the input inside its steps, timed both ways "
                         "(results <hardware-id>.plans.json, read by `fit`)")
    ap.add_argument("--cell", type=_csv, help="comma list of lstm, gru, rnn")
    ap.add_argument("--case", type=_csv, help="comma list of substrings of case ids to keep")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--backend", type=_csv,
                    help="comma list of implementations to time against torch (fastrnn backends, "
                         "'reference', peers 'onnxruntime', 'flashrnn', 'haste'); default: every "
                         "available fastrnn backend but reference, and the peers")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/<hardware-id>.json)")
    ap.add_argument("--repeats", type=int, help="minimum timed calls per implementation (5; --quick 3)")
    ap.add_argument("--min-time", type=float, help="minimum seconds of timed rounds per case (1; --quick 0.5)")
    ap.add_argument("--warmup", type=int, help="untimed calls before timing (2; --quick 1)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--list", action="store_true", help="print the selected case ids and exit")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)

    for key, full, quick in (("repeats", 5, 3), ("min_time", 1.0, 0.5), ("warmup", 2, 1)):
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    if a.threads:
        torch.set_num_threads(a.threads)
    cases = C.quick(a.device) if a.quick else C.plans(a.device) if a.plans else C.grid(a.device)
    if a.plans:
        a.backend = a.backend or list(runner.INPUT_PLANS)
        a.out = a.out or runner.benchmarks_dir() / "results" / f"{fastrnn_hardware_id()}.plans.json"
    cases = C.select(cases, a.cell, a.case)
    if a.list:
        print("\n".join(c.id for c in cases))
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    doc = runner.run(cases, a.device, a.backend, a.repeats, a.min_time, a.warmup, progress=not a.no_progress,
                     settings={"quick": a.quick, "plans": a.plans, "argv": argv})
    path = runner.save(doc, a.out)
    print(report.case_table(doc))
    notes = report.skipped_notes(doc)
    if notes:
        print("\n".join(notes))
    print(f"\n{len(cases)} cases in {doc['settings']['wall_s']:.0f} s; wrote {path}")
    return 0


def fastrnn_hardware_id() -> str:
    from fastrnn.hardware import hardware_id
    return hardware_id("cpu")


def stream_main(argv) -> int:
    from fastrnn.bench import cases as C
    from fastrnn.bench import report, runner
    ap = argparse.ArgumentParser(prog="python -m fastrnn.bench stream",
                                 description="Per-step time of one frame per call, side by side.")
    ap.add_argument("--cell", type=_csv, default=list(C.CELLS), help="comma list of lstm, gru, rnn")
    ap.add_argument("--hidden", type=_csv, default=["64", "256"], help="comma list of hidden sizes (64,256)")
    ap.add_argument("--batch", type=_csv, default=["1"], help="comma list of batch sizes (1)")
    ap.add_argument("--impl", type=_csv, default=list(runner.STREAM_IMPLS),
                    help="comma list of " + ", ".join(runner.STREAM_IMPLS) + " (or a fastrnn backend name)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block (20)")
    ap.add_argument("--rounds", type=int, default=200, help="minimum timed blocks per implementation (200)")
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per case (1)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/stream/<hardware-id>.json)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cases = C.stream("cpu", hidden=[int(h) for h in a.hidden], batch=[int(b) for b in a.batch], cells=a.cell)
    doc = runner.run_stream(cases, a.impl, a.steps, a.rounds, a.min_time,
                            settings={"argv": argv, "command": " ".join(["python -m fastrnn.bench stream"] + argv)})
    path = runner.save_stream(doc, a.out)
    print(report.stream_table(doc))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
