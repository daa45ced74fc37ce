"""cpp-backend specifics: the raw entry points of fastrnn._ext reject bad input with a clear
Python exception before touching memory; kernels picked per ISA agree; auto's veto."""
from __future__ import annotations

import pytest
import torch

import fastrnn
from conftest import assert_close

_ext = pytest.importorskip("fastrnn._ext", reason="the C++ extension is not built")

from fastrnn.backends import LayerCall, cpp, reference  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn.cells import gates


def _args(cell="lstm", D=1, B=3, T=4, I=5, H=6, dtype=torch.float64, proj=0):
    G = gates(cell)
    hout = proj or H
    x = torch.randn(T * B, I, dtype=dtype)
    h0 = torch.randn(D, B, hout, dtype=dtype)
    c0 = torch.randn(D, B, H, dtype=dtype) if cell == "lstm" else None
    w_ih = [torch.randn(G * H, I, dtype=dtype) for _ in range(D)]
    w_hh = [torch.randn(G * H, hout, dtype=dtype) for _ in range(D)]
    b = [torch.randn(G * H, dtype=dtype) for _ in range(D)]
    w_hr = [torch.randn(hout, H, dtype=dtype) if proj else None for _ in range(D)]
    return dict(cell=cell, x=x, batch_sizes=None, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b, b_hh=list(b),
                w_hr=w_hr, train=False)


def _call(**kw):
    return _ext.forward(**kw)


def test_valid_call_runs():
    out, hn, cn, saved = _call(**_args())
    assert out.shape == (12, 6) and hn.shape == (1, 3, 6) and cn.shape == (1, 3, 6) and saved == []


@pytest.mark.parametrize("change,match", [
    (dict(cell="lstmx"), "unknown cell"),
    (dict(x=torch.randn(12, 5, dtype=torch.float32)), "dtype"),
    (dict(x=torch.randn(12, 5, dtype=torch.float64).t().contiguous().t()), "contiguous"),
    (dict(x=torch.randn(12, 7, dtype=torch.float64)), "w_ih\\[0\\] has the wrong shape"),
    (dict(x=torch.randn(11, 5, dtype=torch.float64)), "multiple of the batch"),
    (dict(x=torch.randn(12, dtype=torch.float64)), "2-D"),
    (dict(x=torch.randn(12, 5, dtype=torch.float64, device="meta")), "x must be a CPU tensor"),
    (dict(h0=torch.randn(1, 3, 6, dtype=torch.float64, device="meta")), "h0 must be on x's device"),
    (dict(h0=torch.randn(1, 3, 4, dtype=torch.float64)), "hidden_size"),
    (dict(h0=torch.randn(3, 3, 6, dtype=torch.float64)), "directions"),
    (dict(c0=None), "c0 must be given"),
    (dict(c0=torch.randn(1, 2, 6, dtype=torch.float64)), "c0 has the wrong shape"),
    (dict(w_hh=[torch.randn(24, 5, dtype=torch.float64)]), "w_hh\\[0\\] has the wrong shape"),
    (dict(w_hh=[torch.randn(23, 6, dtype=torch.float64)]), "multiple of 4"),
    (dict(w_ih=[]), "one w_ih"),
    (dict(b_ih=[torch.randn(23, dtype=torch.float64)]), "bias has the wrong shape"),
    (dict(batch_sizes=torch.tensor([3, 3, 3, 2])), "sum to x.size"),
    (dict(batch_sizes=torch.tensor([3, 4, 3, 2])), "non-increasing"),
    (dict(batch_sizes=torch.tensor([4, 3, 3, 2])), "at most h0.size"),
    (dict(batch_sizes=torch.tensor([3, 3, 3, 0, 3])), "positive"),
    (dict(batch_sizes=torch.tensor([3., 3., 3., 3.])), "int64"),
    (dict(w_hr=[torch.randn(6, 5, dtype=torch.float64)]), "w_hr\\[0\\] has the wrong shape"),
])
def test_forward_rejects(change, match):
    kw = _args()
    kw.update(change)
    with pytest.raises((RuntimeError, ValueError), match=match):
        _call(**kw)


