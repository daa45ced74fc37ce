"""auto's dispatch table (fastrnn/dispatch_table.py) is data fitted from the benchmark results.

The committed table is what `python -m fastrnn.bench fit` writes from the committed results, and
the fit moves an edge only to where a results file shows torch winning."""
from __future__ import annotations

import json

import torch

from fastrnn import dispatch
from fastrnn.backends import LayerCall
from fastrnn.bench import fit


def test_committed_table_is_the_fit_of_the_committed_results(tmp_path):
    out = tmp_path / "table.py"
    fit.fit(out=out)
    assert out.read_text() == fit.TABLE_FILE.read_text(), "run `python -m fastrnn.bench fit` and commit the table"


def _case(cell, B, H, mode, torch_s, numba_s, T=100, dtype="f32"):
    return {"cell": cell, "T": T, "B": B, "H": H, "I": H, "layers": 1, "bidir": False, "proj": 0, "packed": "",
            "mode": mode, "dtype": dtype, "id": f"{cell}-B{B}-H{H}-{mode}",
            "results": {"torch": {"median_s": torch_s}, "numba": {"median_s": numba_s}}}


def test_fit_moves_an_edge_only_to_a_measured_loss(tmp_path):
    cases = [_case("gru", 1, 128, "fwd", 2.0, 1.0), _case("gru", 16, 128, "fwd", 2.0, 1.0),
             _case("gru", 64, 256, "fwd", 1.0, 2.0), _case("gru", 64, 512, "fwd", 2.0, 1.0),  # a win past a loss
             _case("gru", 16, 128, "fwdbwd", 2.0, 1.0)]                                     # no loss: no edge
    path = tmp_path / "cpu-test-2c.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "cases": cases}))
    row = fit.fit_file(path)
    assert row["numba_flops_above.fwd"]["value"] == 2.0 * 16 * 128 * 3 * 128   # the last win below the loss
    assert "gru-B64-H256-fwd x0.50 lost" in row["numba_flops_above.fwd"]["from"]
    assert "numba_flops_above.fwdbwd" not in row


def _half_case(cell, B, H, mode, torch_q, cpp_q, dtype="bf16"):
    """q: (q1, median, q3) seconds."""
    def timing(q):
        return {"q1_s": q[0], "median_s": q[1], "q3_s": q[2]}
    return {"cell": cell, "T": 100, "B": B, "H": H, "I": H, "layers": 1, "bidir": False, "proj": 0, "packed": "",
            "mode": mode, "dtype": dtype, "id": f"{cell}-B{B}-H{H}-{mode}-{dtype}",
            "results": {"torch": timing(torch_q), "cpp": timing(cpp_q)}}


def test_half_type_fit_counts_a_loss_only_where_the_run_tells_it(tmp_path):
    """A half-type case is lost only where cpp's median is over 3% slower and the two timings'
    quartile ranges do not overlap; autocast cases count as bf16 calls; with no loss, a rows or
    flops edge rises to the largest measured win (never below the default)."""
    cases = [_half_case("lstm", 1, 512, "fwd", (2.75, 2.89, 3.09), (2.95, 3.10, 3.23)),   # 0.93, ranges overlap
             _half_case("lstm", 16, 256, "fwd", (3.1, 3.3, 3.4), (2.7, 2.8, 2.8)),
             _half_case("lstm", 64, 512, "fwd", (24.8, 25.8, 25.9), (26.5, 27.0, 27.4), "autocast"),  # lost
             _half_case("lstm", 64, 256, "fwdbwd", (49, 50, 51), (45, 46, 46)),
             _half_case("gru", 64, 512, "fwdbwd", (170, 175, 180), (110, 115, 120))]
    path = tmp_path / "cpu-test-2c.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "env": {"cpp_native_bf16": "amx_bf16"}, "cases": cases}))
    row = fit.fit_file(path)
    assert row["bfloat16.native.fused_lstm_rows_above.fwd"]["value"] == 16
    assert row["bfloat16.native.fused_lstm_rows_above.fwdbwd"]["value"] == 64
    assert row["bfloat16.native.gemm_flops_above.fwdbwd"]["value"] == 2.0 * 64 * 512 * 3 * 512
    # the same timings of the vdpbf16ps path (no AMX) fit its own keys, and only those
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "env": {"cpp_native_bf16": "avx512_bf16"},
                                "cases": cases}))
    row = fit.fit_file(path)
    assert row["bfloat16.native_dp.fused_lstm_rows_above.fwd"]["value"] == 16
    assert not any(k.startswith(("bfloat16.native.", "bfloat16.fused", "bfloat16.gemm")) for k in row)


