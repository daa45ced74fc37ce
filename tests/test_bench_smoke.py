"""The benchmark suite's code path on one tiny case: runner, results file, report, CLI.

Times are not judged beyond being positive; only that every field is there and sane.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastrnn.bench import cases as C
from fastrnn.bench import report, runner
from fastrnn.bench.__main__ import main

TINY = [C.Case("lstm", T=5, B=2, H=8, mode="fwdbwd", sweep="batch"),
        C.Case("lstm", T=5, B=4, H=8, I=6, mode="fwd", sweep="batch")]


@pytest.fixture(scope="module")
def doc():
    names = runner.default_backends("cpu") + ["reference"]
    return runner.run(TINY, "cpu", names, repeats=2, min_time=0.0, warmup=1, peak_n=128, progress=False)


def test_results_document(doc, tmp_path):
    env = doc["env"]
    for key in ("device", "cpu_model", "cores", "torch", "triton", "numba", "onnxruntime", "cuda", "cudnn",
                "git_revision", "date", "first_call_s", "available_backends"):
        assert key in env, key
    assert doc["hardware_id"] == env["hardware_id"] and doc["hardware_id"].startswith("cpu-")
    assert env["matmul_peak_gflops"]["f32"] > 0
    assert [c["id"] for c in doc["cases"]] == [c.id for c in TINY]

    fastrnn_names = [b for b in doc["settings"]["backends"] if b not in runner.PEERS]
    for c in doc["cases"]:
        assert c["flops"] > 0
        res = c["results"]
        assert res[runner.TORCH_NN]["speedup"] == 1.0
        for name in fastrnn_names:
            assert name in res, f"{name} did not run: {c['skipped'].get(name)}"
        assert set(doc["settings"]["backends"]) <= set(res) | set(c["skipped"])
        for name, r in res.items():
            assert 0 < r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"], name
            assert r["n"] >= 2 and r["first_call_s"] > 0
            assert r["gflops"] > 0 and r["speedup"] > 0 and 0 < r["peak_frac"]
            assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
            if name != runner.TORCH_NN:
                assert r["max_abs_err"] < 1e-4, name
                if c["mode"] == "fwdbwd":
                    assert r["max_rel_err_grad"] < 1e-4, name

    path = runner.save(doc, tmp_path / "results" / "x.json")
    assert json.loads(path.read_text())["cases"][0]["results"][runner.TORCH_NN]["median_s"] > 0


def test_report(doc, tmp_path):
    runner.save(doc, tmp_path / "results" / f"{doc['hardware_id']}.json")
    md, plots = report.write(tmp_path / "results", tmp_path / "REPORT.md", tmp_path / "plots")
    text = md.read_text()
    assert doc["hardware_id"] in text and "geomean speedup" in text
    assert all(c.id in text for c in TINY)
    assert plots and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    g = report.geomean_speedups(doc)
    assert math.isclose(g[runner.TORCH_NN][0], 1.0)


def test_cli(doc, tmp_path, capsys):
    assert main(["--quick", "--list"]) == 0
    assert "fastrnns-default-fwd" in capsys.readouterr().out
    runner.save(doc, tmp_path / "r" / "a.json")
    assert main(["report", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "R.md"),
                 "--plots", str(tmp_path / "p")]) == 0
    assert (tmp_path / "R.md").is_file()


def test_grid():
    full = C.grid("cpu")
    assert len({c.id for c in full}) == len(full)
    assert {c.cell for c in full} == set(C.CELLS) and not any(c.gpu_only for c in full)
    assert any(c.H == 2048 for c in C.grid("cuda")) and not any(c.H == 2048 for c in full)
    assert [c.id for c in C.quick("cpu")] == list(C.QUICK)
    packed = next(c for c in full if c.packed == "unsorted")
    ls = C.lengths(packed)
    assert max(ls) == packed.T and min(ls) >= packed.T // 4 and ls != sorted(ls, reverse=True)
    assert C.flops(C.Case("lstm", T=1, B=1, H=1)) == 2 * (1 + 1) * 4


@pytest.mark.gpu
def test_runner_cuda():
    """The CUDA path: events, max_memory_allocated, cuDNN kernel names, bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    tiny = [C.Case("lstm", T=5, B=2, H=8, mode="fwdbwd"), C.Case("gru", T=5, B=2, H=8, dtype="bf16")]
    doc = runner.run(tiny, "cuda", repeats=2, min_time=0.0, warmup=1, peak_n=512, progress=False)
    assert doc["env"]["cudnn"] and set(doc["env"]["matmul_peak_gflops"]) == {"f32", "bf16"}
    for c in doc["cases"]:
        assert c["results"][runner.TORCH_NN]["median_s"] > 0
        assert c["cudnn"]["algo"] in ("standard", "persistent", "unknown") and c["cudnn"]["kernels"]
        for name, r in c["results"].items():
            assert r["peak_mem_bytes"] > 0 and r["gflops"] > 0, name


def test_half_cases():
    """bf16, fp16 and autocast cases are in the grid and the quick set, and run on CPU."""
    full = C.grid("cpu")
    for dt in ("bf16", "f16", "autocast"):
        assert any(c.dtype == dt for c in full), dt
        assert any(c.dtype == dt for c in C.quick("cpu")), dt
    amp = C.Case("gru", T=4, B=2, H=8, mode="fwdbwd", dtype="autocast")
    assert amp.torch_dtype == torch.float32 and amp.compute_dtype == torch.bfloat16
    tiny = [amp, C.Case("lstm", T=4, B=2, H=8, dtype="bf16")]
    doc = runner.run(tiny, "cpu", ["auto", "cpp"], repeats=1, min_time=0.0, warmup=1, peak_n=64, progress=False)
    assert set(doc["env"]["matmul_peak_gflops"]) == {"f32", "bf16"}
    for c in doc["cases"]:
        for name in ("torch", "auto", "cpp"):
            r = c["results"][name]
            assert r["median_s"] > 0 and r["peak_frac"] > 0, (c["id"], name)
            if name != "torch":
                assert r["max_abs_err"] < 0.05, (c["id"], name)  # bf16 rounding, not a wrong answer
    assert "bf16: geomean speedup" in "\n".join(report.dtype_geomeans(doc))