def test_proj_only_for_lstm():
    kw = _args(cell="gru")
    kw["w_hr"] = [torch.randn(6, 6, dtype=torch.float64)]
    with pytest.raises(RuntimeError, match="lstm only"):
        _call(**kw)


def test_backward_rejects_bad_saved_and_grads():
    kw = _args()
    kw["train"] = True
    out, hn, cn, saved = _call(**kw)
    common = dict(cell="lstm", x=kw["x"], batch_sizes=None, h0=kw["h0"], c0=kw["c0"], w_ih=kw["w_ih"],
                  w_hh=kw["w_hh"], w_hr=kw["w_hr"], need_dx=True, need_dw=True)
    good = dict(saved=saved, dout=torch.ones_like(out), dhn=torch.ones_like(hn), dcn=torch.ones_like(cn))
    res = _ext.backward(**common, **good)
    assert res[0].shape == kw["x"].shape
    for bad, match in [(dict(saved=saved[:1]), "saved must hold"),
                       (dict(saved=[saved[0][:, :5], saved[1]]), "saved\\[0\\] has the wrong shape"),
                       (dict(dout=torch.ones(12, 7, dtype=torch.float64)), "dout has the wrong shape"),
                       (dict(dhn=torch.ones(1, 3, 6)), "dtype"),
                       (dict(dcn=None), "dcn must be given")]:
        with pytest.raises(RuntimeError, match=match):
            _ext.backward(**common, **{**good, **bad})


def cpp_layer(cell, *args):
    """One layer on the cpp kernels through the op layer (reference.rnn_layer's signature)."""
    return ops.rnn_layer(cell, "cpp", *args)


def test_double_backward_matches_reference():
    """create_graph=True: the second-order gradients are the reference recurrence's."""
    kw = _args()
    res = []
    for layer in (reference.rnn_layer, cpp_layer):
        x = kw["x"].clone().requires_grad_()
        w_hh = kw["w_hh"][0].clone().requires_grad_()
        out, hn, cn = layer("lstm", x, None, kw["h0"], kw["c0"],
                            [(kw["w_ih"][0], w_hh, kw["b_ih"][0], kw["b_hh"][0], None)])
        v = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
        (g,) = torch.autograd.grad(out, x, grad_outputs=v, create_graph=True)
        res.append(torch.autograd.grad(g.pow(2).sum(), (x, w_hh)))
    for got, want in zip(res[1], res[0]):
        assert_close(got, want, "second-order gradient", rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference_packed_bidirectional(cell, dtype):
    """Packed batch sizes [5,5,3,2,2,1], both directions, H=37, I != H, outputs and all grads."""
    torch.manual_seed(0)
    G = gates(cell)
    H, I, bs = 37, 11, torch.tensor([5, 5, 3, 2, 2, 1])
    N, B = int(bs.sum()), 5
    dt = dict(dtype=dtype, requires_grad=True)
    x = torch.randn(N, I, **dt)
    h0 = torch.randn(2, B, H, **dt)
    c0 = torch.randn(2, B, H, **dt) if cell == "lstm" else None
    ws = [tuple(torch.randn(*s, dtype=dtype).mul_(0.3).requires_grad_() for s in
                [(G * H, I), (G * H, H), (G * H,), (G * H,)]) + (None,) for _ in range(2)]
    ins = [x, h0] + ([c0] if c0 is not None else []) + [w for wd in ws for w in wd if w is not None]
    res = []
    for layer in (reference.rnn_layer, cpp_layer):
        out, hn, cn = layer(cell, x, bs, h0, c0, ws)
        outs = [out, hn] + ([cn] if cn is not None else [])
        g = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=dtype)).sum() for o in outs)
        res.append(outs + list(torch.autograd.grad(loss, ins)))
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for i, (a, e) in enumerate(zip(res[1], res[0])):
        assert_close(a, e, f"tensor {i}", **tol)


