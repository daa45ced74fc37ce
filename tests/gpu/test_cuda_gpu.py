"""The cuda backend (fastrnn._cuda_ext) on a CUDA device, against a float64 reference and cuDNN.

    FASTRNN_BUILD_CUDA=1 pip install --no-build-isolation -e .
    python -m pytest tests/gpu/test_cuda_gpu.py -m gpu -q

Weights at torch.nn's init scale.  fp32 (TF32 off), bf16, fp16: ||x - ref|| / ||ref|| against
float64 within 2x cuDNN's own error on the same inputs (floor 4 ulp), for outputs, final states and
every gradient (half-precision relu cells: outputs only; see _check); float64: 1e-12.  Before each run the CUDA caching allocator is filled with NaN, so an output
element no kernel writes shows up as a non-finite value.  Importing this module never touches
CUDA; every test skips without a device or without a CUDA build of fastrnn.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from test_triton import CELLS, _cast, _leaves, _names, _problem, _rel, _run

import fastrnn
from fastrnn import backends
from fastrnn.backends import reference

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if importlib.util.find_spec("fastrnn._cuda_ext") is None:
        pytest.skip("fastrnn was built without CUDA: rebuild with FASTRNN_BUILD_CUDA=1")
    ok, why = backends.get("cuda").availability()
    if not ok:
        pytest.fail(f"fastrnn._cuda_ext is built but the cuda backend is unavailable on a CUDA machine: {why}")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    yield


def _impl():
    return backends.get("cuda").impl


def cuda_layer(cell, *args):
    """One layer on the cuda kernels through the op layer (reference.rnn_layer's signature)."""
    from fastrnn import ops
    return ops.rnn_layer(cell, "cuda", *args)


def _poison_allocator():
    """Leave NaN in the caching allocator's free blocks (small and large pools), so buffers the
    backend allocates with at::empty start as NaN wherever a kernel forgets to write.  All bits
    set is a NaN in float64, float32, float16 and bfloat16 alike."""
    blocks = [torch.full((1 << 18,), -1, dtype=torch.int32, device="cuda") for _ in range(32)]  # 1 MiB each
    blocks.append(torch.full((1 << 27,), -1, dtype=torch.int32, device="cuda"))                 # 512 MiB
    del blocks


def _problem_nn(cell, T, B, I, H, D, proj, bias, sizes, device="cpu"):
    """Weights at torch.nn's init scale, U(-1/sqrt(H), 1/sqrt(H)); inputs and states N(0, 1)."""
    from test_triton_gpu import Case, problem
    return problem(Case(cell, T, B, I, H, D=D, proj=proj, sizes=None if sizes is None else tuple(sizes),
                        dtype="f64", bias=bias), device=device)


def _check(cell, T, B, I, H, D, proj=0, sizes=None, dtype=torch.float32, bias=True, ref_device="cpu"):
    base = _problem_nn(cell, T, B, I, H, D, proj, bias, sizes, ref_device)
    # Round the inputs to `dtype` first, so the float64 reference computes the same function.
    base = _cast(_cast(base, dtype, ref_device), torch.float64, ref_device)
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(cell, *base) if o is not None]
    probes = [torch.randn(s, dtype=torch.float64, device=ref_device) for s in shapes]
    exact = _run(reference.rnn_layer, cell, *base, probes)
    probes_dev = [p.cuda() for p in probes]
    inputs = _cast(base, dtype, "cuda")
    before = [t.detach().clone() for t in _leaves(inputs[0], *inputs[2:])]
    _poison_allocator()
    got = _run(cuda_layer, cell, *inputs, probes_dev)
    for t, b in zip(_leaves(inputs[0], *inputs[2:]), before):
        assert torch.equal(t.detach(), b), "the backend modified an input"
    on, gn = _names(cell, base[4], base[3] is not None)
    names, ours, want = on + gn, got[0] + got[1], exact[0] + exact[1]
    for n, g in zip(names, ours):
        assert g.is_cuda and g.dtype == dtype and torch.isfinite(g).all(), \
            f"{n}: device {g.device}, dtype {g.dtype} or non-finite values (an unwritten element?)"
    if dtype == torch.float64:
        for n, g, e in zip(names, ours, want):
            assert _rel(g, e) <= 1e-12, f"{cell} {n}: rel err {_rel(g, e):.2e} > 1e-12"
        return
    cud = _run(backends.get("torch").impl.rnn_layer, cell, *_cast(base, dtype, "cuda"), probes_dev)
    floor = 4 * torch.finfo(dtype).eps
    # relu gradients are compared in f32/f64 only: a pre-activation within rounding of 0 switches
    # its whole gradient path, so at half precision the error against float64 depends on which
    # kinks each implementation happens to flip, not on how well it computes.
    n_checked = len(got[0]) if cell == "rnn_relu" and dtype in (torch.float16, torch.bfloat16) else len(names)
    for n, g, c, e in list(zip(names, ours, cud[0] + cud[1], want))[:n_checked]:
        assert _rel(g, e) <= max(2 * _rel(c, e), floor), f"{n}: rel err {_rel(g, e):.2e} > 2x cuDNN {_rel(c, e):.2e}"


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_vs_reference(cell, D, dtype):
    _check(cell, T=17, B=37, I=50, H=67, D=D, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_packed_bidirectional(cell, dtype):
    sizes = [40] * 3 + [33] * 4 + [17, 16, 2, 1]
    _check(cell, T=len(sizes), B=40, I=24, H=96, D=2, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", [None, [20] * 6 + [11] * 4 + [3, 3]], ids=["uniform", "packed"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
def test_lstm_proj(D, sizes, dtype):
    _check("lstm", T=12, B=20, I=30, H=80, D=D, proj=35, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_float64_no_bias_and_tiny(cell):
    _check(cell, T=6, B=5, I=7, H=13, D=2, sizes=[5, 5, 4, 2, 1, 1], dtype=torch.float64, bias=False)
    _check(cell, T=1, B=1, I=1, H=1, D=2, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_larger(cell, dtype):
    _check(cell, T=50, B=64, I=256, H=256, D=1, dtype=dtype, ref_device="cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_grid_stride_past_the_block_cap(cell):
    """rows x H = 17M elements: more than 65536 blocks x 256 threads, so threads loop."""
    _check(cell, T=2, B=1_000_000, I=3, H=17, D=2, dtype=torch.float32, ref_device="cuda")


def test_module_packed_sequence_vs_cudnn():
    """modules -> functional -> the cuda backend, 2 layers, bidirectional, packed, float64."""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    ref = torch.nn.LSTM(12, 20, num_layers=2, bidirectional=True, proj_size=7).double().cuda()
    mod = fastrnn.LSTM(12, 20, num_layers=2, bidirectional=True, proj_size=7, backend="cuda").double().cuda()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(9, 4, 12, dtype=torch.float64, device="cuda")
    lengths = torch.tensor([9, 7, 7, 2])
    outs = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_()
        o, (h, c) = m(pack_padded_sequence(xi, lengths))
        (o.data.square().sum() + h.sum() + c.sum()).backward()
        outs.append((o.data, h, c, xi.grad, [p.grad for p in m.parameters()]))
    (o1, h1, c1, g1, p1), (o2, h2, c2, g2, p2) = outs
    for a, e in [(o2, o1), (h2, h1), (c2, c1), (g2, g1)] + list(zip(p2, p1)):
        assert _rel(a, e) <= 1e-12


def test_runs_on_the_current_stream():
    x, bs, h0, c0, w = _cast(_problem("gru", T=30, B=64, I=64, H=256, D=2), torch.float32, "cuda")
    with torch.no_grad():
        want = cuda_layer("gru", x, bs, h0, c0, w)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            got = cuda_layer("gru", x, bs, h0, c0, w)
        torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_second_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x, bs, h0, c0, w = _cast(_problem("lstm", T=5, B=3, I=4, H=8, D=2), torch.float64, "cuda:1")
    with torch.cuda.device(0):
        out, hn, cn = cuda_layer("lstm", x, bs, h0, c0, w)
    want = reference.rnn_layer("lstm", x, bs, h0, c0, w)
    assert out.device == x.device and _rel(out, want[0]) <= 1e-12 and _rel(cn, want[2]) <= 1e-12


def test_rejects_cpu_and_mixed_device_tensors():
    x, bs, h0, c0, w = [t for t in _problem("rnn_tanh", T=2, B=2, I=3, H=4, D=1)]
    ext = _impl()._ext
    args = lambda x, h0: ("rnn_tanh", x.detach(), None, h0.detach(), None, [w[0][0].detach().cuda()],  # noqa: E731
                          [w[0][1].detach().cuda()], [None], [None], [None], False)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        ext.forward(*args(x, h0))
    with pytest.raises(RuntimeError, match="must be on x's device"):
        ext.forward(*args(x.cuda(), h0))


def test_auto_leaves_cuda_to_torch_until_measured():
    call = backends.LayerCall(cell="lstm", device="cuda", dtype=torch.float32, input_size=4, hidden_size=8,
                              proj_size=0, batch=2, steps=3, directions=1, packed=False, needs_grad=True)
    assert backends.select("auto", call).name != "cuda"
    assert backends.select("cuda", call).name == "cuda"
