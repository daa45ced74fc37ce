"""Tables and plots from results files: the terminal table, benchmarks/REPORT.md and
benchmarks/plots/*.png (speedup vs batch size and vs hidden size, per hardware).

Every `benchmarks/results/*.json` present goes in, so hardware can be compared side by side.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from fastrnn.bench.runner import TORCH_NN

MODES = ("fwd", "fwdbwd")


def load(results_dir: Path) -> list[dict]:
    docs = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(doc, dict) and "cases" in doc:
            doc["_path"] = p.name
            docs.append(doc)
    return docs


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_bytes(b: Optional[int]) -> str:
    if b is None:
        return "—"
    for unit, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= k:
            return f"{b / k:.3g} {unit}"
    return f"{b} B"


def _sci(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1e}"


def backends_of(doc: dict) -> list[str]:
    """Implementations with results in `doc`: torch first, then the run's order, then others."""
    seen = {n for c in doc["cases"] for n in c["results"]}
    order = [TORCH_NN] + list(doc.get("settings", {}).get("backends", []))
    names = [n for n in order if n in seen]
    return names + sorted(seen - set(names))


def geomean_speedups(doc: dict) -> dict:
    out = {}
    for name in backends_of(doc):
        xs = [c["results"][name]["speedup"] for c in doc["cases"]
              if name in c["results"] and c["results"][name].get("speedup")]
        if xs:
            out[name] = (math.exp(sum(math.log(x) for x in xs) / len(xs)), len(xs))
    return out