def test_isa_and_gemm_paths_report():
    assert _ext.isa() in ("avx512", "avx2", "baseline")
    path = _ext.gemm_path()
    assert path in ("mkl-packed", "blas", "aten") or path.startswith("panel-avx"), path
    assert path.startswith("panel-") == (_ext.isa() != "baseline")
    if _ext.isa() != "baseline":
        assert path.startswith(f"panel-{_ext.isa()}+")


def test_split_loops_run_on_torch_threads():
    """The extension's at::parallel_for really forks (it compiles to a serial loop without
    -fopenmp, which went unnoticed for three sessions: results are the same, only slower)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _ext.parallel_threads(64) == 2
        torch.set_num_threads(1)
        assert _ext.parallel_threads(64) == 1
    finally:
        torch.set_num_threads(threads)


def test_avx2_panel_kernel_where_avx512_is_picked():
    """On an AVX-512 CPU the default tests run the AVX-512 panel GEMM; this runs the float32
    loop check again with the AVX2 kernel (FASTRNN_ISA is read once, so in a fresh interpreter)."""
    import os
    import subprocess
    import sys
    if _ext.isa() != "avx512":
        pytest.skip("the AVX2 panel kernel is the default here and covered by the other tests")
    code = ("import os, sys, torch; sys.path.insert(0, 'tests'); import test_cpp; from fastrnn import functional, _ext;"
            "assert _ext.isa() == 'avx2', _ext.isa(); torch.set_num_threads(2);"
            "[(os.environ.update(FASTRNN_INPUT_GEMM=i), test_cpp._check_float32_loops(c, D, p, functional))"
            " for i in ('panel', 'step') for c in ('lstm', 'gru', 'rnn_relu') for D, p in ((1, False), (2, True))];"
            # every tile height of 1-6 rows (a tile of 2-5 shares each panel row between rows)
            "[(os.environ.update(FASTRNN_INPUT_GEMM=i), test_cpp._check_float32_loops(c, 1, False, functional, B=B,"
            " T=3, I=36, H=H)) for i in ('panel', 'step') for c in ('lstm', 'rnn_tanh')"
            " for B, H in ((2, 100), (3, 64), (4, 48), (5, 16), (7, 57))];"
            "print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "FASTRNN_ISA": "avx2", "FASTRNN_STEP_GEMM": "panel"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _layer_problem(cell, D, B, T, I, H, packed, dtype):
    """Random weights/inputs for one layer; packed: descending lengths from T down to 1."""
    G = gates(cell)
    if packed:
        lengths = torch.linspace(T, 1, B).round().long()
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.long)
    else:
        batch_sizes = None
    N = int(batch_sizes.sum()) if packed else T * B
    k = H ** -0.5  # torch's init scale: a well-conditioned problem, so float32 error stays ~1e-6
    r = lambda *s, a=1.0: ((torch.rand(*s, dtype=torch.float64) * 2 - 1) * a).to(dtype)  # noqa: E731
    x, h0 = r(N, I), r(D, B, H)
    c0 = r(D, B, H) if cell == "lstm" else None
    ws = [(r(G * H, I, a=k), r(G * H, H, a=k), r(G * H, a=k), r(G * H, a=k), None) for _ in range(D)]
    return x, batch_sizes, h0, c0, ws


# How a float32 test runs the layer: the time loop (FASTRNN_STEP_GEMM) and where the input
# projection is done (FASTRNN_INPUT_GEMM): "step" is the panel loop with each step projecting its
# own input (panel_gemm2), "panel" the panel loop after a panel-kernel projection of all steps,
# "blas" MKL for both; "step/after" and "before/step" the panel loop with the forward's projection
# and the backward's dx placed apart (FASTRNN_BACKWARD_INPUT_GEMM: each pass has its own limits).
# The variables are read by the extension on every call.
LOOPS = {"step": ("panel", "step", None), "panel": ("panel", "panel", None), "blas": ("blas", "blas", None),
         "step/after": ("panel", "step", "before"), "before/step": ("panel", "before", "step")}


def _set_loop(monkeypatch, loop):
    step, inp, bwd = LOOPS[loop]
    monkeypatch.setenv("FASTRNN_STEP_GEMM", step)
    monkeypatch.setenv("FASTRNN_INPUT_GEMM", inp)
    if bwd:
        monkeypatch.setenv("FASTRNN_BACKWARD_INPUT_GEMM", bwd)
    else:
        monkeypatch.delenv("FASTRNN_BACKWARD_INPUT_GEMM", raising=False)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("D,packed", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("loop", list(LOOPS))
def test_float32_step_loops_match_float64_reference(cell, D, packed, loop, monkeypatch):
    """Every float32 time loop (the panel GEMM with hidden units split across threads, where
    AVX2 is present, with the input projection per step or before the loop, and the BLAS loop)
    at sizes that take the threaded split, a ragged last panel (H % 16 != 0) and every row-tile
    remainder: outputs, states and all gradients against the float64 reference."""
    from fastrnn import functional
    _set_loop(monkeypatch, loop)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_float32_loops(cell, D, packed, functional)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("loop", list(LOOPS))
def test_threaded_passes_at_large_batch(cell, loop, monkeypatch):
    """A batch large enough that the BLAS loop's pointwise passes split across threads
    (bs x H past their grain), the panel loop covers 8-row tiles and every remainder, and the
    panel input projection several 256-row blocks."""
    from fastrnn import functional
    _set_loop(monkeypatch, loop)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_float32_loops(cell, 2, True, functional, B=71, T=3, I=8, H=232)
        # forward over > 256 rows, so the panel input projection runs several row blocks (the
        # gradients at this size are summed over so many rows that float32 rounding, torch's own
        # included, exceeds the per-element tolerance on elements that nearly cancel)
        prob = _layer_problem(cell, 2, 71, 9, 24, 232, True, torch.float32)
        x, bs, h0, c0, ws = prob
        got = functional.rnn_layer(cell, x, bs, h0, c0, ws, backend="cpp")
        d = lambda t: None if t is None else t.double()  # noqa: E731
        want = functional.rnn_layer(cell, d(x), bs, d(h0), d(c0), [tuple(d(w) for w in w5) for w5 in ws],
                                    backend="reference")
        assert x.size(0) > 256
        for i, (a, e) in enumerate(zip(got, want)):
            if a is not None:
                assert_close(a.double(), e, f"{cell} forward tensor {i}", rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_step_weight_gradients_over_several_chunks(cell, monkeypatch):
    """Where the panel loop adds the weight gradients as it goes (AVX-512 tables), it does so every
    256 // B steps: 30 packed steps of 19 rows flush three chunks, the last one short; 120 steps of
    3 rows with the input projection before the loop (as below 4 rows) two chunks."""
    from fastrnn import functional
    _set_loop(monkeypatch, "step")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_float32_loops(cell, 2, True, functional, T=30)
        _set_loop(monkeypatch, "panel")
        _check_float32_loops(cell, 2, True, functional, B=3, T=120)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_step_input_projection_without_biases(cell, monkeypatch):
    """The in-step input projection adds the biases in the GEMM tile (gru: all but b_hn); a
    layer without them takes the zero-bias path."""
    from fastrnn import functional
    _set_loop(monkeypatch, "step")
    _check_float32_loops(cell, 2, True, functional, bias=False)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("threads", [1, 2])
def test_panel_groups_at_few_rows(cell, threads, monkeypatch):
    """The panel kernel's multi-panel tiles (a block's gate panels, or up to four whole blocks of a
    one-gate cell and of the backward's columns): every row count of a 6-row tile, groups of 1-4
    panels and a ragged last block, each with the input projection in the steps and before them."""
    from fastrnn import functional
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for loop in ("step", "panel"):
            _set_loop(monkeypatch, loop)
            for B, H in ((1, 48), (2, 100), (3, 64), (5, 16), (6, 57), (7, 80)):
                _check_float32_loops(cell, 1, False, functional, B=B, T=3, I=36, H=H)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_steps_without_barrier(cell, monkeypatch):
    """Two threads whose every step splits skip the barrier (fused_steps.h: run_steps_overlapped):
    forward, a thread multiplies by its own units of h_{t-1}, waits for the other's, then adds
    theirs; backward, its own dG columns flow into dh (and dx) first.  Over many steps, an uneven
    split of blocks (5: 3 + 2) and both input plans, outputs and gradients are the float64
    reference's, as with FASTRNN_STEP_SYNC=barrier."""
    from fastrnn import functional
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for sync in ("overlap", "barrier"):
            monkeypatch.setenv("FASTRNN_STEP_SYNC", sync)
            for loop in ("step", "panel"):
                _set_loop(monkeypatch, loop)
                _check_float32_loops(cell, 1, False, functional, B=7, T=60, I=24, H=80)
                _check_float32_loops(cell, 2, False, functional, B=7, T=20, I=24, H=80)
    finally:
        torch.set_num_threads(saved)


