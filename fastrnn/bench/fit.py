"""`python -m fastrnn.bench fit [RESULTS.json ...]`: auto's dispatch table from benchmark results.

Reads benchmarks/results/cpu-*.json (default: every one) and rewrites fastrnn/dispatch_table.py:
the hand-measured defaults, and per CPU class the thresholds its results file brackets. A
threshold "torch above m" moves only where the file shows torch winning: it is set to the largest
m at which the backend still won below the first loss (0 where the smallest measured case lost),
so each edge sits at or below the last shape where we won and auto stays at least as fast as
torch on every measured case. Where the file shows no loss, the default stays (an edge nobody
measured is not extrapolated). Also refits the CUDA table (fastrnn.gpu_dispatch.fit).
"""
from __future__ import annotations

import itertools
import json
import pprint
from pathlib import Path

from fastrnn.cells import gates

ROOT = Path(__file__).resolve().parents[2]
TABLE_FILE = ROOT / "fastrnn" / "dispatch_table.py"


def _step_flops(c) -> float:
    H = c["H"]
    return 2.0 * c["B"] * (c["proj"] or H) * gates("rnn_tanh" if c["cell"] == "rnn" else c["cell"]) * H


def _won(c, backend, tie: float = 0.0):
    """Whether `backend` ran case `c` at least as fast as torch, None if unmeasured.  With `tie`, a
    difference within `tie`, or where the two timings' quartile ranges overlap, is not a loss:
    the run could not tell them apart."""
    r = c.get("results", {})
    if backend not in r or "torch" not in r or "median_s" not in r[backend] or "median_s" not in r["torch"]:
        return None
    t, b = r["torch"], r[backend]
    if not tie:
        return t["median_s"] >= b["median_s"]
    overlap = "q3_s" in t and "q1_s" in b and t["q3_s"] >= b["q1_s"]
    return t["median_s"] * (1 + tie) >= b["median_s"] or overlap


def _edge(points, default_key: str = ""):
    """points: [(metric, won, case id)] -> (edge, evidence) or None where no loss was measured.
    With `default_key`, the default row's edge stands where it lies between the last win and the
    first loss (the files measured nothing there)."""
    points = sorted(points)
    losses = [p for p in points if not p[1]]
    if not losses:
        return None
    first_loss = losses[0][0]
    wins = [p for p in points if p[1] and p[0] < first_loss]
    edge = wins[-1][0] if wins else 0
    if default_key:
        from fastrnn import dispatch_table
        default = dispatch_table.TABLE["default"][default_key]["value"]
        if edge < default < first_loss:
            return default, f"default kept, nothing measured between it and {losses[0][2]} lost"
    shown = ([wins[-1]] if wins else []) + [losses[0]]
    return edge, ", ".join(f"{cid} {'won' if w else 'lost'}" for _, w, cid in shown)


def _raised(points, key):
    """Where no case lost: the largest measured win, if it lies above the default's edge (a win
    measured is evidence; the edge is never lowered without a loss), else None."""
    from fastrnn import dispatch_table
    wins = sorted(p for p in points if p[1])
    if not wins or wins[-1][0] <= dispatch_table.TABLE["default"][key]["value"]:
        return None
    return wins[-1][0], f"no loss measured, largest win {wins[-1][2]} won"


def _ratio(c, backend):
    r = c["results"]
    return r["torch"]["median_s"] / r[backend]["median_s"]


def _cpp_plan(c):
    """The loop cpp ran on this oneDNN LSTM case where that loop alone decides whether cpp keeps
    it (the defaults' short-sequence and few-row rules do not apply): the one plan every layer ran
    (`cpp_plans`, written by the runner; files without it leave the rule at its default, so a fit
    never depends on the machine that runs it), else None."""
    from fastrnn import dispatch_table
    d = {k: v["value"] for k, v in dispatch_table.TABLE["default"].items()}
    lo, hi = d["onednn_mid_hidden"]
    if c["T"] <= d["onednn_short_steps"] or c["B"] <= d["onednn_few_rows"] or (
            c["B"] <= d["onednn_narrow_rows"] and not lo < c["H"] < hi):
        return False
    plans = set(c.get("cpp_plans") or ())
    return plans.pop() if len(plans) == 1 else None


