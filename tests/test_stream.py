"""fastrnn.Stream: stepping one frame at a time equals the module's forward over the whole sequence.

Sizes are tiny and odd (I=5, H=7, proj 3, T=6); the step kernel compiles two signatures
(float32, float64) whatever the module, so the whole file costs one cold JIT of ~5 s.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.stream import Stream

from conftest import assert_close

I, H, T = 5, 7, 6
TOL = {torch.float64: dict(rtol=0.0, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}

MODULES = {  # id -> (torch class, kwargs)
    "LSTM": (nn.LSTM, {}),
    "LSTM-proj": (nn.LSTM, dict(proj_size=3)),
    "GRU": (nn.GRU, {}),
    "RNN-tanh": (nn.RNN, {}),
    "RNN-relu": (nn.RNN, dict(nonlinearity="relu")),
}
CELLS = {
    "LSTMCell": (nn.LSTMCell, {}),
    "GRUCell": (nn.GRUCell, {}),
    "RNNCell-tanh": (nn.RNNCell, {}),
    "RNNCell-relu": (nn.RNNCell, dict(nonlinearity="relu")),
}
_FASTRNN = {nn.LSTM: fastrnn.LSTM, nn.GRU: fastrnn.GRU, nn.RNN: fastrnn.RNN, nn.LSTMCell: fastrnn.LSTMCell,
            nn.GRUCell: fastrnn.GRUCell, nn.RNNCell: fastrnn.RNNCell}


def _module(cls, kwargs, dtype, layers=None, bias=True, lib="torch"):
    cls = _FASTRNN[cls] if lib == "fastrnn" else cls
    extra = {} if layers is None else dict(num_layers=layers)
    m = cls(I, H, bias=bias, **extra, **kwargs).to(dtype)
    with torch.no_grad():  # larger than the default init, so that errors in a gate would show
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
    return m.eval()


def _frames(dtype, batch):
    """[T, B, I], or [T, I] for batch=None (unbatched)."""
    return torch.randn(T, I, dtype=dtype) if batch is None else torch.randn(T, batch, I, dtype=dtype)


def _run(stream, x):
    return torch.stack([stream.step(x[t]) for t in range(x.shape[0])])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 3, None], ids=["B1", "B3", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", list(MODULES))
def test_module_stream_equals_forward(kind, layers, bias, batch, dtype):
    cls, kw = MODULES[kind]
    lib = "fastrnn" if layers == 2 and batch == 3 else "torch"
    m = _module(cls, kw, dtype, layers, bias, lib)
    x = _frames(dtype, batch)
    s = Stream(m, batch_size=batch or 1)
    with torch.inference_mode():
        ref, hn = m(x)
        got = _run(s, x)
    assert_close(got, ref, f"{kind} output", **TOL[dtype])
    state = s.state
    if batch is None:  # the stream's state keeps the batch dimension
        hn = tuple(t.unsqueeze(1) for t in hn) if isinstance(hn, tuple) else hn.unsqueeze(1)
    for a, b, what in zip(state if isinstance(state, tuple) else (state,), hn if isinstance(hn, tuple) else (hn,),
                          ("h", "c")):
        assert_close(a, b, f"{kind} {what}_n", **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 3, None], ids=["B1", "B3", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_stream_equals_stepping_the_cell(kind, bias, batch, dtype):
    cls, kw = CELLS[kind]
    m = _module(cls, kw, dtype, None, bias, "fastrnn" if batch == 3 else "torch")
    x = _frames(dtype, batch)
    s = Stream(m, batch_size=batch or 1)
    is_lstm = cls is nn.LSTMCell
    hx, outs = None, []
    with torch.inference_mode():
        for t in range(T):
            hx = m(x[t], hx)
            outs.append(hx[0] if is_lstm else hx)
        got = _run(s, x)
    assert_close(got, torch.stack(outs), f"{kind} output", **TOL[dtype])
    state = s.state
    for a, b in zip(state if is_lstm else (state,), hx if is_lstm else (hx,)):
        assert_close(a, b if batch else b.unsqueeze(0), f"{kind} state", **TOL[dtype])


@pytest.mark.parametrize("kind", ["LSTM-proj", "GRU", "RNN-tanh"])
def test_reset_with_hx_and_to_zeros(kind):
    cls, kw = MODULES[kind]
    dt = torch.float64
    m = _module(cls, kw, dt, 2)
    x = _frames(dt, 2)
    P = 3 if kind == "LSTM-proj" else H
    h0 = torch.randn(2, 2, P, dtype=dt)
    hx = (h0, torch.randn(2, 2, H, dtype=dt)) if cls is nn.LSTM else h0
    s = Stream(m, batch_size=2, hx=hx)
    with torch.no_grad():
        ref, _ = m(x, hx)
        assert_close(_run(s, x), ref, "from hx", **TOL[dt])
        s.reset(hx)
        assert_close(_run(s, x), ref, "after reset(hx)", **TOL[dt])
        s.reset()
        assert_close(_run(s, x), m(x)[0], "after reset()", **TOL[dt])
        s.reset()
        h = s.state[0] if cls is nn.LSTM else s.state
        assert not h.any()


def test_unbatched_hx_and_fresh_outputs():
    m = _module(nn.GRU, {}, torch.float64, 2)
    x = _frames(torch.float64, None)
    h0 = torch.randn(2, H, dtype=torch.float64)
    s = Stream(m, hx=h0)
    with torch.no_grad():
        ref, _ = m(x, h0)
        y0 = s.step(x[0])
        y0_copy = y0.clone()
        rest = [s.step(x[t]) for t in range(1, T)]
    assert_close(torch.stack([y0] + rest), ref, "unbatched", **TOL[torch.float64])
    assert torch.equal(y0, y0_copy), "a returned frame changed after later steps"
    st = s.state
    st.add_(1.0)  # a copy: the stream's state is untouched
    assert_close(s.state, st - 1.0, "state copy", **TOL[torch.float64])


def test_in_place_parameter_updates_are_seen():
    dt = torch.float64
    m = _module(nn.LSTM, {}, dt, 2)
    other = _module(nn.LSTM, {}, dt, 2)
    x = _frames(dt, 1)
    s = Stream(m)
    with torch.no_grad():
        s.step(x[0])
        m.weight_hh_l1.mul_(0.5)            # like an optimizer step
        s.reset()
        assert_close(_run(s, x), m(x)[0], "after p.mul_", **TOL[dt])
        m.load_state_dict(other.state_dict())
        s.reset()
        assert_close(_run(s, x), other(x)[0], "after load_state_dict", **TOL[dt])
        # Writes through .data bypass the version counter (documented): refresh() picks them up.
        m.bias_ih_l0.data.add_(1.0)
        s.refresh()
        s.reset()
        assert_close(_run(s, x), m(x)[0], "after refresh()", **TOL[dt])


def test_training_loop_then_stream():
    """A Stream built before training sees the trained weights (optimizer steps are in place)."""
    m = _module(nn.GRU, {}, torch.float32, 1).train()
    s = Stream(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = _frames(torch.float32, 1)
    for _ in range(2):
        opt.zero_grad()
        m(x)[0].pow(2).sum().backward()
        opt.step()
    with torch.inference_mode():
        assert_close(_run(s, x), m(x)[0], "after SGD", **TOL[torch.float32])


# ------------------------------------------------------------------------------------- errors

def test_grad_mode_with_grad_requiring_params_raises():
    m = _module(nn.LSTM, {}, torch.float32, 1)
    s = Stream(m)
    with pytest.raises(RuntimeError, match="inference-only.*torch.inference_mode"):
        s.step(torch.randn(I))
    for p in m.parameters():
        p.requires_grad_(False)
    s.step(torch.randn(I))                      # nothing requires grad: fine in grad mode
    with pytest.raises(RuntimeError, match="inference-only.*the input requiring grad"):
        s.step(torch.randn(I, requires_grad=True))
    with torch.no_grad():
        s.step(torch.randn(I, requires_grad=True))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: nn.LSTM(I, H, bidirectional=True), ValueError, "bidirectional"),
    (lambda: nn.GRU(I, H).to(torch.bfloat16), TypeError, "float32 and float64.*bfloat16"),
    (lambda: nn.Linear(I, H), TypeError, "LSTM, GRU, RNN"),
    (lambda: fastrnn.LSTM(I, H, zoneout=0.1), ValueError, "zoneout"),
], ids=["bidirectional", "bf16", "not-an-rnn", "zoneout"])
def test_unsupported_modules_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        Stream(make())


def test_bad_inputs_raise_like_torch():
    m = _module(nn.RNN, {}, torch.float32, 1)
    s = Stream(m, batch_size=3)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 5, got 4"):
            s.step(torch.randn(3, 4))
        with pytest.raises(RuntimeError, match="Expected batch size 3, got 2"):
            s.step(torch.randn(2, I))
        with pytest.raises(ValueError, match="batch_size=1"):
            s.step(torch.randn(I))
        with pytest.raises(RuntimeError, match="expected torch.float32, got torch.float64"):
            s.step(torch.randn(3, I, dtype=torch.float64))
        with pytest.raises(ValueError, match="one frame"):
            s.step(torch.randn(1, 3, I))
        with pytest.raises(RuntimeError, match="Expected hidden size \\(1, 3, 7\\), got \\[1, 2, 7\\]"):
            s.reset(torch.zeros(1, 2, H))
        y = s.step(torch.randn(I, 3).t())       # a non-contiguous frame is fine
    assert y.shape == (3, H)


def test_dropout_needs_eval():
    m = nn.LSTM(I, H, num_layers=2, dropout=0.5)
    s = Stream(m)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="module.eval\\(\\)"):
            s.step(torch.randn(I))
        m.eval()
        s.step(torch.randn(I))


# ------------------------------------------------------------------------------ the benchmark

def test_stream_benchmark_and_report(tmp_path, capsys):
    """`python -m fastrnn.bench stream` on a tiny case: every implementation runs, agrees with
    torch, and the results file and the report section are written."""
    from fastrnn.bench import cases as C
    from fastrnn.bench import report, runner
    from fastrnn.bench.__main__ import main
    out = tmp_path / "results" / "stream" / "cpu-test.json"
    assert main(["stream", "--cell", "gru", "--hidden", "8", "--batch", "2", "--rounds", "2", "--min-time", "0",
                 "--steps", "2", "--out", str(out)]) == 0
    assert "gru B=2 H=8 f32" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["kind"] == "stream" and [c["id"] for c in doc["cases"]] == [c.id for c in C.stream(
        hidden=(8,), batch=(2,), cells=("gru",))]
    res = doc["cases"][0]["results"]
    for name in runner.STREAM_IMPLS:
        if name == "onnxruntime" and name in doc["cases"][0]["skipped"]:
            continue
        assert name in res, doc["cases"][0]["skipped"]
        assert res[name]["median_s"] > 0 and res[name]["max_abs_err"] < 1e-5, name
    md, _ = report.write(tmp_path / "results", tmp_path / "REPORT.md", tmp_path / "plots")
    text = md.read_text()
    assert "Streaming: one frame per call" in text and "stream µs/step" in text


_PROBE = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import state_probe
if torch.get_num_threads() < 2:
    torch.set_num_threads(2)
before = state_probe.snapshot()
import fastrnn
from fastrnn.stream import Stream
for m in (torch.nn.LSTM(4, 8, 2), fastrnn.GRU(4, 8).double(), torch.nn.RNNCell(4, 8)):
    s = Stream(m)
    dt = next(m.parameters()).dtype
    with torch.inference_mode():
        for _ in range(3):
            s.step(torch.randn(4, dtype=dt))
    try:
        s.step(torch.randn(5, dtype=dt))   # the error path too
    except RuntimeError:
        pass
after = state_probe.snapshot()
print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                  if before.get(k) != after.get(k) and not (k == "numba threads" and before.get(k) is None)}))
"""


def test_stream_leaves_process_state_alone():
    """Building and stepping Streams changes no thread count or global setting (tests/state_probe.py)."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(__file__)
    r = subprocess.run([sys.executable, "-c", _PROBE, here], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}
