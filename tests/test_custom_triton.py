"""Generated Triton kernels of user-defined cells (fastrnn.CellDef), under the Triton interpreter.

The kernels must be defined with TRITON_INTERPRET=1 set before triton is imported, so this file
runs itself: in the ordinary `pytest tests` run, `test_triton_custom_cells_under_interpreter`
starts one subprocess with the interpreter on that runs the rest of this file (about 30 s on the
2-core CI machine), and the tests below skip in the parent. Under TRITON_INTERPRET=1 (the
subprocess, or by hand:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_custom_triton.py -q

) they run directly. Output buffers start as NaN there, so an element no kernel wrote fails.
Oracle: the reference loop (the user's step in a Python loop under torch autograd). Without the
interpreter, the generated kernels also go through Triton's real compiler for sm_90 (no GPU
needed), checked for register spills.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from fastrnn.custom import (LAYERNORM_GRU_CELL, LAYERNORM_LSTM_CELL, PEEPHOLE_LSTM_CELL, CellDef, CustomRNN,
                            UnsupportedCellError)
from test_custom_cells import _check_f32, _compare, _hx, _input, _kwargs, _perturb, _run

from conftest import F64

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
interp = pytest.mark.skipif(not (INTERPRET and HAS_TRITON),
                            reason="runs under TRITON_INTERPRET=1 (started by test_triton_custom_cells_under_interpreter)")

I, H = 5, 7
CELLS = {"peephole": PEEPHOLE_LSTM_CELL, "ln_lstm": LAYERNORM_LSTM_CELL, "ln_gru": LAYERNORM_GRU_CELL}
# one configuration per cell, together covering layers, both directions, packed input, hx,
# batch_first without bias, zoneout in training (masks from the seed) and at eval
CONFIGS = {
    "peephole": dict(num_layers=2, bidirectional=True, hx=True),
    "ln_lstm": dict(bidirectional=True, packed=True, zoneout=0.3),
    "ln_gru": dict(batch_first=True, bias=False, hx=True, zoneout=0.2, eval=True),
}


def _cfg_id(name):
    return "-".join(k if v is True else f"{k}{v}" for k, v in CONFIGS[name].items())


@pytest.mark.skipif(INTERPRET or not HAS_TRITON, reason="the subprocess itself, or no triton")
def test_triton_custom_cells_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__],
                       cwd=os.path.dirname(os.path.abspath(__file__)), env=env, capture_output=True, text=True,
                       timeout=600)
    tail = (r.stdout[-6000:] + "\n" + r.stderr[-3000:]).strip()
    assert r.returncode == 0, f"the interpreted Triton custom-cell tests failed:\n{tail}"
    assert " passed" in r.stdout, tail


@interp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CELLS), ids=[f"{n}-{_cfg_id(n)}" for n in CELLS])
def test_triton_matches_reference(name, dtype):
    """Outputs, final states and the gradients of input, hx and every parameter."""
    c = CONFIGS[name]
    cell = CELLS[name]
    torch.manual_seed(0)
    m = _perturb(CustomRNN(cell, I, H, dtype=dtype, backend="triton", **_kwargs(c)))
    if c.get("eval"):
        m.eval()
    x = _input(c, dtype, T=4, B=3)
    hx = _hx(cell, c, dtype)
    got = _run(m, x, hx)
    m.backend = "reference"
    ref = _run(m, x, hx)
    if dtype == torch.float64:
        _compare(got, ref, F64, name)
        return
    _check_f32(m, x, hx, got, ref, name)


@interp
def test_triton_layernorm_lstm_odd_hidden_and_one_step():
    """H=33 (a 4H row of 132 in a 256-wide block: the masks), T=1, the no-grad forward."""
    torch.manual_seed(1)
    m = _perturb(CustomRNN(LAYERNORM_LSTM_CELL, 3, 33, dtype=torch.float64, backend="triton"))
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        out, (h, c) = m(x)
        m.backend = "reference"
        ro, (rh, rc) = m(x)
    _compare([out, h, c], [ro, rh, rc], F64, "T1-H33")


def _cumsum_cell(gi, gh, h):
    return (torch.tanh(torch.cumsum(gi + gh, 1)),)


def _pow_cell(gi, gh, h):
    return (torch.tanh(gi + gh) ** 5,)


@interp
def test_triton_unsupported_constructs_are_named():
    x = torch.randn(2, 2, I)
    with pytest.raises(UnsupportedCellError, match=r"aten\.cumsum.*fused Triton path"):
        CustomRNN(CellDef(_cumsum_cell, gates=1, name="cumsum_cell"), I, H, backend="triton")(x)
    with pytest.raises(UnsupportedCellError, match=r"pow with exponent 5 .*Triton"):
        CustomRNN(CellDef(_pow_cell, gates=1, name="pow5"), I, H, backend="triton")(x)
    out, _ = CustomRNN(CellDef(_pow_cell, gates=1, name="pow5"), I, H, backend="numba")(x)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(INTERPRET, reason="checks the refusal without the interpreter")
def test_triton_on_cpu_without_interpreter_says_why():
    m = CustomRNN(LAYERNORM_LSTM_CELL, I, H, backend="triton")
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run this call: .*TRITON_INTERPRET=1"):
        m(torch.randn(2, 2, I))
    with pytest.raises(ValueError, match="backend must be one of"):
        CustomRNN(LAYERNORM_LSTM_CELL, I, H, backend="cuda")


@pytest.mark.skipif(INTERPRET or not HAS_TRITON, reason="compiles the real kernels (no interpreter), needs triton")
@pytest.mark.parametrize("name,dtype,hidden", [("ln_lstm", torch.float32, 512), ("ln_gru", torch.float64, 128)],
                         ids=["ln_lstm-f32-H512", "ln_gru-f64-H128"])
def test_triton_cells_compile_for_sm90_without_spills(name, dtype, hidden, monkeypatch):
    """The generated kernels through Triton's real compiler for sm_90 (ptxas ships with triton),
    no GPU needed: launches are recorded, not run (fastrnn.kernels.triton.aot's method), then
    each distinct one is compiled and its resource report read."""
    from fastrnn import custom
    from fastrnn.kernels.triton import aot
    monkeypatch.setattr(custom, "_triton_interpreted", lambda: True)  # CPU tensors reach the launcher
    kern = CELLS[name].kernels(True, "triton")
    launches = {}
    for fn in (kern.mod.fwd_kernel, kern.mod.bwd_kernel):
        _, bind = aot._binder(fn, aot.SM90)

        def run(*args, grid, warmup, _fn=fn, _bind=bind, **kwargs):
            _, spec, options = _bind(*args, **kwargs)
            launches.setdefault((id(_fn), repr(tuple(spec)), repr(sorted(options.items()))),
                                aot.Launch(_fn, args, dict(kwargs), {}))
        monkeypatch.setattr(fn, "run", run, raising=False)
    m = CustomRNN(CELLS[name], 4, hidden, dtype=dtype, zoneout=0.1, backend="triton")
    out, _ = m(torch.randn(2, 3, 4, dtype=dtype, requires_grad=True))
    out.sum().backward()   # recorded launches leave garbage: only the keys matter
    assert sorted(lc.name for lc in launches.values()) == ["bwd_kernel", "fwd_kernel"]
    for lc in launches.values():
        r = aot.report(aot.compile_launch(lc))
        assert not aot.spills(r), f"{name} {lc.name}: spills {r}"