def _wide_edge(mine, cid):
    """Where the rows rule stops at a loss of a narrow layer while every wider case won: the
    hidden sizes above the widest loss that were measured and the most rows measured winning
    there, as [narrowest, widest, rows] (or None: no loss, or fewer than two wins above it). As
    in `_edge`, nothing wider than the widest case measured, or with more rows, is claimed."""
    losses = [c for c in mine if not _won(c, "cpp")]
    if not losses:
        return None
    widest_loss = max(losses, key=lambda c: c["H"])
    above = [c for c in mine if c["H"] > widest_loss["H"]]
    if len(above) < 2:
        return None
    above.sort(key=lambda c: (c["H"], c["B"]))
    return ([above[0]["H"], above[-1]["H"], max(c["B"] for c in above)],
            f"{', '.join(cid(c, 'cpp') for c in above[:4])} won; widest loss {cid(widest_loss, 'cpp')}")


def _onednn_case(c) -> bool:
    """A case torch runs on oneDNN's fused LSTM: float32 LSTM without projection on padded input."""
    return c["cell"] == "lstm" and c["dtype"] == "f32" and not c["proj"] and not c["packed"]


def _without_plans(cases) -> bool:
    """Whether a CPU class's results hold oneDNN LSTM cases and none recorded cpp's loop."""
    return any(_onednn_case(c) for c in cases) and not any(c.get("cpp_plans") for c in cases)


def _fit_onednn_without_plans(cases, put, cid):
    """The oneDNN rules of a CPU class whose results predate `cpp_plans` (the loop each case ran is
    unknown): from all its float32 LSTM cases together, whatever loop ran.  The rows below which
    cpp runs any width (`onednn_few_rows`), then the narrow layers' rows, then the rows of every
    loop plan, each lowered only to a measured loss (a tie within TIE is not one) and never raised
    above the default: the defaults were measured on another CPU class (AMD Zen4), and a class
    that loses to oneDNN where they claim cpp wins must not inherit them."""
    from fastrnn import dispatch_table
    d = {k: v["value"] for k, v in dispatch_table.TABLE["default"].items()}
    lstm = [c for c in cases if _onednn_case(c) and c["T"] > d["onednn_short_steps"] and _won(c, "cpp") is not None]

    def lowered(key, mine, what):
        fitted = _edge([(c["B"], _won(c, "cpp", TIE), cid(c, "cpp")) for c in mine])
        if fitted is not None and fitted[0] < d[key]:
            put(key, fitted, what)
            return fitted[0]
        return d[key]

    few = lowered("onednn_few_rows", [c for c in lstm if c["B"] <= d["onednn_few_rows"]],
                  "rows up to which cpp beat oneDNN's LSTM at every width (no loop recorded)")
    lo, hi = d["onednn_mid_hidden"]
    narrow_cases = [c for c in lstm if few < c["B"] <= d["onednn_narrow_rows"] and not lo < c["H"] < hi]
    if narrow_cases:
        narrow = lowered("onednn_narrow_rows", narrow_cases,
                         "rows up to which cpp beat oneDNN's narrow and wide LSTM (no loop recorded)")
    else:
        narrow = min(few, d["onednn_narrow_rows"])  # not claimed past a loss at fewer rows
        if narrow < d["onednn_narrow_rows"]:
            put("onednn_narrow_rows", (narrow, f"nothing measured; {few} rows already lost at every width"),
                "rows up to which cpp beat oneDNN's narrow and wide LSTM (no loop recorded)")
    rest = [c for c in lstm if c["B"] > few and not (c["B"] <= narrow and not lo < c["H"] < hi)]
    for mode in ("fwd", "fwdbwd"):
        points = [(c["B"], _won(c, "cpp", TIE), cid(c, "cpp")) for c in rest if c["mode"] == mode]
        if not points:
            continue
        fitted = _edge(points) or (max(points)[0], ", ".join(p[2] for p in sorted(points)[-3:]))
        for plan in ("panel+step", "panel", "blas"):
            key = f"onednn_cpp_rows.{plan}.{mode}"
            if fitted[0] < d[key]:
                put(key, fitted, "rows up to which cpp beat oneDNN's LSTM, any loop (none recorded)")


