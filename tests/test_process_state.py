"""A fastrnn call leaves the process as it found it: thread counts (torch, OpenMP, MKL, OpenBLAS),
flush-denormal, default dtype, grad mode, autocast, backend flags, environment, signal handlers.

Each case runs in a fresh subprocess (tests/state_probe.py), since the first call in a process is
the one that matters: the cpp backend's first panel-loop call used to leave torch on one thread
for the rest of the process (MKL's per-thread setting, reached through its OpenMP layer), which
made a whole training script 0.6x torch although the layer itself was faster.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CPU_BACKENDS

PROBE = os.path.join(os.path.dirname(__file__), "state_probe.py")

# One first call per path of the compiled loops (fp32 panel loop with and without the in-step
# input projection, the BLAS loop in float64 and with proj_size, the serial small-step loop,
# packed input, both directions, the half-type upcast), inference and training, and a first call
# that raises; each followed by a few other calls, so later calls are covered as well.
_LM = dict(cell="lstm", hidden=64, input=64, layers=2, steps=35, batch=20)  # the word-LM of the report
CASES = {
    "lstm-panel-infer": dict(_LM),
    "gru-panel-train": dict(_LM, cell="gru", train=True),
    "rnn-panel-bi": dict(_LM, cell="rnn_tanh", bidir=True),
    "lstm-instep-train": dict(cell="lstm", hidden=128, steps=20, batch=8, train=True),
    "gru-f64-blas-train": dict(cell="gru", hidden=32, steps=12, batch=70, dtype="float64", train=True),
    "lstm-proj-packed-train": dict(cell="lstm", hidden=24, proj=8, steps=9, batch=5, packed=True, train=True),
    "rnn-small-serial": dict(cell="rnn_tanh", hidden=20, input=10, steps=5, batch=1),
    # one step: MKL held on the calling thread for its products (blas.h), forward and backward
    "lstm-one-step-train": dict(cell="lstm", hidden=64, input=64, steps=1, batch=1, train=True),
    "gru-one-step-infer": dict(cell="gru", hidden=64, input=64, steps=1, batch=1),
    "lstm-bf16-train": dict(cell="lstm", hidden=32, steps=10, batch=4, dtype="bfloat16", train=True),
    "gru-bad-first": dict(cell="gru", hidden=32, steps=6, batch=3, bad=True),
}
_THEN = [dict(cell="rnn_tanh", hidden=48, steps=30, batch=16, train=True),
         dict(cell="lstm", hidden=256, steps=4, batch=64),
         dict(cell="gru", hidden=16, steps=7, batch=2, bidir=True, packed=True, train=True)]


def _probe(case: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}
    r = subprocess.run([sys.executable, PROBE, json.dumps(case)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, f"probe failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "auto"])
@pytest.mark.parametrize("name", list(CASES))
def test_first_call_leaves_process_state_alone(name, backend):
    if backend in ("torch", "reference") and name not in ("lstm-panel-infer", "gru-bad-first"):
        pytest.skip("pure-torch backends: two cases are enough")
    report = _probe({**CASES[name], "backend": backend, "name": name, "then": _THEN})
    assert report["changed"] == {}, f"{name} on {backend} changed process state: {report['changed']}"