def _check_float32_loops(cell, D, packed, functional, B=19, T=6, I=20, H=100, bias=True):
    prob = _layer_problem(cell, D, B, T, I, H, packed, torch.float32)
    if not bias:
        x, bs, h0, c0, ws = prob
        prob = (x, bs, h0, c0, [(w[0], w[1], None, None, None) for w in ws])
    leaves32 = [t.requires_grad_() for t in _flat(prob)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves32]
    res = []
    for leaves, backend in ((leaves32, "cpp"), (leaves64, "reference")):
        x, bs, h0, c0, ws = _unflat(prob, leaves)
        out, hn, cn = functional.rnn_layer(cell, x, bs, h0, c0, ws, backend=backend)
        outs = [out, hn] + ([cn] if cn is not None else [])
        gen = torch.Generator().manual_seed(7)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves)
        res.append(outs + list(grads))
    for i, (a, e) in enumerate(zip(*res)):
        assert_close(a.double(), e, f"{cell} tensor {i}", rtol=1e-4, atol=1e-5)


def _flat(prob):
    x, _, h0, c0, ws = prob
    return [x, h0] + ([c0] if c0 is not None else []) + [w for d in ws for w in d[:4] if w is not None]


def _unflat(prob, leaves):
    _, bs, _, c0, ws = prob
    it = iter(leaves)
    x, h0 = next(it), next(it)
    c = next(it) if c0 is not None else None
    new_ws = [tuple(None if w is None else next(it) for w in d[:4]) + (None,) for d in ws]
    return x, bs, h0, c, new_ws


