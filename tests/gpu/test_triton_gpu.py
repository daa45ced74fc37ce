"""The triton backend on a CUDA device, against a float64 reference and cuDNN (marker `gpu`).

    python -m pytest tests/gpu -m gpu -q        (without TRITON_INTERPRET)

fp32 (tl.dot in "ieee" precision): ||out - ref|| / ||ref|| <= 1e-5 against float64, for outputs,
final states and every gradient. bf16/fp16: within 2x cuDNN's own error on the same inputs.
Importing this module never touches CUDA; every test skips without a device.
"""
from __future__ import annotations

import os

import pytest
import torch

from test_triton import CELLS, _cast, _names, _problem, _rel, _run

from fastrnn import backends
from fastrnn.backends import reference

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set: these tests are for compiled kernels")
    ok, why = backends.get("triton").availability()
    if not ok:
        pytest.fail(f"triton backend unavailable on a CUDA machine: {why}")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    yield


def _check(cell, T, B, I, H, D, proj=0, sizes=None, dtype=torch.float32):
    base = _problem(cell, T, B, I, H, D, proj, True, sizes, torch.float64)
    # Round the inputs to `dtype` first, so the float64 reference computes the same function.
    base = _cast(_cast(base, dtype, "cpu"), torch.float64, "cpu")
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(cell, *base[:2], *base[2:]) if o is not None]
    probes = [torch.randn(s, dtype=torch.float64) for s in shapes]
    exact = _run(reference.rnn_layer, cell, *base, probes)
    probes_dev = [p.cuda() for p in probes]
    tri = _run(backends.get("triton").impl.rnn_layer, cell, *_cast(base, dtype, "cuda"), probes_dev)
    on, gn = _names(cell, base[4], base[3] is not None)
    names = on + gn
    got, want = tri[0] + tri[1], exact[0] + exact[1]
    for n, g in zip(names, got):
        assert g.dtype == dtype and torch.isfinite(g).all(), f"{n}: dtype {g.dtype} or non-finite values"
    if dtype == torch.float32:
        for n, g, e in zip(names, got, want):
            assert _rel(g, e) <= 1e-5, f"{n}: rel err {_rel(g, e):.2e} > 1e-5"
        return
    cud = _run(backends.get("torch").impl.rnn_layer, cell, *_cast(base, dtype, "cuda"), probes_dev)
    floor = 4 * torch.finfo(dtype).eps
    for n, g, c, e in zip(names, got, cud[0] + cud[1], want):
        assert _rel(g, e) <= max(2 * _rel(c, e), floor), f"{n}: rel err {_rel(g, e):.2e} > 2x cuDNN {_rel(c, e):.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_vs_reference(cell, D, dtype):
    _check(cell, T=17, B=37, I=50, H=67, D=D, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed(cell, dtype):
    sizes = [40] * 3 + [33] * 4 + [17, 16, 2, 1]
    _check(cell, T=len(sizes), B=40, I=24, H=96, D=2, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_lstm_proj(dtype):
    _check("lstm", T=12, B=20, I=30, H=80, D=2, proj=35, sizes=[20] * 6 + [11] * 4 + [3, 3], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_larger(cell, dtype):
    _check(cell, T=50, B=64, I=256, H=256, D=1, dtype=dtype)


def test_float64_by_name():
    _check("gru", T=5, B=3, I=7, H=13, D=2, dtype=torch.float32)
    x, bs, h0, c0, w = _cast(_problem("lstm", 4, 3, 5, 13, 2), torch.float64, "cuda")
    got = backends.get("triton").impl.rnn_layer("lstm", x, bs, h0, c0, w)
    want = reference.rnn_layer("lstm", x, bs, h0, c0, w)
    for a, e in zip(got, want):
        assert _rel(a, e) <= 1e-12


@pytest.mark.parametrize("graphs", ["16", "0"], ids=["graphs", "no-graphs"])
def test_repeated_calls_and_stacked_layers(monkeypatch, graphs):
    """Graph replays read fresh inputs every call; three layers of one shape share one graph and
    their saved tensors must not alias (backward after all forwards)."""
    import fastrnn
    from fastrnn.backends import triton as tb
    monkeypatch.setenv("FASTRNN_TRITON_GRAPHS", graphs)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(32, 32, num_layers=3).double()
    mod = fastrnn.LSTM(32, 32, num_layers=3, backend="triton").cuda()
    mod.load_state_dict(ref.state_dict())
    for _ in range(3):
        x = torch.randn(9, 5, 32, dtype=torch.float64)
        o1, (h1, c1) = ref(x)
        o2, (h2, c2) = mod(x.float().cuda())
        (o1.sum() + h1.sum()).backward()
        (o2.sum() + h2.sum()).backward()
        assert _rel(o2, o1) <= 1e-5 and _rel(h2, h1) <= 1e-5 and _rel(c2, c1) <= 1e-5
    for (n, p1), p2 in zip(ref.named_parameters(), mod.parameters()):
        assert _rel(p2.grad, p1.grad) <= 1e-5, n
    if graphs != "0":
        assert len(tb._GRAPHS) > 0


def test_auto_leaves_cuda_to_torch_until_measured():
    """Until a GPU session fits the dispatch table from measurements, auto hands CUDA calls
    to cuDNN (never slower than torch); backend="triton" runs the kernels."""
    call = backends.LayerCall(cell="lstm", device="cuda", dtype=torch.float32, input_size=4, hidden_size=8,
                              proj_size=0, batch=2, steps=3, directions=1, packed=False, needs_grad=True)
    assert backends.select("auto", call).name == "torch"
    assert backends.select("triton", call).name == "triton"