def _plan_case(cell, B, H, mode, step_s, before_s):
    other = "cpp:input=before" if mode == "fwd" else "cpp:input=step/before"
    return {"cell": cell, "T": 100, "B": B, "H": H, "I": 0, "layers": 1, "bidir": False, "proj": 0, "packed": "",
            "mode": mode, "dtype": "f32", "id": f"{cell}-B{B}-H{H}-{mode}",
            "results": {"torch": {"median_s": 1.0}, "cpp:input=step": {"median_s": step_s},
                        other: {"median_s": before_s}}}


def test_fit_of_the_in_step_projection_limits(tmp_path):
    """`--plans` timings move the loop plan's byte limits to the last size the steps won at."""
    mib = 1 << 20
    cases = [_plan_case("lstm", 4, 128, "fwd", 1.0, 1.2),      # 0.5 MiB: won
             _plan_case("gru", 4, 256, "fwd", 1.02, 1.0),      # 1.5 MiB: a tie (2%), kept
             _plan_case("lstm", 4, 256, "fwd", 1.1, 1.0),      # 2 MiB: lost
             _plan_case("lstm", 64, 512, "fwd", 1.0, 1.3),     # 8 MiB, 128 KiB a row: won
             _plan_case("rnn", 4, 1024, "fwd", 1.2, 1.0),      # 8 MiB, 2 MiB a row: lost
             _plan_case("lstm", 2, 1024, "fwd", 1.2, 1.0),     # under 4 rows the steps never run
             _plan_case("gru", 4, 128, "fwdbwd", 1.2, 1.0)]    # the backward: lost at its smallest
    path = tmp_path / "cpu-test-2c.plans.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "cases": cases}))
    row = fit.fit_file(path)
    fwd, bwd = "cpp.step_input.forward", "cpp.step_input.backward"
    assert row[f"{fwd}.cached_bytes"]["value"] == 1.5 * mib
    assert "lstm-B4-H256-fwd in steps x0.91 lost" in row[f"{fwd}.cached_bytes"]["from"]
    assert row[f"{fwd}.bytes_per_row"]["value"] == 8 * mib // 64
    assert row[f"{bwd}.cached_bytes"]["value"] == 0 and row[f"{bwd}.bytes_per_row"]["value"] == 0


def test_fit_of_the_panel_loop_limit(tmp_path):
    """`--plans` timings of the BLAS loop (`cpp:loop=blas`) against the better panel input plan
    move the forward's panel loop W_hh limit (16+ rows) to the last size the panel loop won at."""
    def case(cell, B, H, mode, panel_s, blas_s):
        c = _plan_case(cell, B, H, mode, panel_s, panel_s * 1.5)
        c["results"]["cpp:loop=blas"] = {"median_s": blas_s}
        return c
    cases = [case("gru", 64, 256, "fwd", 1.0, 1.2),      # W_hh 0.75 MiB: panel won
             case("gru", 16, 512, "fwd", 1.02, 1.0),     # 3 MiB: a tie (2%), kept
             case("gru", 64, 1024, "fwd", 1.2, 1.0),     # 12 MiB: lost
             case("gru", 4, 2048, "fwd", 1.5, 1.0),      # under 16 rows: not this rule's
             case("rnn", 64, 256, "fwdbwd", 1.2, 1.0)]   # the backward: not fitted
    path = tmp_path / "cpu-test-2c.plans.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "cases": cases}))
    row = fit.fit_file(path)
    assert row["cpp.panel_loop.forward.max_bytes"]["value"] == 3 * 512 * 512 * 4
    assert "gru-B64-H1024-fwd panel x0.83 lost" in row["cpp.panel_loop.forward.max_bytes"]["from"]
    assert "cpp.panel_loop.backward.max_bytes" not in row