def _cpp_ok(call) -> bool:
    from fastrnn import dispatch
    return not dispatch.torch_wins("cpp", call)


def test_prefer_hands_oneDNN_lstm_to_torch(monkeypatch):
    from fastrnn import dispatch
    defaults = dispatch.table("cpu-never-seen-64c")  # the rules against the default row
    monkeypatch.setattr(dispatch, "table", lambda: defaults)
    monkeypatch.setattr(dispatch, "PICKS", {})
    call = LayerCall(cell="lstm", device="cpu", dtype=torch.float32, input_size=8, hidden_size=512, proj_size=0,
                     batch=3, steps=100, directions=1, packed=False, needs_grad=False)
    ok = _cpp_ok(call)
    assert ok == (not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled))
    assert _cpp_ok(LayerCall(**{**call.__dict__, "cell": "gru"}))
    assert _cpp_ok(LayerCall(**{**call.__dict__, "packed": True}))
    # oneDNN reorders its weights on every call: short sequences, one step included, stay ours
    assert _cpp_ok(LayerCall(**{**call.__dict__, "steps": 20}))
    assert _cpp_ok(LayerCall(**{**call.__dict__, "steps": 1}))
    assert _cpp_ok(LayerCall(**{**call.__dict__, "steps": 21})) == ok
    assert not _cpp_ok(LayerCall(**{**call.__dict__, "steps": 1, "cell": "gru"}))
    assert not _cpp_ok(LayerCall(**{**call.__dict__, "steps": 1, "dtype": torch.float64}))
    # the panel loop with the input projection in its steps measured at least as fast as oneDNN
    wide = LayerCall(**{**call.__dict__, "batch": 16, "input_size": 256, "hidden_size": 256})
    lim = _ext.loop_limits()["forward"]
    in_steps = 2 << 20 <= max(lim["cached_bytes"], 16 * lim["bytes_per_row"])
    plan = _ext.loop_plan(proj=False, batch=16, steps=3, input_size=256, hidden=256, gates=4)
    assert plan == ("blas" if _ext.isa() == "baseline" else "panel+step" if in_steps else "panel")
    from fastrnn import dispatch
    assert _cpp_ok(wide) == (16 <= dispatch.table().get(f"onednn_cpp_rows.{plan}.fwd", 0) or ok)


