"""`make gpu-check` (python -m fastrnn.gpucheck) on CPU: the whole run under the Triton interpreter
at tiny sizes (same code path and JSON as on the GPU, torch's CPU kernels standing in for cuDNN),
its hard deadline, torch's cuDNN algorithm rule, and the CUDA dispatch table it feeds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn import backends, gpu_dispatch
from fastrnn.gpucheck import classify_kernels, cudnn_algo

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("triton")


def _gpucheck(tmp_path, *args, timeout):
    out = tmp_path / "gc.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "fastrnn.gpucheck", "--interpret", "--out", str(out), *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"no results file; exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r, json.loads(out.read_text())


def test_interpret_run_end_to_end(tmp_path):
    r, data = _gpucheck(tmp_path, "--deadline", "150", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert data["finished"] and not data["stopped_by_deadline"], data.get("skipped")
    assert data["mode"] == "interpret" and data["env"]["interpret"]
    assert set(data["peak"]["tflops"]) == {"f32", "tf32", "bf16"}
    corr = data["correctness"]
    kinds = {(c["backend"], c["cell"], c["dtype"]) for c in corr}
    assert {("triton-step", c, d) for c in ("lstm", "gru", "rnn_tanh") for d in ("f32", "bf16", "f16")} <= kinds
    assert {("triton-persistent", c, d) for c in ("lstm", "gru", "rnn_tanh") for d in ("f32", "bf16", "f16")} <= kinds
    assert any(c["proj"] for c in corr) and any(c["packed"] for c in corr) and any(c["D"] == 2 for c in corr)
    bad = [(c["case"], c.get("error") or c["worst"]) for c in corr if not c["ok"]]
    assert not bad, bad
    for c in corr:
        assert len(c["calls"]) == 3 and {"out", "hn", "dx", "dh0"} <= set(c["calls"][0])
    speed = data["speed"]
    assert len(speed) == 18 and all("ms" in s for s in speed), [s.get("error") for s in speed]
    for s in speed:
        assert set(s["ms"]) == {"torch", "triton"} and s["tflops"]["triton"] > 0
        assert (s["algo"]["kernels"] and s["algo"]["rule"]) if s["grad"] else s["algo"] is None
    assert str(tmp_path / "gc.json") in r.stdout.splitlines()[-1]


def test_deadline_stops_and_keeps_what_it_found(tmp_path):
    r, data = _gpucheck(tmp_path, "--deadline", "8", timeout=120)
    assert data["stopped_by_deadline"] and not data["finished"]
    assert data["skipped"] and data["elapsed_s"] < 8 + 30  # the alarm, else the watchdog
    assert all(c["ok"] for c in data["correctness"])


def _algo(**kw):
    args = dict(cell="lstm", dtype=torch.float16, hidden=512, input_size=512, proj=0, layers=1, directions=1,
                batch=64, steps=100, packed=False, forward=True, capability=(9, 0), sm_count=132)
    args.update(kw)
    return cudnn_algo(**args)


def test_cudnn_algorithm_rule():
    """torch's get_algo (aten/src/ATen/native/cudnn/RNN.cpp), case by case."""
    assert _algo() == "persist_static"                             # fp16 LSTM, sizes % 128, B % 8
    assert _algo(dtype=torch.bfloat16) == "standard"               # only CUDNN_DATA_HALF is persistent
    assert _algo(cell="gru") == "standard"                         # GRU excluded on sm_80+
    assert _algo(cell="rnn_tanh", batch=96, hidden=1024, input_size=1024) == "standard"
    assert _algo(cell="rnn_tanh", batch=64, hidden=1024, input_size=1024) == "persist_static"
    assert _algo(batch=60) == "standard"                           # B % 8
    assert _algo(directions=2) == "standard"
    assert _algo(hidden=128, input_size=128) == "persist_static_small_h"   # LSTM fwd H <= 192
    assert _algo(hidden=192, input_size=128, forward=False) == "standard"  # ... bwd H <= 128
    assert _algo(dtype=torch.float32, hidden=128, input_size=128) == "persist_static_small_h"
    assert _algo(dtype=torch.float32) == "standard"
    assert _algo(dtype=torch.float64, hidden=64) == "standard"
    assert _algo(cell="rnn_tanh", dtype=torch.float32, hidden=384) == "persist_static_small_h"
    assert _algo(hidden=128, packed=True) == "standard"
    assert _algo(hidden=128, proj=64) == "standard"
    assert _algo(capability=(8, 6)) == "standard"
    assert classify_kernels(["void cudnn::rnn::RNN_blockPersist_fp_LSTM<float>(...)"]) == "persist_static"
    assert classify_kernels(["elemWiseRNNcell<float>", "sm90_xmma_gemm"]) == "standard"
    assert classify_kernels(["ampere_sgemm_64x64"]) == "no cudnn rnn kernel"