def test_fit_of_cpp_against_onednn_per_loop(tmp_path):
    """oneDNN's LSTM against cpp, fitted per loop cpp ran (`cpp_plans`) and pass as a row edge: the
    last batch cpp won below the first loss, or the largest measured where none lost; a case the
    default rules decide (few rows) or without plans counts not."""
    def case(B, mode, plan, torch_s, cpp_s, plans=True):
        c = _case("lstm", B, 512, mode, torch_s, 1.0)
        c["results"]["cpp"] = {"median_s": cpp_s}
        if plans:
            c["cpp_plans"] = [plan]
        return c
    cases = [case(4, "fwd", "panel", 1.2, 1.0), case(16, "fwd", "panel", 1.0, 1.1),      # a loss at 16
             case(64, "fwd", "panel", 1.2, 1.0),
             case(16, "fwdbwd", "panel", 1.2, 1.0), case(64, "fwdbwd", "panel", 1.1, 1.0),  # no loss
             case(64, "fwdbwd", "panel+step", 1.0, 1.2),
             case(2, "fwd", "panel+step", 1.0, 2.0),                                      # few rows
             case(64, "fwd", "blas", 1.0, 2.0, plans=False)]                              # no plans
    path = tmp_path / "cpu-test-2c.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "cases": cases}))
    row = fit.fit_file(path)
    assert row["onednn_cpp_rows.panel.fwd"]["value"] == 4
    assert "lstm-B16-H512-fwd x0.91 lost" in row["onednn_cpp_rows.panel.fwd"]["from"]
    assert row["onednn_cpp_rows.panel.fwdbwd"]["value"] == 64
    assert row["onednn_cpp_rows.panel+step.fwdbwd"]["value"] == 0
    assert "onednn_cpp_rows.panel+step.fwd" not in row and "onednn_cpp_rows.blas.fwd" not in row
    assert not any(k.startswith("onednn_cpp_wide.") for k in row)  # one width measured: no split


def test_fit_of_the_width_split_against_onednn(tmp_path):
    """Where a narrow layer's loss stops the rows rule and every wider case won, the fit adds
    [narrowest hidden above the widest loss, most rows won there]; one win above is not enough."""
    def case(B, H, torch_s, cpp_s, mode="fwdbwd"):
        c = _case("lstm", B, H, mode, torch_s, 1.0)
        c["results"]["cpp"] = {"median_s": cpp_s}
        c["cpp_plans"] = ["panel+step"]
        return c
    cases = [case(16, 128, 1.0, 1.07), case(64, 128, 1.0, 1.07),    # narrow: lost
             case(16, 256, 1.3, 1.0), case(256, 256, 1.3, 1.0), case(64, 512, 1.2, 1.0),
             case(16, 128, 1.0, 1.07, "fwd"), case(64, 256, 1.2, 1.0, "fwd")]  # fwd: one win above
    path = tmp_path / "cpu-test-2c.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-2c", "cases": cases}))
    row = fit.fit_file(path)
    assert row["onednn_cpp_rows.panel+step.fwdbwd"]["value"] == 0
    assert row["onednn_cpp_wide.panel+step.fwdbwd"]["value"] == [256, 512, 256]
    assert "widest loss lstm-B16-H128-fwdbwd x0.93" in row["onednn_cpp_wide.panel+step.fwdbwd"]["from"]
    assert "onednn_cpp_wide.panel+step.fwd" not in row


def test_rules_read_the_table(monkeypatch):
    call = LayerCall(cell="gru", device="cpu", dtype=torch.float32, input_size=64, hidden_size=64, proj_size=0,
                     batch=4, steps=50, directions=1, packed=False, needs_grad=False)
    t = dict(dispatch.table())
    monkeypatch.setattr(dispatch, "table", lambda: {**t, "numba_flops_above.fwd": 0})
    assert "numba loop" in dispatch.torch_wins("numba", call)
    monkeypatch.setattr(dispatch, "table", lambda: {**t, "numba_flops_above.fwd": 1e12})
    assert dispatch.torch_wins("numba", call) == ""
    one = LayerCall(**{**call.__dict__, "steps": 1})
    monkeypatch.setattr(dispatch, "table", lambda: {**t, "one_step_to_torch.float32.fwd": False})
    assert dispatch.torch_wins("cpp", one) == ""
    monkeypatch.setattr(dispatch, "table", lambda: {**t, "one_step_to_torch.float32.fwd": True,
                                                    "one_step_to_torch.float32.fwdbwd": False})
    assert "single" in dispatch.torch_wins("cpp", one)
    assert dispatch.torch_wins("cpp", LayerCall(**{**one.__dict__, "needs_grad": True})) == ""
    assert dispatch.source("onednn_short_steps")