def test_models_harness(tmp_path):
    """One tutorial model, torch.nn and auto each in its own process: same weights, same first
    loss, thread counts recorded, the summary and the report section."""
    from fastrnn.bench import models as M
    runs = {impl: [M.spawn("tutorial-lstm", impl, warmup=1, min_steps=2, min_time=0.0, timeout=120)]
            for impl in ("torch", "auto")}
    for impl, (rec,) in runs.items():
        assert "error" not in rec, rec
        assert rec["impl"] == impl and rec["step_s"] > 0 and rec["layer_s"] > 0 and rec["steps"] >= 2
        assert rec["threads_before"]["intra"] >= 1 and isinstance(rec["threads_changed"], bool)
        assert rec["pid"] != runs["torch" if impl == "auto" else "auto"][0]["pid"]
    assert runs["torch"][0]["rnn_modules"] == ["torch.LSTM"] and runs["auto"][0]["rnn_modules"] == ["fastrnn.LSTM"]
    s = M.summarize("tutorial-lstm", runs)
    r = s["impls"]["auto"]
    assert r["same_weights"] and r["first_loss_diff"] < 1e-5
    for k in ("speedup", "layer_speedup", "amdahl_speedup", "share_bound"):
        assert r[k] > 0, k
    doc = {"schema": M.SCHEMA, "kind": "models", "hardware_id": "cpu-test", "env": runner.environment("cpu"),
           "settings": {"command": "python -m fastrnn.bench models --model tutorial-lstm", "rounds": 1},
           "models": [s]}
    M.save(doc, tmp_path / "results" / "models" / "cpu-test.json")
    md, _ = report.write(tmp_path / "results", tmp_path / "REPORT.md", tmp_path / "plots")
    text = md.read_text()
    assert "Whole models" in text and "tutorial-lstm" in text and "python -m fastrnn.bench models" in text


def test_roofline():
    """The roofline fields (issue 20 item 6): a cache-streaming rate is measured, each case gets a
    bound and each implementation its achieved fraction of it; the report renders them. (A plain
    test, not a benchmark: it checks the fields, never the speed.)"""
    tiny = [C.Case("gru", T=4, B=1, H=16), C.Case("lstm", T=4, B=8, H=16, mode="fwdbwd")]
    threads = torch.get_num_threads()
    rate = runner.cache_rate(C.layer_weight_bytes(tiny[0]), reps=3)
    assert torch.get_num_threads() == threads  # measured at one thread, then restored
    med, best = runner.matmul_peak("cpu", torch.float32, 64, reps=3, best=True)
    assert 0 < med <= best
    assert rate > 0
    b = runner.roofline(tiny[1], 100.0, 10.0)
    steps_bytes = 2 * C.step_weight_bytes(tiny[1])  # forward and the reverse loop
    assert b["compute_bound_s"] == C.flops(tiny[1]) / 100e9
    assert b["cache_bound_s"] == 4 * steps_bytes / 10e9
    assert b["bound_s"] == max(b["compute_bound_s"], b["cache_bound_s"]) and b["bound_by"] in ("compute", "cache")
    doc = runner.run(tiny, "cpu", ["cpp"], repeats=1, min_time=0.0, warmup=1, peak_n=64, progress=False)
    assert set(doc["env"]["cache_rate_gbs"]) == {str(C.layer_weight_bytes(c)) for c in tiny}
    assert doc["env"]["matmul_best_gflops"]["f32"] >= doc["env"]["matmul_peak_gflops"]["f32"]
    for c in doc["cases"]:
        assert c["bound_s"] > 0 and c["bound_by"] in ("compute", "cache")
        for name, r in c["results"].items():
            assert r["bound_frac"] > 0 and r["speedup"] > 0, name  # the old keys stay
    from fastrnn.bench import report
    assert "| limited by |" in report.roofline_table(doc)
    assert "cache-streaming rate" in "\n".join(report.env_lines(doc))


def test_custom_cells_bench_writes_and_reports(tmp_path):
    """benchmarks/bench_custom.py on one tiny shape: every implementation timed, the results file
    written, and the report's "Custom cells" section rendered from it."""
    import importlib.util
    import sys
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_custom.py"
    spec = importlib.util.spec_from_file_location("bench_custom", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_custom"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "results" / "custom" / "cpu-test.json"
    threads = torch.get_num_threads()
    try:
        mod.main(["--T", "3", "--H", "8", "--B", "2", "--reps", "1", "--compile", "none",
                  "--cells", "LayerNormGRU", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script times on one thread
        sys.modules.pop("bench_custom", None)
    doc = json.loads(out.read_text())
    (r,) = doc["rows"]
    assert r["cell"] == "LayerNormGRU" and r["B"] == 2 and r["H"] == 8
    assert all(r[k] > 0 for k in ("eager", "fused", "njit", "plain", "bound"))
    md, _ = report.write(tmp_path / "results", tmp_path / "REPORT.md", tmp_path / "plots")
    assert "| LayerNormGRU | 2 | 8 |" in md.read_text()
