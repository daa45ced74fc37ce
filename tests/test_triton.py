"""The triton backend's kernels under the Triton interpreter (CPU tensors, small shapes).

Run it as its own pytest process, with the interpreter on before triton defines any kernel:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton.py -q

Without TRITON_INTERPRET=1 (the ordinary `pytest tests` run) these tests skip; the compiled
kernels are checked there by tests/test_triton_compile.py (every variant compiled for sm_90 without
spills, the compile budget). The GPU checks are in tests/gpu/.
Under the interpreter the backend allocates every buffer as NaN, so an element that no kernel
writes shows up as a NaN-pattern mismatch in `assert_close`.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TOL, assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

from fastrnn import backends  # noqa: E402
from fastrnn.backends import reference  # noqa: E402
from fastrnn.cells import CELLS as ALL_CELLS, gates

CELLS = tuple(ALL_CELLS)


def _triton():
    if not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 set before the process starts: "
                    "TRITON_INTERPRET=1 python -m pytest tests/test_triton.py")
    pytest.importorskip("triton")
    b = backends.get("triton")
    ok, why = b.availability()
    if not ok:
        pytest.skip(f"triton backend unavailable: {why}")
    if not b.impl._interpreted():
        pytest.skip("the triton kernels were defined without TRITON_INTERPRET=1 (imported earlier in this process)")
    return b.impl


def _problem(cell, T, B, I, H, D=1, proj=0, bias=True, sizes=None, dtype=torch.float64):
    """Random inputs, weights and output-weights for a scalar loss, all leaves requiring grad."""
    G, Hout = gates(cell), proj or H
    mk = lambda *s: (torch.randn(*s, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()  # noqa: E731
    weights = [(mk(G * H, I), mk(G * H, Hout), mk(G * H) if bias else None, mk(G * H) if bias else None,
                mk(Hout, H) if proj else None) for _ in range(D)]
    if sizes is not None:
        assert sizes[0] == B
    N = T * B if sizes is None else sum(sizes)
    x, h0 = mk(N, I), mk(D, B, Hout)
    c0 = mk(D, B, H) if cell == "lstm" else None
    bs = None if sizes is None else torch.tensor(sizes, dtype=torch.long)
    return x, bs, h0, c0, weights


def _on(t, dtype, device):
    return None if t is None else t.detach().to(device=device, dtype=dtype).requires_grad_()


def _cast(problem, dtype, device):
    """A _problem() on another device/dtype, every tensor a fresh leaf that requires grad."""
    x, bs, h0, c0, weights = problem
    return (_on(x, dtype, device), bs, _on(h0, dtype, device), _on(c0, dtype, device),
            [tuple(_on(w, dtype, device) for w in ws) for ws in weights])


def _rel(a, e):
    """‖a − e‖ / ‖e‖ in float64 on the CPU (the GPU tests' error measure)."""
    a, e = a.detach().double().cpu(), e.detach().double().cpu()
    return ((a - e).norm() / e.norm().clamp_min(1e-300)).item()


def _leaves(x, h0, c0, weights):
    return [t for t in (x, h0, c0, *[w for ws in weights for w in ws]) if t is not None]


def _run(fn, cell, x, bs, h0, c0, weights, probes):
    """Outputs and the gradients of sum(probe * output) w.r.t. every leaf."""
    out, hn, cn = fn(cell, x, bs, h0, c0, weights)
    outs = [out, hn] + ([cn] if cn is not None else [])
    loss = sum((o.double() * p).sum() for o, p in zip(outs, probes))
    grads = torch.autograd.grad(loss, _leaves(x, h0, c0, weights))
    return outs, list(grads)


def _names(cell, weights, has_c0):
    n = ["out", "hn"] + (["cn"] if cell == "lstm" else [])
    g = ["dx", "dh0"] + (["dc0"] if has_c0 else [])
    for d, ws in enumerate(weights):
        for name, w in zip(("w_ih", "w_hh", "b_ih", "b_hh", "w_hr"), ws):
            if w is not None:
                g.append(f"d{name}[{d}]")
    return n, g


def _compare(cell, T, B, I, H, D=1, proj=0, bias=True, sizes=None, dtype=torch.float64):
    impl = _triton()
    x, bs, h0, c0, weights = _problem(cell, T, B, I, H, D, proj, bias, sizes, dtype)
    before = [t.detach().clone() for t in _leaves(x, h0, c0, weights)]
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(cell, x, bs, h0, c0, weights) if o is not None]
    probes = [torch.randn(s, dtype=torch.float64) for s in shapes]
    ref_o, ref_g = _run(reference.rnn_layer, cell, x, bs, h0, c0, weights, probes)
    tri_o, tri_g = _run(impl.rnn_layer, cell, x, bs, h0, c0, weights, probes)
    for t, b in zip(_leaves(x, h0, c0, weights), before):
        assert torch.equal(t.detach(), b), "the backend modified an input"
    on, gn = _names(cell, weights, c0 is not None)
    tol = TOL[dtype]
    for name, a, e in zip(on + gn, tri_o + tri_g, ref_o + ref_g):
        assert_close(a, e, f"{cell} {name}", **tol)