def case_table(doc: dict) -> str:
    """Markdown: one row per case, one column per implementation, median time and speedup."""
    names = backends_of(doc)
    lines = ["| case | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in doc["cases"]:
        cells = []
        for n in names:
            r = c["results"].get(n)
            if r is None:
                cells.append("skip" if n in c.get("skipped", {}) else "—")
            elif n == TORCH_NN or r.get("speedup") is None:
                cells.append(fmt_time(r["median_s"]))
            else:
                cells.append(f"{fmt_time(r['median_s'])} ×{r['speedup']:.2f}")
        lines.append(f"| {c['id']} | " + " | ".join(cells) + " |")
    g = geomean_speedups(doc)
    lines.append("| **geomean speedup** | " + " | ".join(
        (f"×{g[n][0]:.2f} ({g[n][1]} cases)" if n in g else "—") for n in names) + " |")
    return "\n".join(lines)


def dtype_geomeans(doc: dict) -> list[str]:
    """One line per non-float32 dtype: each implementation's geomean speedup over its cases."""
    out = []
    for dt in sorted({c["dtype"] for c in doc["cases"]} - {"f32"}):
        sub = dict(doc, cases=[c for c in doc["cases"] if c["dtype"] == dt])
        g = geomean_speedups(sub)
        lows = {n: min(c["results"][n]["speedup"] for c in sub["cases"]
                       if n in c["results"] and c["results"][n].get("speedup")) for n in g}
        parts = [f"{n} ×{v:.2f} (lowest ×{lows[n]:.2f}, {k} cases)" for n, (v, k) in g.items() if n != TORCH_NN]
        if parts:
            out.append(f"- {dt}: geomean speedup " + "; ".join(parts))
    return out


def _mark(ok: Optional[bool]) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def models_table(doc: dict) -> str:
    """Markdown: one row per (model, fastrnn implementation) against torch.nn in its own process.
    Each ratio twice: from the median step (the figure asked for) and from the fastest step (on
    shared cores the one that ran while they were free: far steadier under other jobs' load)."""
    lines = ["| model | torch step (median, min) | impl | step (median, min) | whole × | layer × | "
             "RNN share (torch) | expected × (Amdahl) | layer× · share | outside torch / impl | threads torch | "
             "threads impl | ≥ torch | no loss outside |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"]

    def thr(r):
        after = r["threads_after"]
        t = f"{r['threads_before']}→{','.join(map(str, after))}"
        return f"**{t} (changed)**" if r["threads_changed"] else t

    def two(r, key, fmt):
        vals = [r.get(key), r.get(key + "_min")]
        return " / ".join("—" if v is None else fmt(v) for v in vals)

    for m in doc["models"]:
        b = m["impls"].get(TORCH_NN)
        for impl, r in m["impls"].items():
            if impl == TORCH_NN:
                continue
            if b is None or "error" in b or "error" in r:
                err = (b or {}).get("error") or r.get("error") or "no torch run"
                lines.append(f"| {m['model']} | — | {impl} | failed: {err} |" + " |" * 10)
                continue
            x = lambda v: f"×{v:.2f}"  # noqa: E731
            lines.append(" | ".join([
                f"| {m['model']}", f"{fmt_time(b['step_s'])}, {fmt_time(b.get('step_min_s'))}", impl,
                f"{fmt_time(r['step_s'])}, {fmt_time(r.get('step_min_s'))}",
                two(r, "speedup", x), two(r, "layer_speedup", x),
                two(r, "rnn_share_torch", lambda v: f"{100 * v:.0f}%"),
                two(r, "amdahl_speedup", x), two(r, "share_bound", x), two(r, "outside_ratio", x),
                thr(b), thr(r), two(r, "never_slower", _mark), two(r, "no_loss_outside", _mark)]) + " |")
    return "\n".join(lines)


def models_section(doc: dict) -> list[str]:
    e, s = doc["env"], doc.get("settings", {})
    out = [f"### Whole models: {doc['hardware_id']}", "",
           f"Made with `{s.get('command', 'python -m fastrnn.bench models')}` on {e.get('cpu_model')} "
           f"({', '.join(e.get('cpu_features') or [e.get('hardware_id', '')])}; "
           f"{e.get('cores')} cores, torch {e.get('torch')}, fastrnn at {e.get('git_revision')}, "
           f"{e.get('date')}); each implementation in its own fresh process, {s.get('rounds')} process(es) "
           f"per implementation and model (order alternating), ≥ {s.get('min_steps')} timed steps and "
           f"≥ {s.get('min_time')} s each after {s.get('warmup')} warm-up steps; medians.", ""]
    la = [x for x in (e.get("loadavg_start"), e.get("loadavg_end")) if x is not None]
    if la and max(la) > (e.get("cores") or 1):
        out += [f"**Warning: the machine was busy** (load average {max(la):.1f} on {e.get('cores')} cores): "
                "times are noisy; compare ratios, and rerun before trusting a difference of a few percent.", ""]
    out += ["Step: one training step as the user's code runs it (forward, loss, backward, optimizer; "
            "`-infer`: one batch of the evaluation loop). Layer: the model's RNN layer calls alone, in "
            "the same process, on the inputs they got in a step (forward + backward when training). "
            "Each ratio is given from the median step and from the fastest (median / min). "
            "Expected ×: the whole-step speedup the layer speedup alone predicts, 1/((1-p)+p/s); "
            "\"no loss outside\" asks the whole-step speedup to reach it (the brief's looser bound, "
            "layer× · share, is shown too). Outside: step minus layer time, torch's over the "
            "implementation's (below 1: the rest of the step got slower). Threads: "
            "`torch.get_num_threads()` before the model is built → after the first step and at the end.",
            "", models_table(doc), ""]
    changed = [m["model"] for m in doc["models"] for i, r in m["impls"].items()
               if i != TORCH_NN and r.get("threads_changed")]
    if changed:
        out += [f"**Thread count changed** by the fastrnn run in {len(changed)} model(s) ({', '.join(changed)}): "
                "every torch op after the first fastrnn call ran with fewer threads (issue 16); these "
                "numbers change once that is fixed.", ""]
    lines = []
    for m in doc["models"]:
        for i, r in m["impls"].items():
            if i != TORCH_NN and "first_loss_diff" in r:
                lines.append(f"{m['model']}/{i} {'same' if r['same_weights'] else '**different**'} weights, "
                             f"first loss Δ {r['first_loss_diff']:.1e}")
    if lines:
        out += ["Same weights and first-step loss against torch.nn: " + "; ".join(lines) + ".", ""]
    out += ["Models:", ""] + [f"- `{m['model']}`: {m['what']}" for m in doc["models"]] + [""]
    return out


def load_kind(results_dir: Path, kind: str) -> list[dict]:
    """The results documents of one kind ("models", "stream", "custom") from results/<kind>/."""
    docs = []
    for p in sorted((Path(results_dir) / kind).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("kind") == kind:
            docs.append(doc)
    return docs


def stream_table(doc: dict) -> str:
    """Markdown: one row per streaming case, per implementation the median (min) µs per step and
    torch's median over its median."""
    names = []
    for c in doc["cases"]:
        names += [n for n in c["results"] if n not in names]
    us = lambda s: f"{s * 1e6:.1f}"  # noqa: E731
    lines = ["| case (one frame per call) | " + " | ".join(f"{n} µs/step" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for c in doc["cases"]:
        cells = []
        for n in names:
            r = c["results"].get(n)
            if r is None or "median_s" not in r:
                cells.append("—")
                continue
            sp = f" ×{r['speedup']:.2f}" if r.get("speedup") and n != TORCH_NN else ""
            cells.append(f"{us(r['median_s'])} ({us(r['min_s'])}){sp}")
        label = f"{c['cell']} B={c['B']} H={c['H']} {c['dtype']}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stream_section(doc: dict) -> list[str]:
    e, s = doc["env"], doc.get("settings", {})
    out = [f"### Streaming: {doc['hardware_id']}", "",
           f"Made with `{s.get('command', 'python -m fastrnn.bench stream')}` on {e.get('cpu_model')} "
           f"({', '.join(e.get('cpu_features') or [])}; {e.get('cores')} cores, torch threads "
           f"{e.get('torch_threads')}, torch {e.get('torch')}, onnxruntime {e.get('onnxruntime')}, fastrnn at "
           f"{e.get('git_revision')}, {e.get('date')}). Per step: median (min) over blocks of "
           f"{s.get('steps_per_sample')} consecutive steps, the implementations alternating block by block "
           f"in random order, ≥ {s.get('rounds')} blocks each; ×N is torch's median over the "
           "implementation's. Every output was checked against torch's module over the same frames.", ""]
    la = [x for x in (e.get("loadavg_start"), e.get("loadavg_end")) if x is not None]
    if la and max(la) > (e.get("cores") or 1):
        out += [f"**Warning: the machine was busy** (load average {max(la):.1f} on {e.get('cores')} cores): "
                "medians of multi-threaded calls (torch, ONNX Runtime) suffer most; the minima are "
                "closer to an idle machine.", ""]
    out += [stream_table(doc), ""]
    notes = {}
    for c in doc["cases"]:
        for n, r in c["results"].items():
            if r.get("note"):
                notes.setdefault(n, r["note"])
            if n != TORCH_NN and r.get("max_abs_err") is not None and r["max_abs_err"] > 1e-4:
                out.append(f"- **{c['id']} {n}: output differs from torch's by {r['max_abs_err']:.1e}**")
    out += [f"- `{n}`: {v}" for n, v in notes.items()]
    sk = sorted({(n, why) for c in doc["cases"] for n, why in c.get("skipped", {}).items()})
    out += [f"- `{n}` not timed: {why}" for n, why in sk]
    return out + [""]


def detail_table(doc: dict) -> str:
    lines = ["| case | impl | median | IQR | min–max | GFLOP/s | % peak | peak mem | max err | grad err (rel) "
             "| packed/padded | first call |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in doc["cases"]:
        for n, r in c["results"].items():
            pf = r.get("peak_frac")
            ratio = r.get("packed_vs_padded")
            lines.append(" | ".join([
                f"| {c['id']}", n, fmt_time(r["median_s"]),
                f"{fmt_time(r['q1_s'])}–{fmt_time(r['q3_s'])}",
                f"{fmt_time(r['min_s'])}–{fmt_time(r['max_s'])}",
                f"{r['gflops']:.3g}", "—" if pf is None else f"{100 * pf:.1f}%",
                fmt_bytes(r.get("peak_mem_bytes")), _sci(r.get("max_abs_err")), _sci(r.get("max_rel_err_grad")),
                "—" if ratio is None else f"{ratio:.2f}", fmt_time(r.get("first_call_s"))]) + " |")
    return "\n".join(lines)


def roofline_table(doc: dict) -> Optional[str]:
    """Markdown: per case its bound (T * max(step flops / matrix peak, step weight bytes / cache
    rate)), what limits it, and each implementation's achieved fraction of it (100% = at the bound)."""
    cases = [c for c in doc["cases"] if c.get("bound_s")]
    if not cases:
        return None
    names = [n for n in backends_of(doc) if any(n in c["results"] for c in cases)]
    lines = ["| case | limited by | bound | compute / cache bound | " + " | ".join(names) + " |",
             "|---|---|---:|---:|" + "---:|" * len(names)]
    for c in cases:
        cells = []
        for n in names:
            r = c["results"].get(n)
            cells.append("—" if r is None or r.get("bound_frac") is None else f"{100 * r['bound_frac']:.0f}%")
        lines.append(f"| {c['id']} | {c['bound_by']} | {fmt_time(c['bound_s'])} | "
                     f"{fmt_time(c['compute_bound_s'])} / {fmt_time(c['cache_bound_s'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def skipped_notes(doc: dict) -> list[str]:
    """One line per (implementation, reason), with how many cases it covers."""
    seen = {}
    for c in doc["cases"]:
        for n, why in c.get("skipped", {}).items():
            seen.setdefault((n, why), []).append(c["id"])
    return [f"- `{n}` skipped in {len(ids)} case(s): {why}" for (n, why), ids in sorted(seen.items())]


def env_lines(doc: dict) -> list[str]:
    e, s = doc["env"], doc.get("settings", {})
    peak = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in e.get("matmul_peak_gflops", {}).items())
    out = [
        f"- device: {e.get('device')} — {e.get('device_name')}; CPU {e.get('cpu_model')}"
        + (f" ({', '.join(e['cpu_features'])})" if e.get("cpu_features") else "")
        + f", {e.get('cores')} cores, torch threads {e.get('torch_threads')}",
        f"- versions: torch {e.get('torch')}, Triton {e.get('triton')}, Numba {e.get('numba')}, "
        f"CUDA {e.get('cuda')}, cuDNN {e.get('cudnn')}, onnxruntime {e.get('onnxruntime')}, "
        f"Python {e.get('python')}",
        f"- fastrnn {e.get('fastrnn')} at {e.get('git_revision')}, run {e.get('date')}; "
        f"available backends: {', '.join(e.get('available_backends', []))}"
        + (f"; cpp's native bf16 path: {e['cpp_native_bf16']}" if e.get("cpp_native_bf16") else "")
        + (f"; FASTRNN_ISA={e['fastrnn_isa']}" if e.get("fastrnn_isa") else ""),
        f"- matrix peak (torch.mm {e.get('matmul_peak_size')}³, median): {peak}"
        + ("; fastest call (the roofline's): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in
                                                          e["matmul_best_gflops"].items())
           if e.get("matmul_best_gflops") else ""),
    ]
    rates = e.get("cache_rate_gbs") or {}
    if rates:
        out.append("- cache-streaming rate (the threads reading a layer's W_hh from their caches, each its "
                   "share; `runner.cache_rate`): "
                   + ", ".join(f"{fmt_bytes(int(b))} {v:.3g} GB/s" for b, v in rates.items()))
    out += [
        f"- settings: repeats ≥ {s.get('repeats')}, min time {s.get('min_time')} s per case, "
        f"{len(doc['cases'])} cases{' (quick subset)' if s.get('quick') else ''}, wall {s.get('wall_s', 0):.0f} s",
    ]
    la = [x for x in (e.get("loadavg_start"), e.get("loadavg_end")) if x is not None]
    if e.get("device") == "cpu" and la and max(la) > (e.get("cores") or 1):
        out.append(f"- **warning: the machine was busy** (load average {max(la):.1f} on {e.get('cores')} "
                   "cores): CPU times are inflated and noisy, multi-threaded code the most.")
    loads = {k: v for k, v in (e.get("backend_load_s") or {}).items() if v is not None}
    if loads:
        out.append("- backend load time (import, extension, eager JIT): "
                   + ", ".join(f"{k} {fmt_time(v)}" for k, v in loads.items()))
    fc = e.get("first_call_s") or {}
    if fc:
        parts = []
        for b, per in fc.items():
            parts.append(f"{b}: " + ", ".join(
                f"{cell} {fmt_time(v) if isinstance(v, (int, float)) else v}" for cell, v in per.items()))
        out.append("- first call in the process (compile/JIT/load), tiny training step: " + "; ".join(parts))
    return out


# ----------------------------------------------------------------------------- plots

def _sweep_points(doc: dict, sweep: str, x: str, dtype: str = "f32"):
    """{(cell, mode): {backend: {extra: [(x, speedup)]}}} for the cases of one sweep."""
    out = {}
    for c in doc["cases"]:
        if sweep not in (c.get("sweep") or "").split(",") or c["dtype"] != dtype:
            continue
        extra = f"B={c['B']}" if sweep == "hidden" else ""
        for n, r in c["results"].items():
            if n == TORCH_NN or not r.get("speedup"):
                continue
            out.setdefault((c["cell"], c["mode"]), {}).setdefault(n, {}).setdefault(extra, []).append(
                (c[x], r["speedup"]))
    return out


def plot_sweep(doc: dict, sweep: str, x: str, xlabel: str, path: Path, dtype: str = "f32") -> Optional[Path]:
    pts = _sweep_points(doc, sweep, x, dtype)
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullLocator, ScalarFormatter

    cells = [c for c in ("lstm", "gru", "rnn") if any(k[0] == c for k in pts)]
    modes = [m for m in MODES if any(k[1] == m for k in pts)]
    names = [n for n in backends_of(doc) if any(n in v for v in pts.values())]
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(len(modes), len(cells), figsize=(4.2 * len(cells), 3.4 * len(modes)),
                             squeeze=False)
    for i, mode in enumerate(modes):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            ax.axhline(1.0, color="grey", lw=1, label="torch")
            for n, per in pts.get((cell, mode), {}).items():
                for k, (extra, xy) in enumerate(sorted(per.items())):
                    xy = sorted(xy)
                    ax.plot([q[0] for q in xy], [q[1] for q in xy], styles[k % len(styles)], marker="o",
                            color=colors[n], label=f"{n} {extra}".strip())
            xs = sorted({p[0] for per in pts.get((cell, mode), {}).values() for xy in per.values() for p in xy})
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xticks(xs or [1])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.set_title(f"{cell} {mode}")
            ax.grid(True, alpha=0.3)
            if i == len(modes) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("speedup vs torch (×)")
            if pts.get((cell, mode)):
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no cases of this sweep", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{doc['hardware_id']}: speedup vs {xlabel} ({dtype})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- REPORT.md

def custom_section(doc: dict) -> list[str]:
    """LayerNorm-LSTM/GRU and the peephole cell (benchmarks/bench_custom.py): one row per cell and
    shape, times in ms."""
    nan = float("nan")
    lines = [f"### Custom cells: {doc['hardware_id']}", "", f"Made with `{doc.get('command')}`: {doc.get('header')}.",
             "", "| cell | B | H | eager loop | compiled step | fused | njit-loop | plain fastrnn | GEMM bound | "
             "fused vs eager | fused vs compiled | fused / plain | eager / bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        comp = r.get("compiled") or nan
        lines.append(f"| {r['cell']} | {r['B']} | {r['H']} | {r['eager']:.1f} | {comp:.1f} | {r['fused']:.1f} | "
                     f"{r['njit']:.1f} | {r['plain']:.1f} | {r['bound']:.1f} | ×{r['eager'] / r['fused']:.1f} | "
                     f"×{comp / r['fused']:.1f} | {r['fused'] / r['plain']:.2f} | ×{r['eager'] / r['bound']:.1f} |")
    return lines + [""]


def write(results_dir: Path, out_md: Path, plots_dir: Path) -> tuple[Path, list[Path]]:
    docs = load(results_dir)
    plots = []
    parts = ["# fastrnn benchmark report", "",
             "Generated by `python -m fastrnn.bench report` from every file in "
             f"`{Path(results_dir).name}/`. Times are medians; ×N is torch's median over the "
             "implementation's (above 1 is faster than torch's own module). Performance figures only: "
             "nothing here is asserted.", ""]
    if not docs:
        parts.append("No results files found.")
    for doc in docs:
        hw = doc["hardware_id"]
        parts += [f"## {hw}", "", f"From `{doc['_path']}`.", ""] + env_lines(doc) + ["", case_table(doc), ""]
        gm = dtype_geomeans(doc)
        if gm:
            parts += ["Half types (module and input in the dtype; `autocast`: a float32 module under "
                      "`torch.autocast`, bf16):", ""] + gm + [""]
        notes = skipped_notes(doc)
        if notes:
            parts += ["Not timed:", ""] + notes + [""]
        dtypes = sorted({c["dtype"] for c in doc["cases"]}, key=lambda d: (d != "f32", d))
        for dt in dtypes:
            for sweep, x, label in (("batch", "B", "batch size"), ("hidden", "H", "hidden size")):
                name = f"{hw}-speedup-vs-{label.split()[0]}" + ("" if dt == "f32" else f"-{dt}") + ".png"
                p = plot_sweep(doc, sweep, x, label, Path(plots_dir) / name, dt)
                if p is not None:
                    plots.append(p)
                    md_dir = Path(out_md).resolve().parent
                    rel = p.resolve().relative_to(md_dir) if p.resolve().is_relative_to(md_dir) else p
                    parts += [f"![{hw} speedup vs {label}, {dt}]({rel})", ""]
        roof = roofline_table(doc)
        if roof:
            parts += ["<details><summary>Roofline: each case's bound, T · max(step flops / matrix peak, "
                      "step weight bytes / cache-streaming rate) (training: 3x the flops, the weights read "
                      "twice), and each implementation's achieved fraction of it</summary>", "", roof, "",
                      "</details>", ""]
        parts += ["<details><summary>Details: spread, GFLOP/s, fraction of the matrix peak, memory, "
                  "error vs torch, packed/padded, first call</summary>", "", detail_table(doc), "", "</details>", ""]
        cud = [(c["id"], c["cudnn"]) for c in doc["cases"] if c.get("cudnn")]
        if cud:
            parts += ["cuDNN algorithm torch used (from profiler kernel names):", ""]
            parts += [f"- {cid}: {d['algo']} ({', '.join(d['kernels'][:3])})" for cid, d in cud] + [""]
    sdocs = load_kind(results_dir, "stream")
    if sdocs:
        parts += ["## Streaming: one frame per call", "",
                  "Generated from `results/stream/` (`python -m fastrnn.bench stream`): real-time code "
                  "calls the network once per frame with the state carried; `stream` is `fastrnn.Stream`.", ""]
        for sdoc in sdocs:
            parts += stream_section(sdoc)
    cdocs = load_kind(results_dir, "custom")
    if cdocs:
        parts += ["## Custom cells: LayerNorm-LSTM/GRU and a user-defined (peephole) cell", "",
                  "Generated from `results/custom/` (`python benchmarks/bench_custom.py`): fwd+bwd of the "
                  "fused cells against the same step as a Python loop (eager, and its step under "
                  "torch.compile), the numba `@njit` whole loop, and fastrnn's plain LSTM/GRU at the "
                  "same shape; the GEMM bound is the cell's products alone at torch.mm's fastest rate.", ""]
        for cdoc in cdocs:
            parts += custom_section(cdoc)
    mdocs = load_kind(results_dir, "models")
    if mdocs:
        parts += ["## Whole models: training steps, torch.nn vs fastrnn", "",
                  "Generated from `results/models/` (`python -m fastrnn.bench models`).", ""]
        for mdoc in mdocs:
            parts += models_section(mdoc)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text("\n".join(parts))
    return Path(out_md), plots