def test_fit_against_onednn_without_recorded_loops(tmp_path):
    """A CPU class measured before the runner recorded cpp's loop: its LSTM cases together lower
    the few-row rule, the narrow rule (to the few-row edge where nothing narrow was measured) and
    every loop's rows to the measured losses (a tie within 3% is none), and never raise a default."""
    def case(B, H, mode, torch_s, cpp_s):
        c = _case("lstm", B, H, mode, torch_s, 1.0)
        c["results"]["cpp"] = {"median_s": cpp_s}
        return c
    lossy = [case(1, 256, "fwd", 1.0, 1.2), case(16, 256, "fwd", 1.0, 1.3), case(64, 128, "fwdbwd", 1.3, 1.0)]
    path = tmp_path / "cpu-test-avx2-2c.json"
    path.write_text(json.dumps({"hardware_id": "cpu-test-avx2-2c", "cases": lossy}))
    row = fit.fit_file(path)
    assert row["onednn_few_rows"]["value"] == 0 and "lstm-B1-H256-fwd x0.83 lost" in row["onednn_few_rows"]["from"]
    assert row["onednn_narrow_rows"]["value"] == 0
    for plan in ("panel+step", "panel"):  # blas and panel default to 0 already: not written again
        assert (f"onednn_cpp_rows.{plan}.fwd" in row) == (plan == "panel+step")
    assert row["onednn_cpp_rows.panel+step.fwd"]["value"] == 0
    assert row["onednn_cpp_rows.panel+step.fwdbwd"]["value"] == 64  # no loss: the largest win, below the default
    winning = [case(1, 256, "fwd", 1.2, 1.0), case(4, 128, "fwd", 1.0, 1.02),   # a 2% tie is no loss
               case(16, 512, "fwd", 1.2, 1.0), case(64, 512, "fwd", 1.0, 1.2)]
    path.write_text(json.dumps({"hardware_id": "cpu-test-avx2-2c", "cases": winning}))
    row = fit.fit_file(path)
    assert "onednn_few_rows" not in row and "onednn_narrow_rows" not in row
    assert row["onednn_cpp_rows.panel+step.fwd"]["value"] == 16
    recorded = [dict(c, cpp_plans=["panel+step"]) for c in lossy]  # loops recorded: the per-loop fit only
    path.write_text(json.dumps({"hardware_id": "cpu-test-avx2-2c", "cases": recorded}))
    row = fit.fit_file(path)
    assert "onednn_few_rows" not in row and row["onednn_cpp_rows.panel+step.fwd"]["value"] == 0


def test_unknown_cpu_gets_the_nearest_row(monkeypatch):
    """An unknown CPU takes its own model's row on another core count, else the row of another
    model with its vector ISA (its vendor first), else the defaults."""
    from fastrnn import dispatch_table
    rule = "onednn_few_rows"
    fake = {"default": dispatch_table.TABLE["default"],
            "cpu-amd-epyc-avx2-2c": {rule: {"value": 0, "from": "zen3"}},
            "cpu-amd-epyc-avx512-2c": {rule: {"value": 5, "from": "zen4"}},
            "cpu-intel-xeon-avx512-2c": {rule: {"value": 7, "from": "spr"}}}
    monkeypatch.setattr(dispatch_table, "TABLE", fake)
    dispatch.table.cache_clear()
    try:
        default = fake["default"][rule]["value"]
        assert dispatch.table("cpu-amd-epyc-avx512-16c")[rule] == 5              # same model
        assert dispatch.table("cpu-intel-core-i7-avx2-8c")[rule] == 0            # same ISA
        assert dispatch.table("cpu-intel-xeon-gold-6338-avx512-4c")[rule] == 7   # same ISA and vendor
        assert dispatch.table("cpu-amd-epyc-9654-avx512-4c")[rule] == 5
        assert dispatch.source(rule, "cpu-intel-core-i7-avx2-8c") == "zen3"
        assert dispatch.table("cpu-never-seen-64c")[rule] == default             # no ISA known
        assert dispatch.table("cpu-never-seen-64c") == {k: v["value"] for k, v in fake["default"].items()}
    finally:
        dispatch.table.cache_clear()