def test_loop_limits_come_from_the_table_and_move_the_plan():
    """The in-step projection's byte limits, one pair per pass, are this CPU's row of the dispatch
    table (set when the extension loads) and decide the plan: 2 MiB of LSTM weights (H=256) at 16
    rows."""
    from fastrnn import dispatch
    t = dispatch.table()
    lim = _ext.loop_limits()
    assert lim == {p: {**{k: t[f"cpp.step_input.{p}.{k}"] for k in ("cached_bytes", "bytes_per_row")},
                       "panel_max_bytes": t[f"cpp.panel_loop.{p}.max_bytes"]} for p in ("forward", "backward")}
    with pytest.raises(ValueError, match="non-negative"):
        _ext.set_loop_limits({p: {"cached_bytes": -1, "bytes_per_row": 0, "panel_max_bytes": 0}
                              for p in ("forward", "backward")})
    with pytest.raises(ValueError, match="backward"):
        _ext.set_loop_limits({"forward": {"cached_bytes": 0, "bytes_per_row": 0, "panel_max_bytes": 0}})
    with pytest.raises(ValueError, match="panel_max_bytes"):
        _ext.set_loop_limits({p: {"cached_bytes": 0, "bytes_per_row": 0} for p in ("forward", "backward")})
    if _ext.isa() == "baseline":
        pytest.skip("no panel loop on a baseline x86-64 build")

    def plan(cached, per_row, backward=False):
        other = {"cached_bytes": 1 << 40, "bytes_per_row": 1 << 40, "panel_max_bytes": 1 << 40}
        mine = {"cached_bytes": cached, "bytes_per_row": per_row, "panel_max_bytes": 1 << 40}
        _ext.set_loop_limits({"forward": other if backward else mine, "backward": mine if backward else other})
        return _ext.loop_plan(proj=False, batch=16, steps=100, input_size=256, hidden=256, gates=4, backward=backward)

    try:
        for backward in (False, True):
            assert plan(2 << 20, 0, backward) == "panel+step"
            assert plan((2 << 20) - 1, 0, backward) == "panel"
            assert plan(0, 128 << 10, backward) == "panel+step"      # 2 MiB / 16 rows = 128 KiB a row
            assert plan(0, (128 << 10) - 1, backward) == "panel"
    finally:
        _ext.set_loop_limits(lim)


def test_long_sequences_project_in_their_steps():
    """Past the fitted limits, a forward whose projection of all steps would stream through memory
    (over 16 MiB of float32 gi) still projects in its steps where the weights are at most 128 KiB a
    batch row; the backward keeps its own limits."""
    if _ext.isa() == "baseline":
        pytest.skip("no panel loop on a baseline x86-64 build")
    lim = _ext.loop_limits()
    plan = lambda steps, hidden=256, backward=False: _ext.loop_plan(  # noqa: E731
        proj=False, batch=16, steps=steps, input_size=hidden, hidden=hidden, gates=4, backward=backward)
    try:
        _ext.set_loop_limits({p: {"cached_bytes": 0, "bytes_per_row": 0, "panel_max_bytes": 1 << 40}
                              for p in ("forward", "backward")})
        assert plan(100) == "panel"                      # gi 6.5 MB
        assert plan(300) == "panel+step"                 # gi 19.7 MB, 2 MiB of weights / 16 rows
        assert plan(300, backward=True) == "panel"
        assert plan(300, hidden=512) == "panel"          # 8 MiB / 16 rows = 512 KiB a row
    finally:
        _ext.set_loop_limits(lim)


