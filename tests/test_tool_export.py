"""Portable exports of models holding fastrnn modules: torch.jit.trace, torch.jit.script (+ save and
load), torch.onnx.export (the TorchScript exporter and the dynamo one) and torch.export (+ save and
load) produce artifacts holding torch's own RNN ops, which load and run with torch.nn's numbers in
a process where fastrnn cannot be imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import assert_close
from tool_models import KINDS, LAYER_KINDS, example, pair

# Run in a fresh interpreter: fastrnn is made unimportable (and its checkout dropped from sys.path)
# before anything is loaded, so an artifact that needed it would fail here.
_LOADER = r"""
import json, sys
sys.path = [p for p in sys.path if p and p.rstrip("/") != REPO]  # the checkout (editable install)
sys.modules["fastrnn"] = None  # `import fastrnn` raises ImportError from here on
import torch
cases = json.loads(sys.argv[1])


def run(tool, path, x):
    if tool in ("trace", "script"):
        return torch.jit.load(path)(x)
    if tool == "export":
        return torch.export.load(path).module()(x)
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


errors = {}
for c in cases:
    x = torch.load(c["input"])
    try:  # torch.nn's own artifact: a case where even it does not run is not asked of us
        run(c["tool"], c["ref"], x)
    except Exception:
        continue
    out = run(c["tool"], c["path"], x)
    err = (out - torch.load(c["want"])).abs().max().item()
    if not err <= 1e-5:
        errors[c["path"]] = err
assert "fastrnn" not in sys.modules or sys.modules["fastrnn"] is None
print(json.dumps(errors))
"""


def _export(tool, model, x, path):
    if tool == "trace":
        torch.jit.save(torch.jit.trace(model, (x,)), path)
    elif tool == "script":
        torch.jit.save(torch.jit.script(model), path)
    elif tool == "export":
        torch.export.save(torch.export.export(model, (x,)), path)
    elif tool == "onnx":
        torch.onnx.export(model, (x,), path, dynamo=False)
    elif tool == "onnx-dynamo":
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (x,), path, dynamo=True)


_EXT = {"trace": "pt", "script": "pt", "export": "pt2", "onnx": "onnx", "onnx-dynamo": "onnx"}


@pytest.mark.parametrize("tool", list(_EXT))
def test_artifacts_run_without_fastrnn(tool, tmp_path):
    if tool.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    cases = []
    kinds = list(KINDS) if tool in ("trace", "script", "export") else LAYER_KINDS
    for kind in kinds:
        for backend in ("cpp",):  # exports never reach a backend: one named explicitly is the harder case
            ref, fast = pair(kind, backend)
            x = example(kind)
            path = str(tmp_path / f"{kind}-{backend}.{_EXT[tool]}")
            try:  # what torch.nn itself cannot export is not asked of us
                _export(tool, ref, x, path + ".ref")
            except Exception:  # noqa: BLE001
                continue
            _export(tool, fast, x, path)
            with torch.no_grad():
                want = ref(x)
                assert_close(fast(x), want, f"{kind} eager", rtol=1e-5, atol=1e-6)
            torch.save(x, path + ".x")
            torch.save(want, path + ".want")
            cases.append(dict(tool=tool, path=path, ref=path + ".ref", input=path + ".x", want=path + ".want"))
    assert len(cases) >= 3, f"torch.nn exported only {len(cases)} kinds with {tool}"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", f"REPO = {repo!r}\n" + _LOADER, json.dumps(cases)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}, "artifacts differ from torch.nn"


def test_script_emits_torch_modules():
    _, fast = pair("GRU-bi")
    scripted = torch.jit.script(fast)
    assert scripted.rnn.original_name == "GRU"
    assert "fastrnn" not in str(scripted.graph)
