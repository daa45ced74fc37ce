"""The cpp backend's native bfloat16 forward (csrc/layer_forward_bf16.cpp: AMX tiles or AVX512_BF16,
float32 accumulation and state) against torch.nn in bf16 and a float64 reference: our error at most
2x torch's own bf16 error on the same inputs, at sizes that hit each kernel edge (H not a multiple of
16 or 32, one row, rows not a multiple of 16, one step, packed input, both directions, proj_size).
Backward runs upcast to float32 on the saved float32 values; its gradients get the same bound.

Skipped with the reason where this CPU (or FASTRNN_ISA) has no native bf16 path; the fallback test
runs everywhere the extension loads."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

ROOT = Path(__file__).resolve().parents[1]


def _native() -> str:
    if "cpp" not in fastrnn.available_backends("cpu"):
        return ""
    from fastrnn.backends import cpp
    cpp.native_dtypes()
    return cpp.NATIVE_ISA


needs_native = pytest.mark.skipif(not _native(), reason="no native bf16 path here: the CPU lacks AVX512_BF16, "
                                  "FASTRNN_ISA caps it, or the cpp extension is not built")

TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
FAST = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN, "RNN_RELU": fastrnn.RNN}
EPS = 1e-6  # relative: keeps a bound of 2 x 0 from failing on an exact case

# (T, B, I, H): one step; one row; rows 3 and 17 (not multiples of 16); H 37 (odd, not a multiple of
# the 16-column panel or the 32-deep tile), 48, 64 (whole tiles); I 33 (odd k tail), 64
SHAPES = [(1, 3, 10, 37), (9, 1, 33, 37), (6, 17, 64, 48), (5, 3, 20, 64), (4, 40, 24, 20)]


def _sid(s):
    return "T{}-B{}-I{}-H{}".format(*s)


def _modules(mode, I, H, **kw):
    if mode.startswith("RNN"):
        kw["nonlinearity"] = mode[4:].lower()
    ref64 = TORCH[mode](I, H, dtype=torch.float64, **kw)
    with torch.no_grad():  # bf16-representable weights: all three see the same parameters
        for p in ref64.parameters():
            p.copy_(p.to(torch.bfloat16).double())
    ref_lo = TORCH[mode](I, H, dtype=torch.bfloat16, **kw)
    fast = FAST[mode](I, H, dtype=torch.bfloat16, backend="cpp", **kw)
    ref_lo.load_state_dict(ref64.state_dict())
    fast.load_state_dict(ref64.state_dict())
    return ref64, ref_lo, fast


def _rel(a, truth):
    return ((a.double() - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def _check(mode, x, kw, grads=False, hx=None):
    I, H = x.shape[-1] if not isinstance(x, torch.nn.utils.rnn.PackedSequence) else x.data.shape[-1], kw.pop("H")
    ref64, ref_lo, fast = _modules(mode, I, H, **kw)

    def run(m, dt, need):
        packed = isinstance(x, torch.nn.utils.rnn.PackedSequence)
        xx = x._replace(data=x.data.detach().clone().to(dt)) if packed else x.detach().clone().to(dt)
        data = xx if not isinstance(xx, torch.nn.utils.rnn.PackedSequence) else xx.data
        if need:
            data.requires_grad_(True)
        out, state = m(xx)
        out = out if not isinstance(out, torch.nn.utils.rnn.PackedSequence) else out.data
        states = list(state) if isinstance(state, tuple) else [state]
        res = [out] + states
        if need:
            loss = sum((r.double() * torch.linspace(-1, 1, r.numel(), dtype=torch.float64).view(r.shape)).sum()
                       for r in res)
            loss.backward()
            res += [data.grad] + [p.grad for p in m.parameters()]
        return res

    truth = run(ref64, torch.float64, grads)
    try:
        theirs = run(ref_lo, torch.bfloat16, grads)
    except RuntimeError as e:
        pytest.skip(f"torch has no CPU bf16 {mode} here: {e}")
    ours = run(fast, torch.bfloat16, grads)
    assert all(o.dtype == torch.bfloat16 for o in ours)
    for i, (o, t, r) in enumerate(zip(ours, theirs, truth)):
        e_ours, e_torch = _rel(o, r), _rel(t, r)
        assert e_ours <= 2 * e_torch + EPS, f"{mode} output/grad #{i}: rel err {e_ours:.3e} > 2 x torch's {e_torch:.3e}"


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("mode", list(TORCH))
def test_forward_within_2x_torch(mode, shape):
    T, B, I, H = shape
    with torch.no_grad():
        _check(mode, torch.randn(T, B, I, dtype=torch.float64), dict(H=H))


@needs_native
@pytest.mark.parametrize("mode", list(TORCH))
def test_bidirectional_two_layers(mode):
    with torch.no_grad():
        _check(mode, torch.randn(7, 5, 19, dtype=torch.float64), dict(H=37, num_layers=2, bidirectional=True))


@needs_native
@pytest.mark.parametrize("mode", list(TORCH))
def test_packed_input(mode):
    lengths = torch.tensor([9, 7, 7, 4, 1])
    x = pack_padded_sequence(torch.randn(9, 5, 12, dtype=torch.float64), lengths)
    with torch.no_grad():
        _check(mode, x, dict(H=37, bidirectional=True))


@needs_native
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lstm_proj(bidirectional):
    with torch.no_grad():
        _check("LSTM", torch.randn(6, 3, 16, dtype=torch.float64), dict(H=37, proj_size=13, bidirectional=bidirectional))


@needs_native
@pytest.mark.parametrize("mode", list(TORCH))
def test_training_forward_and_upcast_backward(mode):
    """Training: the native forward saves float32 values; backward runs upcast on them."""
    _check(mode, torch.randn(6, 3, 21, dtype=torch.float64), dict(H=37, bidirectional=True), grads=True)


@needs_native
def test_native_path_is_taken(monkeypatch):
    """bf16 reaches the C++ forward as bf16 (x and weights; float32 states), not upcast."""
    from fastrnn import _ext
    from fastrnn.backends import cpp
    seen = []
    real = _ext.forward

    def spy(cell, x, bs, h0, c0, w_ih, w_hh, *rest):
        seen.append((x.dtype, h0.dtype, w_hh[0].dtype))
        return real(cell, x, bs, h0, c0, w_ih, w_hh, *rest)

    monkeypatch.setattr(cpp._ext, "forward", spy)
    m = fastrnn.GRU(8, 37, backend="cpp").bfloat16()
    with torch.no_grad():
        m(torch.randn(4, 2, 8).bfloat16())
    assert seen == [(torch.bfloat16, torch.float32, torch.bfloat16)]


@needs_native
def test_compiled_code_checks_dtypes_before_memory():
    from fastrnn import _ext
    x = torch.randn(6, 8).bfloat16()
    w_ih, w_hh = torch.randn(12, 8).bfloat16(), torch.randn(12, 4).bfloat16()
    h0 = torch.zeros(1, 2, 4)
    with pytest.raises(RuntimeError, match="h0 must have dtype Float"):
        _ext.forward("rnn_tanh", x, None, h0.bfloat16(), None, [w_ih[:4]], [w_hh[:4]], [None], [None], [None], False)
    with pytest.raises(RuntimeError, match="w_hh.* must have dtype BFloat16"):
        _ext.forward("gru", x, None, h0, None, [w_ih], [w_hh.half()], [None], [None], [None], False)
    with pytest.raises(RuntimeError, match="has the wrong shape"):
        _ext.forward("gru", x, None, h0, None, [w_ih[:, :7].contiguous()], [w_hh], [None], [None], [None], False)
    with pytest.raises(RuntimeError, match="backward runs float32 and float64"):
        _ext.backward("gru", x, None, h0, None, [w_ih], [w_hh], [None], [], torch.zeros(6, 4), h0, None, True, True)


_FALLBACK = textwrap.dedent("""
    import torch, fastrnn
    from fastrnn.backends import cpp
    torch.manual_seed(0)
    cpp.native_dtypes()
    print("NATIVE", repr(cpp.NATIVE_ISA))
    for cls, kw in ((fastrnn.LSTM, dict(proj_size=5)), (fastrnn.GRU, {}), (fastrnn.RNN, dict(nonlinearity="relu"))):
        m = cls(10, 37, bidirectional=True, backend="cpp", **kw).bfloat16()
        f = cls(10, 37, bidirectional=True, backend="cpp", **kw)
        f.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
        x = torch.randn(5, 3, 10).bfloat16()
        with torch.no_grad():
            got = m(x)[0]
            want = f(x.float())[0].bfloat16()  # the upcast: float32 loops on the bf16 values
        assert torch.equal(got, want), (cls.__name__, (got.float() - want.float()).abs().max())
    print("OK")
""")


def _run(env_isa):
    env = dict(os.environ, FASTRNN_ISA=env_isa, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.skipif("cpp" not in fastrnn.available_backends("cpu"), reason="the cpp extension is not built")
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_isa_cap_falls_back_to_upcast(isa):
    """FASTRNN_ISA=avx2 (or avx512: no AVX512_BF16 kernels) runs bf16 through the float32 loops,
    with exactly the upcast's results (a fresh interpreter: the cap is read once)."""
    out = _run(isa)
    assert "NATIVE ''" in out and "OK" in out


@needs_native
def test_avx512_bf16_path_without_amx():
    """FASTRNN_ISA=avx512_bf16: vdpbf16ps for every product (no AMX tiles) stays within the bound:
    its tiles of 1-6 rows x 1-4 gate panels (forward), of whole blocks (backward's dh, proj)."""
    code = textwrap.dedent("""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-k",
                              "(within_2x and (H37 or H48)) or training or proj", __file__]))
    """).replace("__file__", repr(__file__))
    env = dict(os.environ, FASTRNN_ISA="avx512_bf16", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