def test_large_recurrent_weights_take_the_blas_loop_from_16_rows():
    """The fitted panel-loop limit (W_hh bytes of a direction, per pass) hands calls of 16 rows or
    more above it to the BLAS loop; fewer rows keep the panel loop. Both loops give the same result."""
    if _ext.isa() == "baseline":
        pytest.skip("no panel loop on a baseline x86-64 build")
    lim = _ext.loop_limits()
    plan = lambda batch, backward=False: _ext.loop_plan(  # noqa: E731
        proj=False, batch=batch, steps=20, input_size=64, hidden=64, gates=3, backward=backward)
    hh = 3 * 64 * 64 * 4
    try:
        _ext.set_loop_limits({"forward": {**lim["forward"], "panel_max_bytes": hh - 1},
                              "backward": {**lim["backward"], "panel_max_bytes": hh}})
        assert plan(16) == "blas" and plan(15) != "blas"
        assert plan(16, backward=True) != "blas"
        m = fastrnn.GRU(64, 64, backend="cpp")
        x = torch.randn(20, 16, 64, requires_grad=True)
        out = m(x)[0]
        out.sum().backward()
        _ext.set_loop_limits(lim)
        x2 = x.detach().clone().requires_grad_()
        out2 = m(x2)[0]
        out2.sum().backward()
        torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    finally:
        _ext.set_loop_limits(lim)


def test_baseline_isa_and_aten_gemm_agree():
    """The kernels built for baseline x86-64 and the at::mm_out GEMM path (env knobs read
    once at load, so in a fresh interpreter) give the AVX2 / BLAS results."""
    import os
    import subprocess
    import sys
    code = ("import torch; from fastrnn import _ext; torch.manual_seed(0);"
            "x=torch.randn(12,5,dtype=torch.float64); h=torch.randn(2,3,4,dtype=torch.float64);"
            "w=[torch.randn(12,5,dtype=torch.float64)]*2; u=[torch.randn(12,4,dtype=torch.float64)]*2;"
            "o=_ext.forward('gru',x,None,h,None,w,u,[None]*2,[None]*2,[None]*2,False)[0];"
            "print(_ext.isa(), _ext.gemm_path(), repr(o.sum().item()))")
    outs = []
    for env in ({}, {"FASTRNN_ISA": "baseline", "FASTRNN_GEMM": "aten"}):
        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                           check=True)
        outs.append(r.stdout.split())
    assert outs[1][:2] == ["baseline", "aten"]
    assert abs(float(outs[0][2]) - float(outs[1][2])) < 1e-10


def test_large_scratch_buffers_are_kept_between_calls_and_released():
    """Buffers of 32 MiB and more (here the 34 MiB input projection) are kept for the next call
    (csrc/scratch.h), give the same results fresh or reused, and fastrnn.empty_cache() unmaps them."""
    import os
    import subprocess
    import sys
    import fastrnn
    if sys.platform != "linux":
        pytest.skip("the mmap'd scratch buffers are Linux only")
    m = fastrnn.RNN(1, 16, backend="cpp")
    x = torch.randn(512, 1100, 1)
    fastrnn.empty_cache()
    with torch.no_grad():
        fresh = m(x)[0]
        reused = m(x)[0]
    assert torch.equal(fresh, reused)
    assert fastrnn.empty_cache() >= 32 << 20
    assert fastrnn.empty_cache() == 0
    code = ("import torch, fastrnn; m = fastrnn.RNN(1, 16, backend='cpp');"
            "torch.no_grad().__enter__(); m(torch.randn(512, 1100, 1)); print(fastrnn.empty_cache())")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTRNN_SCRATCH_CACHE_MB": "0"},
                       capture_output=True, text=True, check=True)
    assert r.stdout.split()[-1] == "0"