@pytest.fixture(params=["step", "persistent"])
def forward_kernel(request, monkeypatch):
    """Runs a test once with the per-step kernels and once with the persistent ones (forward and
    backward; proj_size always takes the step kernels)."""
    monkeypatch.setenv("FASTRNN_TRITON_PERSISTENT_MAX_H", "0" if request.param == "step" else "4096")
    return request.param


@pytest.mark.parametrize("D,dtype", [(1, torch.float64), (2, torch.float64), (2, torch.float32)],
                         ids=["uni-f64", "bi-f64", "bi-f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_uniform(cell, D, dtype, forward_kernel):
    _compare(cell, T=3, B=2, I=5, H=13, D=D, dtype=dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_bidirectional(cell, forward_kernel):
    _compare(cell, T=4, B=3, I=5, H=13, D=2, sizes=[3, 3, 2, 1])


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias(cell, forward_kernel):
    _compare(cell, T=3, B=2, I=4, H=7, D=2, bias=False)


@pytest.mark.parametrize("cell", CELLS)
def test_single_step_single_row(cell, forward_kernel):
    _compare(cell, T=1, B=1, I=3, H=13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes", [None, [3, 2, 2, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
def test_lstm_proj(D, sizes, dtype):
    _compare("lstm", T=4, B=3, I=5, H=13, D=D, proj=6, sizes=sizes, dtype=dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_multi_tile(cell, forward_kernel):
    # B=20 > BLOCK_B=16, H=40 > BLOCK_H=32, K=40 > BLOCK_K=32; sizes cross a batch-tile border.
    _compare(cell, T=3, B=20, I=6, H=40, D=2, sizes=[20, 17, 3], dtype=torch.float32)


def test_lstm_proj_multi_tile():
    _compare("lstm", T=2, B=18, I=3, H=34, D=2, proj=33, sizes=[18, 5], dtype=torch.float32)


def test_tiny_sizes(forward_kernel):
    _compare("gru", T=2, B=1, I=1, H=1)
    _compare("lstm", T=2, B=1, I=1, H=1, proj=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", 5), ("gru", 0), ("rnn_tanh", 0)],
                         ids=["lstm", "lstm-proj", "gru", "rnn_tanh"])
def test_half(cell, proj, dtype, forward_kernel):
    """Half storage, fp32 math: error against a float64 reference within 2x the error of torch's own
    CPU kernels (ATen) in the same dtype, on the same inputs (floor: 4 ulp of the dtype)."""
    impl = _triton()
    x, bs, h0, c0, weights = _problem(cell, T=4, B=3, I=5, H=13, D=2, proj=proj, sizes=[3, 3, 2, 1], dtype=dtype)
    with torch.no_grad():
        shapes = [o.shape for o in reference.rnn_layer(cell, x, bs, h0, c0, weights) if o is not None]
    probes = [torch.randn(s, dtype=torch.float64) for s in shapes]
    up = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    w64 = [tuple(up(w) for w in ws) for ws in weights]
    exact_o, exact_g = _run(reference.rnn_layer, cell, up(x), bs, up(h0), up(c0), w64, probes)
    tri_o, tri_g = _run(impl.rnn_layer, cell, x, bs, h0, c0, weights, probes)
    ate_o, ate_g = _run(backends.get("torch").impl.rnn_layer, cell, x, bs, h0, c0, weights, probes)
    floor = 4 * torch.finfo(dtype).eps
    on, gn = _names(cell, weights, c0 is not None)
    for name, t, a, e in zip(on + gn, tri_o + tri_g, ate_o + ate_g, exact_o + exact_g):
        assert t.dtype == dtype, f"{name}: dtype {t.dtype}"
        assert torch.isfinite(t).all(), f"{name}: non-finite values"
        rel = lambda v: ((v.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()  # noqa: E731
        assert rel(t) <= max(2 * rel(a), floor), f"{name}: rel err {rel(t):.2e} > 2 x torch's {rel(a):.2e}"


def test_inference_without_saved_activations(forward_kernel):
    impl = _triton()
    x, bs, h0, c0, weights = _problem("lstm", T=3, B=2, I=4, H=9, D=2)
    with torch.no_grad():
        got = impl.rnn_layer("lstm", x, bs, h0, c0, weights)
        want = reference.rnn_layer("lstm", x, bs, h0, c0, weights)
    for name, a, e in zip(("out", "hn", "cn"), got, want):
        assert_close(a, e, name, **TOL[torch.float64])
    assert got[0].grad_fn is None


def test_through_functional_and_module():
    import fastrnn
    _triton()
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 9, num_layers=2, bidirectional=True).double()
    mod = fastrnn.GRU(4, 9, num_layers=2, bidirectional=True, backend="triton").double()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    (o1, h1), (o2, h2) = ref(x), mod(x)
    assert_close(o2, o1, "out", **TOL[torch.float64])
    assert_close(h2, h1, "hn", **TOL[torch.float64])
    o1.sum().backward()
    o2.sum().backward()
    for (n, p1), p2 in zip(ref.named_parameters(), mod.parameters()):
        assert_close(p2.grad, p1.grad, n, **TOL[torch.float64])


def test_dispatch_rules(monkeypatch):
    from fastrnn import dispatch
    impl = _triton()
    b = backends.get("triton")
    call = backends.LayerCall(cell="lstm", device="cpu", dtype=torch.float32, input_size=4, hidden_size=8,
                              proj_size=0, batch=2, steps=3, directions=1, packed=False, needs_grad=True)
    assert b.supports(call)[0]                       # interpreter on: CPU allowed by name
    assert dispatch.torch_wins("triton", call)      # but auto never picks the interpreter
    assert backends.select("auto", call).name != "triton"
    cuda = backends.LayerCall(**{**call.__dict__, "device": "cuda"})
    why = dispatch.torch_wins("triton", cuda)  # no GPU measurement yet: auto leaves CUDA calls to cuDNN
    assert "not yet measured" in why
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, why = b.supports(call)
    assert not ok and "TRITON_INTERPRET" in why
    assert impl is b.impl


def test_graph_cache_logic(monkeypatch):
    """The CUDA-graph path's bookkeeping, with a CPU stand-in for capture/replay: capture on the
    second call of a shape, replays read the new inputs, and outputs of one replay survive the
    next (two layers of one shape, backward after both forwards)."""
    impl = _triton()
    replays = []

    def fake_capture(fn, static_in):
        static_out = fn(*static_in)

        def replay():
            replays.append(1)
            for s, o in zip(static_out, fn(*static_in)):
                if s is not None:
                    s.copy_(o)
        return replay, static_out

    monkeypatch.setattr(impl, "_graphs_wanted", lambda t: True)
    monkeypatch.setattr(impl, "_CAPTURE", fake_capture)
    monkeypatch.setattr(impl, "_GRAPHS", type(impl._GRAPHS)())
    monkeypatch.setattr(impl, "_SEEN", type(impl._SEEN)())
    for forward_kernel in ("0", "4096"):
        monkeypatch.setenv("FASTRNN_TRITON_PERSISTENT_MAX_H", forward_kernel)
        for _ in range(2):  # 1st: run, then capture (second sight); 2nd: replays only
            x1, bs, h0, c0, weights = _problem("lstm", T=3, B=2, I=9, H=9, D=2, sizes=[2, 2, 1])
            ref = reference.rnn_layer("lstm", x1, bs, h0, c0, weights)
            got = impl.rnn_layer("lstm", x1, bs, h0, c0, weights)
            x2 = got[0].detach()[:, :9].clone().requires_grad_()  # a second layer of the same shape
            ref2 = reference.rnn_layer("lstm", x2, bs, h0, c0, weights)
            got2 = impl.rnn_layer("lstm", x2, bs, h0, c0, weights)
            for name, a, e in zip(("out", "hn", "cn", "out2", "hn2", "cn2"), got + got2, ref + ref2):
                assert_close(a, e, name, **TOL[torch.float64])
            loss = lambda o: sum((t * (i + 1)).sum() for i, t in enumerate(o))  # noqa: E731
            leaves = [x1, x2, h0, *weights[0][:2]]
            gr = torch.autograd.grad(loss(ref) + loss(ref2), leaves)
            gg = torch.autograd.grad(loss(got) + loss(got2), leaves)
            for i, (a, e) in enumerate(zip(gg, gr)):
                assert_close(a, e, f"grad {i}", **TOL[torch.float64])
    assert replays and len(impl._GRAPHS) == 4  # fwd + bwd, for each forward kernel


def test_custom_op_opcheck_and_compile():
    """`torch.ops.fastrnn.triton_layer` passes torch's custom-op checks (schema, fake tensor,
    autograd through AOT dispatch), and torch.compile traces a layer without a graph break."""
    impl = _triton()
    x, bs, h0, c0, weights = _problem("lstm", T=3, B=3, I=4, H=6, D=2, sizes=[3, 2, 1])
    flat = [t for ws in weights for t in ws]
    args = ("lstm", bs, x, h0, c0, [t for t in flat if t is not None], [int(t is not None) for t in flat], True)
    torch.library.opcheck(torch.ops.fastrnn.triton_layer.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))

    def loss(x, h0, c0, weights):
        out, hn, cn = impl.rnn_layer("lstm", x, bs, h0, c0, weights)
        return out.pow(2).sum() + hn.sum() + (cn * 2).sum()

    leaves = _leaves(x, h0, c0, weights)
    want = torch.autograd.grad(loss(x, h0, c0, weights), leaves)
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(x, h0, c0, weights), leaves)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, f"grad {i}", **TOL[torch.float64])
