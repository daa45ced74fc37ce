"""The cuda backend on a machine without a GPU (nothing here touches CUDA).

1. The backend declares itself and, where fastrnn._cuda_ext is not built or torch has no CUDA,
   reports itself unavailable with the reason; auto never picks it until it is measured.
2. Its host time loop (csrc/cuda/rnn.cpp) and cell definitions (csrc/cuda/cells.cuh), built with
   FASTRNN_CUDA_EMULATE against the CPU stand-in for the kernels (csrc/cuda/emulate.cpp), run on
   CPU tensors through the same op layer as the real backend (fastrnn/ops.py)
   and match the float64 reference: outputs, final states and every gradient, for every cell,
   projection, both directions, packed input and all four dtypes.  The build takes about a minute
   (torch's headers) and is cached in build/cuda-emulated.
3. tools/check_cuda.sh (nvcc -c of every csrc/cuda source for sm_80/sm_90) when
   FASTRNN_CHECK_CUDA=1 and nvcc is on PATH; `make check-cuda` runs the script directly.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_close
from test_triton import _leaves, _names, _problem, _run

from fastrnn import backends
from fastrnn.backends import reference
from fastrnn import ops

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _call(**kw):
    args = dict(cell="lstm", device="cuda", dtype=torch.float32, input_size=4, hidden_size=8, proj_size=0,
                batch=2, steps=3, directions=1, packed=False, needs_grad=True)
    args.update(kw)
    return backends.LayerCall(**args)


# ---------------------------------------------------------------------------------------------
# 1. Registry behaviour.

def test_declares_what_it_supports():
    b = backends.get("cuda")
    assert b.devices == frozenset({"cuda"})
    assert b.dtypes == backends.ALL_DTYPES
    assert b.proj and b.packed
    assert b.cells == frozenset(CELLS)


def test_unavailable_with_a_clear_reason_without_a_cuda_build():
    ok, why = backends.get("cuda").availability()
    if importlib.util.find_spec("fastrnn._cuda_ext") is None:
        assert not ok
        assert "built without CUDA" in why and "FASTRNN_BUILD_CUDA" in why, why
    elif torch.version.cuda is None:
        assert not ok and "without CUDA" in why, why
    else:
        pytest.skip("fastrnn._cuda_ext is built and torch has CUDA: tests/gpu covers this")


def test_never_listed_for_cpu_and_named_use_says_why():
    assert "cuda" not in backends.available_backends("cpu")
    ok, why = backends.get("cuda").availability()
    if ok:
        pytest.skip("the cuda backend is available here")
    assert "cuda" not in backends.available_backends("cuda")
    with pytest.raises(RuntimeError, match="fastrnn backend 'cuda' is not available"):
        backends.select("cuda", _call())


def test_auto_leaves_cuda_calls_to_torch_until_measured():
    from fastrnn import dispatch
    assert "not yet measured" in dispatch.torch_wins("cuda", _call())


# ---------------------------------------------------------------------------------------------
# 2. The host loop and cells on CPU through the emulated kernels.

@pytest.fixture(scope="module")
def emulated():
    from torch.utils import cpp_extension
    if not cpp_extension.is_ninja_available() or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("needs ninja and a C++ compiler to build the emulated cuda extension")
    build = ROOT / "build" / "cuda-emulated"
    build.mkdir(parents=True, exist_ok=True)
    src = ROOT / "csrc" / "cuda"
    return cpp_extension.load(name="_cuda_ext_emulated", sources=[str(src / "rnn.cpp"), str(src / "emulate.cpp")],
                              extra_cflags=["-O1", "-DFASTRNN_CUDA_EMULATE"], build_directory=str(build),
                              verbose=False)


def _through_ops(mp, emulated):
    """The op layer running backend "cuda" on the emulated extension (CPU tensors)."""
    from fastrnn.backends import cuda as cuda_backend
    real = ops._kernels
    mp.setattr(cuda_backend, "_ext", emulated)
    mp.setattr(ops, "_kernels", lambda name: cuda_backend if name == "cuda" else real(name))
    return lambda cell, x, bs, h0, c0, w: ops.rnn_layer(cell, "cuda", x, bs, h0, c0, w)


@pytest.fixture(scope="module")
def layer(emulated):
    assert emulated.emulated
    mp = pytest.MonkeyPatch()
    yield _through_ops(mp, emulated)
    mp.undo()


def _cast(problem, dtype):
    x, bs, h0, c0, weights = problem
    f = lambda t: None if t is None else t.detach().to(dtype).requires_grad_()  # noqa: E731
    return f(x), bs, f(h0), f(c0), [tuple(f(w) for w in ws) for ws in weights]


def _rel(a, e):
    a, e = a.detach().double(), e.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-300)).item()


def _check(layer, cell, T, B, I, H, D, proj=0, bias=True, sizes=None, dtype=torch.float64):
    # Inputs rounded to `dtype` first, so the float64 reference computes the same function.
    base = _cast(_cast(_problem(cell, T, B, I, H, D, proj, bias, sizes), dtype), torch.float64)
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(cell, *base) if o is not None]
    probes = [torch.randn(s, dtype=torch.float64) for s in shapes]
    want_o, want_g = _run(reference.rnn_layer, cell, *base, probes)
    inputs = _cast(base, dtype)
    before = [t.detach().clone() for t in _leaves(inputs[0], *inputs[2:])]
    got_o, got_g = _run(layer, cell, *inputs, probes)
    for t, b in zip(_leaves(inputs[0], *inputs[2:]), before):
        assert torch.equal(t.detach(), b), "the backend modified an input"
    on, gn = _names(cell, base[4], base[3] is not None)
    names, got, want = on + gn, got_o + got_g, want_o + want_g
    if dtype == torch.float64:
        for n, g, e in zip(names, got, want):
            assert_close(g, e, f"{cell} {n}", rtol=1e-9, atol=1e-10)
        return
    for n, g in zip(names, got):
        assert g.dtype == dtype and torch.isfinite(g).all(), f"{n}: dtype {g.dtype} or non-finite values"
    if dtype == torch.float32:
        for n, g, e in zip(names, got, want):
            assert _rel(g, e) <= 1e-5, f"{cell} {n}: rel err {_rel(g, e):.2e} > 1e-5"
        return
    # Half types: no worse than 2x torch's own error on the same rounded inputs.  Not for relu
    # gradients: a pre-activation within rounding of 0 switches its whole gradient path, so the
    # error against float64 is a matter of which kinks each implementation happens to flip (seen:
    # ours 4.6e-2 vs torch's 6e-3 on one problem, equal on others).  Their code is the f64/f32
    # path checked above plus the loads/stores every other half-precision cell checks here.
    tor_o, tor_g = _run(backends.get("torch").impl.rnn_layer, cell, *_cast(base, dtype), probes)
    floor = 4 * torch.finfo(dtype).eps
    n_checked = len(got_o) if cell == "rnn_relu" else len(names)
    for n, g, t, e in list(zip(names, got, tor_o + tor_g, want))[:n_checked]:
        assert _rel(g, e) <= max(2 * _rel(t, e), floor), \
            f"{cell} {n}: rel err {_rel(g, e):.2e} > 2x torch's {_rel(t, e):.2e}"


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f64", "f32", "bf16", "f16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_uniform(layer, cell, D, dtype):
    _check(layer, cell, T=5, B=3, I=6, H=7, D=D, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_packed_bidirectional(layer, cell, dtype):
    sizes = [5, 5, 4, 2, 2, 1]
    _check(layer, cell, T=len(sizes), B=5, I=9, H=11, D=2, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", [None, [4, 3, 3, 1]], ids=["uniform", "packed"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
def test_emulated_lstm_proj(layer, D, sizes, dtype):
    _check(layer, "lstm", T=4, B=4, I=5, H=9, D=D, proj=4, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_emulated_no_bias_and_single_step(layer, cell):
    _check(layer, cell, T=3, B=2, I=4, H=5, D=2, bias=False)
    _check(layer, cell, T=1, B=1, I=1, H=1, D=2)


def test_emulated_inference_and_partial_grads(layer, emulated):
    x, bs, h0, c0, w = _problem("gru", T=4, B=3, I=5, H=6, D=2, sizes=[3, 2, 2, 1])
    with torch.no_grad():
        got = layer("gru", x, bs, h0, c0, w)
        want = reference.rnn_layer("gru", x, bs, h0, c0, w)
    for a, e in zip(got[:2], want[:2]):
        assert_close(a, e, "no-grad", rtol=1e-9, atol=1e-10)
    # Only the weights require grad: dx and dh0 are not computed (need_dx=False path).
    x2, h2 = x.detach(), h0.detach()
    out, hn, _ = layer("gru", x2, bs, h2, None, w)
    ref_out, ref_hn, _ = reference.rnn_layer("gru", x2, bs, h2, None, w)
    g = torch.autograd.grad(out.sum() + hn.sum(), [w[0][0], w[1][3]])
    e = torch.autograd.grad(ref_out.sum() + ref_hn.sum(), [w[0][0], w[1][3]])
    for a, b in zip(g, e):
        assert_close(a, b, "weight grads", rtol=1e-9, atol=1e-10)


def test_emulated_rejects_bad_input(emulated):
    x, bs, h0, c0, w = [t for t in _problem("lstm", T=2, B=2, I=3, H=4, D=1)]
    w_ih, w_hh, b_ih, b_hh, w_hr = [t.detach() for t in w[0][:4]] + [None]
    x, h0, c0 = x.detach(), h0.detach(), c0.detach()

    def fwd(cell="lstm", x=x, bs=None, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih):
        return emulated.forward(cell, x, bs, h0, c0, [w_ih], [w_hh], [b_ih], [b_hh], [w_hr], False)

    fwd()
    with pytest.raises(ValueError, match="unknown cell type"):
        fwd(cell="lstmx")
    with pytest.raises(TypeError, match="float32, float64, float16 and bfloat16"):
        fwd(x=x.int(), h0=h0.int(), c0=c0.int())
    with pytest.raises(RuntimeError, match="must have dtype"):
        fwd(w_hh=w_hh.float())
    with pytest.raises(RuntimeError, match="must be contiguous"):
        fwd(w_ih=w_ih.t().contiguous().t())
    with pytest.raises(RuntimeError, match="wrong shape"):
        fwd(w_ih=w_ih[:, :2].contiguous())
    with pytest.raises(RuntimeError, match="multiple of the batch size"):
        fwd(x=x[:3].contiguous())
    with pytest.raises(RuntimeError, match="non-increasing"):
        fwd(bs=torch.tensor([1, 2, 1]), x=x[:4])
    with pytest.raises(RuntimeError, match="sum to x.size"):
        fwd(bs=torch.tensor([2, 1]))
    with pytest.raises(RuntimeError, match="int64 CPU tensor"):
        fwd(bs=torch.tensor([2, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="c0 must be given for lstm"):
        fwd(c0=None)


# ---------------------------------------------------------------------------------------------
# 3. The nvcc compile check.

@pytest.mark.skipif(os.environ.get("FASTRNN_CHECK_CUDA") != "1",
                    reason="about a minute of compiling: set FASTRNN_CHECK_CUDA=1 (or run `make check-cuda`)")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_check_cuda_script_compiles_every_source():
    r = subprocess.run(["bash", str(ROOT / "tools" / "check_cuda.sh"), sys.executable], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "sources compiled" in r.stdout


def test_emulated_through_the_backend_module_and_under_autocast(emulated, monkeypatch):
    """fastrnn/backends/cuda.py's kernel contract through the op layer (its extension swapped for
    the emulated one); an active autocast must not retype the extension's internal GEMMs (the
    modules apply torch's autocast policy before the backend is called)."""
    layer = _through_ops(monkeypatch, emulated)
    x, bs, h0, c0, w = _cast(_problem("lstm", T=4, B=3, I=5, H=6, D=2, proj=4), torch.float32)
    plain = _run(layer, "lstm", x, bs, h0, c0, w, [torch.ones(1)] * 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = _run(layer, "lstm", x, bs, h0, c0, w, [torch.ones(1)] * 3)
    for a, b in zip(plain[0] + plain[1], cast[0] + cast[1]):
        assert a.dtype == torch.float32 and torch.equal(a, b)