def _weight_bytes(c) -> int:
    """[W_ih; W_hh] of one direction of the first layer in float32, as csrc/loop_plan.cpp counts it."""
    G = gates("rnn_tanh" if c["cell"] == "rnn" else c["cell"])
    return (c["I"] or c["H"]) * G * c["H"] * 4 + c["H"] * G * c["H"] * 4


# The rule keys of cpp's bf16 paths (`cpp.NATIVE_ISA`, recorded by the runner as cpp_native_bf16):
# the float32 upcast, AMX tiles, vdpbf16ps alone (fastrnn/dispatch.py reads the same).
NATIVE_KEYS = {"": "", "amx_bf16": ".native", "avx512_bf16": ".native_dp"}

# Quiet reruns of one case move a ratio by ~2-3% (2-core Xeon, medians of 5): a difference
# within that is a tie, not a measured loss (the loop-plan and half-type fits).
TIE = 0.03


def _fit_input_plan(cases, put):
    """cpp's in-step input projection (csrc/loop_plan.h) from `--plans` cases, per pass: the forward
    from forward cases (projection in the steps vs before the loop), the backward from training
    cases (dx in the steps vs after the loop, the forward in its steps both times). Per pass, the
    largest weight size, and then the largest weight bytes per batch row, at which the steps still
    won below the first loss."""
    for pas, mode, steps, other in (("forward", "fwd", "cpp:input=step", "cpp:input=before"),
                                    ("backward", "fwdbwd", "cpp:input=step", "cpp:input=step/before")):
        timed = [c for c in cases if c["mode"] == mode and c["B"] >= 4 and all(
            "median_s" in c.get("results", {}).get(k, {}) for k in (steps, other))]
        if not timed:
            continue

        def won(c, steps=steps, other=other):  # a tie within the spread of repeated runs keeps the steps
            return c["results"][other]["median_s"] * (1 + TIE) >= c["results"][steps]["median_s"]

        def cid(c, steps=steps, other=other):
            return f"{c['id']} in steps x{c['results'][other]['median_s'] / c['results'][steps]['median_s']:.2f}"

        key = f"cpp.step_input.{pas}"
        cached = _edge([(_weight_bytes(c), won(c), cid(c)) for c in timed])
        put(f"{key}.cached_bytes", cached, f"[W_ih; W_hh] bytes up to which cpp's in-step {pas} won")
        if cached is not None:
            above = [c for c in timed if _weight_bytes(c) > cached[0]]
            put(f"{key}.bytes_per_row",
                _edge([(_weight_bytes(c) // c["B"], won(c), cid(c)) for c in above]) if above else None,
                f"weight bytes per batch row up to which the in-step {pas} won above that size")


def _fit_panel_loop(cases, put):
    """Up to which W_hh size (one direction, float32) cpp's panel loop runs forwards of 16 rows or
    more (csrc/loop_plan.cpp: kBlasLoopMinRows), from `--plans` cases: the BLAS loop
    (`cpp:loop=blas`) against the better of the panel loop's two input plans. The backward's limit
    is not fitted: a training case forces both passes onto one loop, and on the 2-core Xeon those
    timings split by rows, not by size (BLAS ahead at 64 rows by 3-13%, behind or tied at 16 by up
    to 9%), which a byte limit cannot follow."""
    for pas, mode in (("forward", "fwd"),):
        panels = ("cpp:input=step", "cpp:input=before")
        timed = [c for c in cases if c["mode"] == mode and c["B"] >= 16 and "median_s" in c.get(
            "results", {}).get("cpp:loop=blas", {}) and any("median_s" in c["results"].get(k, {}) for k in panels)]
        if not timed:
            continue

        def panel(c):
            return min(c["results"][k]["median_s"] for k in panels if "median_s" in c["results"].get(k, {}))

        def won(c):  # a tie within the spread of repeated runs keeps the panel loop
            return c["results"]["cpp:loop=blas"]["median_s"] * (1 + TIE) >= panel(c)

        def cid(c):
            return f"{c['id']} panel x{c['results']['cpp:loop=blas']['median_s'] / panel(c):.2f}"

        G = lambda c: gates("rnn_tanh" if c["cell"] == "rnn" else c["cell"])  # noqa: E731
        put(f"cpp.panel_loop.{pas}.max_bytes", _edge([(G(c) * c["H"] * c["H"] * 4, won(c), cid(c)) for c in timed]),
            f"W_hh bytes up to which cpp's panel loop beat its BLAS loop at 16+ rows ({pas})")


def fit_file(path) -> dict:
    """The fitted row of one CPU class from its results file(s): {rule key: {"value", "from"}}."""
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    cases = []
    for p in paths:
        doc = json.loads(p.read_text())
        native = doc.get("env", {}).get("cpp_native_bf16") or ""  # cpp's native bf16 path measured, if any
        cases += [dict(c, native_bf16=native) for c in doc["cases"]]
    name = " + ".join(p.name for p in paths)
    row: dict = {}

    def put(key, fitted, what):
        if fitted is not None:
            value, evidence = fitted
            row[key] = {"value": value, "from": f"{name}: {what}; {evidence}"}

    def cid(c, backend):
        return f"{c['id']} x{_ratio(c, backend):.2f}"

    for mode in ("fwd", "fwdbwd"):
        plain = [c for c in cases if c["mode"] == mode and c["dtype"] in ("f32", "f64") and c["T"] > 1
                 and not _onednn_case(c)]
        pts = [(_step_flops(c), _won(c, "numba"), cid(c, "numba")) for c in plain if _won(c, "numba") is not None]
        put(f"numba_flops_above.{mode}", _edge(pts), "per-step GEMM flops where torch beat numba")
        for short, half, native in (("bf16", "bfloat16", ""), ("bf16", "bfloat16", "amx_bf16"),
                                    ("bf16", "bfloat16", "avx512_bf16"), ("f16", "float16", "")):
            # a case measured with one of cpp's native bf16 paths fits that path's own keys
            key = half + NATIVE_KEYS[native]
            # CPU autocast runs every RNN module's products in bf16 (fastrnn/modules.py): its cases
            # are bf16 calls with the casts in front
            kinds = (short, "autocast") if short == "bf16" else (short,)
            hc = [c for c in cases if c["mode"] == mode and c["dtype"] in kinds and _won(c, "cpp") is not None
                  and c["native_bf16"] == native]
            fused = [c for c in hc if c["cell"] == "lstm" and not c["proj"] and not c["packed"]]
            rows = [(c["B"], _won(c, "cpp", TIE), cid(c, "cpp")) for c in fused]
            rkey = f"{key}.fused_lstm_rows_above.{mode}"
            put(rkey, _edge(rows, rkey) or _raised(rows, rkey), f"rows where torch's fused {half} LSTM beat cpp")
            flops = [(_step_flops(c), _won(c, "cpp", TIE), cid(c, "cpp")) for c in hc if c not in fused]
            put(f"{key}.gemm_flops_above.{mode}", _edge(flops) or _raised(flops, f"{key}.gemm_flops_above.{mode}"),
                f"per-step GEMM flops where torch's {half} beat cpp")
    onednn = [c for c in cases if _onednn_case(c) and _won(c, "cpp") is not None and _cpp_plan(c)]
    for plan in sorted({_cpp_plan(c) for c in onednn}):
        for mode in ("fwd", "fwdbwd"):
            for bi in (False, True):
                mine = [c for c in onednn if c["mode"] == mode and _cpp_plan(c) == plan and bool(c["bidir"]) == bi]
                points = [(c["B"], _won(c, "cpp"), cid(c, "cpp")) for c in mine]
                # where no case lost, cpp keeps up to the largest batch measured (not extrapolated)
                won_all = (max(points)[0], ", ".join(p[2] for p in sorted(points)[-3:])) if points else None
                put(f"onednn_cpp_rows.{plan}.{mode}" + (".bi" if bi else ""), _edge(points) or won_all,
                    f"rows up to which cpp's {plan} loop beat oneDNN's {'bidirectional ' if bi else ''}LSTM")
                put(f"onednn_cpp_wide.{plan}.{mode}" + (".bi" if bi else ""), _wide_edge(mine, cid),
                    f"[hidden from, hidden to, rows]: at those widths cpp's {plan} loop beat oneDNN's "
                    f"{'bidirectional ' if bi else ''}LSTM on every case measured, up to those rows")
    if _without_plans(cases):
        _fit_onednn_without_plans(cases, put, cid)
    _fit_input_plan(cases, put)
    _fit_panel_loop(cases, put)
    one = [c for c in cases if c["T"] == 1 and c["dtype"] in ("f32", "f64") and _won(c, "cpp") is not None
           and not _onednn_case(c)]
    for (short, full), mode in itertools.product((("f32", "float32"), ("f64", "float64")), ("fwd", "fwdbwd")):
        mine = [c for c in one if c["dtype"] == short and c["mode"] == mode]
        if mine:
            lost = [c for c in mine if not _won(c, "cpp")]
            row[f"one_step_to_torch.{full}.{mode}"] = {
                "value": bool(lost), "from": f"{name}: one-step layer calls, "
                + ", ".join(cid(c, "cpp") for c in (lost or mine)[:4])}
    return row


def fit(paths=None, out: Path | None = None) -> str:
    """Refit the CPU table (and the CUDA one); returns a summary line per file."""
    from fastrnn import dispatch_table, gpu_dispatch
    paths = [Path(p) for p in paths or []] or sorted((ROOT / "benchmarks" / "results").glob("cpu-*.json"))
    table = {"default": dispatch_table.TABLE["default"]}
    lines = []
    by_hardware: dict = {}  # a machine's grid may come in several files (the quick grid, a sweep)
    for path in paths:
        doc = json.loads(path.read_text())
        if doc.get("kind", "grid") != "grid" or not str(doc.get("hardware_id", "")).startswith("cpu"):
            continue
        by_hardware.setdefault(doc["hardware_id"], []).append(path)
    for hw, files in sorted(by_hardware.items()):
        row = fit_file(files)
        table[hw] = row
        lines.append(f"{hw}: {len(row)} fitted thresholds "
                     + ", ".join(f"{k}={v['value']}" for k, v in sorted(row.items())))
    text = ('"""auto\'s dispatch thresholds (read by fastrnn/dispatch.py): written by `python -m fastrnn.bench\n'
            'fit` from benchmarks/results/cpu-*.json; edit only the "default" row (the hand measurements).\n'
            'Each value names the measurement it came from."""\n'
            f"TABLE = {pprint.pformat(table, width=110, sort_dicts=True)}\n")
    Path(out or TABLE_FILE).write_text(text)
    if out is None:
        import importlib
        from fastrnn import dispatch
        importlib.reload(dispatch_table)
        dispatch.clear()
    lines.append(gpu_dispatch.fit() if out is None else "CUDA table not refitted (out= given)")
    return "\n".join(lines) or "no CPU results file"