def _results(tmp_path, triton_ok=True):
    case = lambda **kw: {"backend": "triton", "cell": "lstm", "dtype": "bf16", "T": 100, "B": 16, "I": 512,  # noqa: E731
                         "H": 512, "D": 1, "proj": 0, "packed": False, "grad": True, **kw}
    data = {"mode": "gpu", "env": {"device": "NVIDIA Test GPU"},
            "correctness": [{**case(backend="triton-step"), "ok": triton_ok, "case": "c1"}],
            "speed": [{**case(), "case": "lstm-bf16-fast", "ms": {"torch": 2.0, "triton": 1.0}},
                      {**case(B=64), "case": "lstm-bf16-slow", "ms": {"torch": 1.0, "triton": 3.0}},
                      {**case(dtype="f32"), "case": "lstm-f32", "ms": {"torch": 2.0, "triton": 1.0}}]}
    path = tmp_path / "gpu-nvidia-test-gpu.json"
    path.write_text(json.dumps(data))
    return path


def test_dispatch_table_from_results(tmp_path, monkeypatch):
    """fit -> a table per GPU class, each row with its measurement and source; prefer picks the
    fastest implementation that passed correctness, and nothing far from a measurement."""
    table_file = tmp_path / "table.py"
    print(gpu_dispatch.fit([_results(tmp_path)], out=table_file))
    table = gpu_dispatch.load_table(table_file)
    assert set(table) == {"nvidia-test-gpu"}
    rows = {r["case"]: r for r in table["nvidia-test-gpu"]}
    assert rows["lstm-bf16-fast"]["pick"] == "triton" and rows["lstm-bf16-fast"]["source"] == "gpu-nvidia-test-gpu.json"
    assert rows["lstm-bf16-slow"]["pick"] == "torch"
    assert rows["lstm-f32"]["pick"] == "torch"  # no correctness case for triton f32 in this file
    monkeypatch.setattr(gpu_dispatch, "_table", lambda: table)
    monkeypatch.setattr(gpu_dispatch, "_device_class", lambda index: "nvidia-test-gpu")
    call = backends.LayerCall(cell="lstm", device="cuda", dtype=torch.bfloat16, input_size=512, hidden_size=512,
                              proj_size=0, batch=16, steps=100, directions=1, packed=False, needs_grad=True)
    assert gpu_dispatch.prefer("triton", call)[0]
    assert not gpu_dispatch.prefer("triton", backends.LayerCall(**{**call.__dict__, "batch": 64}))[0]
    assert not gpu_dispatch.prefer("triton", backends.LayerCall(**{**call.__dict__, "hidden_size": 4096}))[0]
    assert not gpu_dispatch.prefer("triton", backends.LayerCall(**{**call.__dict__, "packed": True}))[0]
    # a backend that failed correctness is never picked, however fast
    failed = gpu_dispatch.load_table(table_file) if gpu_dispatch.fit([_results(tmp_path, False)], out=table_file) else None
    assert all(r["pick"] == "torch" for r in failed["nvidia-test-gpu"])
    # no table for this GPU: auto leaves CUDA calls to torch, saying why
    monkeypatch.setattr(gpu_dispatch, "_device_class", lambda index: "nvidia-other")
    ok, why = gpu_dispatch.prefer("triton", call)
    assert not ok and "not yet measured" in why


def test_shipped_table_is_generated_and_consistent():
    """The table shipped in the package is what `fit` makes of the results files present."""
    from fastrnn import gpu_table
    for cls, rows in gpu_table.TABLE.items():
        for r in rows:
            assert r["pick"] in r["ms"] and r["correct"][r["pick"]] and (ROOT / "benchmarks" / "results" / r["source"]).exists()
