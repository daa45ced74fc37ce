"""Backend registry and dispatch: listing, auto, explicit names, the env override."""
from __future__ import annotations

import logging

import pytest
import torch

import fastrnn
from fastrnn import backends, dispatch
from fastrnn.backends import LayerCall


def _call(**kw):
    base = dict(cell="lstm", device="cpu", dtype=torch.float32, input_size=4, hidden_size=6, proj_size=0,
                batch=2, steps=3, directions=1, packed=False, needs_grad=False)
    base.update(kw)
    return LayerCall(**base)


def test_available_backends_lists_cpu_backends_in_order():
    names = fastrnn.available_backends("cpu")
    assert "reference" in names and "torch" in names
    order = [n for n in ("cpp", "numba", "torch", "reference") if n in names]
    assert [n for n in names if n in order] == order
    assert fastrnn.available_backends(torch.device("cpu")) == names


def test_auto_never_picks_the_reference_or_an_unavailable_backend():
    picked = backends.select("auto", _call())
    assert picked.name != "reference"
    assert picked.availability()[0]


def test_named_backend_that_cannot_run_says_why():
    unavailable = [n for n in backends.names() if not backends.get(n).availability()[0]]
    for name in unavailable:
        with pytest.raises(RuntimeError, match=f"fastrnn backend '{name}' is not available"):
            backends.select(name, _call())
    with pytest.raises(RuntimeError, match="cannot run this call: it runs on"):
        backends.select("torch", _call(device="xla"))


def test_unsupported_option_is_refused_by_name_and_skipped_by_auto():
    fake = backends.Backend(name="fake", devices=frozenset({"cpu"}), dtypes=frozenset({torch.float32}),
                            proj=False, load=lambda: object())
    ok, why = fake.supports(_call(proj_size=2))
    assert not ok and "proj_size" in why
    ok, why = fake.supports(_call(dtype=torch.float64))
    assert not ok and "dtype" in why


def test_env_override(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    assert backends.select("auto", _call()).name == "reference"
    m = fastrnn.GRU(4, 6)
    ref = torch.nn.GRU(4, 6)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 2, 4)
    assert torch.allclose(m(x)[0], ref(x)[0], atol=1e-6)
    monkeypatch.setenv("FASTRNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="Unknown fastrnn backend"):
        m(x)


def test_explicit_backend_runs_that_backend(monkeypatch):
    seen = []
    real = backends.get("reference").impl.rnn_layer
    monkeypatch.setattr(backends.get("reference").impl, "rnn_layer",
                        lambda *a: seen.append(1) or real(*a))
    fastrnn.LSTM(4, 6, num_layers=2, backend="reference")(torch.randn(3, 2, 4))
    assert len(seen) == 2  # one call per layer


def test_auto_fallback_is_logged_once(caplog):
    with caplog.at_level(logging.DEBUG, logger="fastrnn"):
        dispatch._FALLBACK_LOGGED.clear()
        call = _call(device="cpu", dtype=torch.float16)
        b1 = backends.select("auto", call)
        b2 = backends.select("auto", call)
    assert b1 is b2
    picked_msgs = [r for r in caplog.records if "auto picked" in r.getMessage()]
    assert len(picked_msgs) <= 1


def test_expected_backends_are_built():
    """`make test` names the backends this install must have, so their tests cannot vanish silently."""
    import os
    expected = [b for b in os.environ.get("FASTRNN_EXPECT_BACKENDS", "").split(",") if b]
    missing = {b: backends.get(b).availability()[1] for b in expected if b not in fastrnn.available_backends("cpu")}
    assert not missing, f"backends expected but not available: {missing}"


def test_stack_goes_to_torch_in_one_call_when_every_layer_would(monkeypatch):
    """When torch runs every layer, the stack is one torch call: torch's own path, to the kernel."""
    impl = backends.get("torch").impl
    calls = []
    real_stack, real_layer = impl.rnn_stack, impl.rnn_layer
    monkeypatch.setattr(impl, "rnn_stack", lambda *a: calls.append("stack") or real_stack(*a))
    monkeypatch.setattr(impl, "rnn_layer", lambda *a: calls.append("layer") or real_layer(*a))
    ref = torch.nn.LSTM(4, 6, num_layers=3, bidirectional=True, dropout=0.3)
    m = fastrnn.LSTM(4, 6, num_layers=3, bidirectional=True, dropout=0.3, backend="torch")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4)
    torch.manual_seed(1)
    expected = ref(x)[0]
    torch.manual_seed(1)
    assert torch.equal(m(x)[0], expected)
    assert calls == ["stack"]


def test_auto_hands_a_onednn_lstm_module_call_straight_to_torch(monkeypatch):
    """auto's veto (float32 LSTM, padded, no proj, oneDNN on) covers every layer, so the module
    runs torch's own forward before any of our input handling; a named backend, the env override,
    packed input, another dtype or autocast still go through fastrnn's layers."""
    from fastrnn.dispatch import onednn_lstm_applies as onednn_lstm_applies_to
    if not onednn_lstm_applies_to("lstm", "cpu", torch.float32, 0, False):
        pytest.skip("torch has no oneDNN LSTM here")
    from fastrnn import functional
    seen = []
    real = functional.rnn
    monkeypatch.setattr(functional, "rnn", lambda *a, **k: seen.append(k["backend"]) or real(*a, **k))
    # 3 rows of 300 units: neither narrow nor wide enough for cpp's few-row rule
    # (dispatch._cpp_beats_onednn); 30 steps: past its short-sequence rule; and, whatever this CPU's
    # fitted row says, no loop of cpp's measured ahead of oneDNN
    t = {k: (0 if k.startswith("onednn_cpp_rows.") else v) for k, v in dispatch.table().items()
         if not k.startswith("onednn_cpp_wide.")}
    monkeypatch.setattr(dispatch, "table", lambda: t)
    monkeypatch.setattr(dispatch, "PICKS", {})  # picks under this table stay in this test
    ref = torch.nn.LSTM(4, 300, num_layers=2, dropout=0.3)
    m = fastrnn.LSTM(4, 300, num_layers=2, dropout=0.3)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(30, 3, 4)
    torch.manual_seed(3)
    expected = ref(x)
    torch.manual_seed(3)
    got = m(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1][1], expected[1][1])
    assert seen == []
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        m(torch.randn(30, 2, 3))  # torch's own message, raised by torch's forward
    m.backend = "cpp" if "cpp" in fastrnn.available_backends("cpu") else "reference"
    m(x)
    m.backend = "auto"
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    m(x)
    monkeypatch.delenv("FASTRNN_BACKEND")
    m(torch.nn.utils.rnn.pack_padded_sequence(x, [30, 20, 12]))
    m.double()(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.float()(x)
    assert len(seen) == 5
    # A float32/float64 cell is one step: where the table says torch wins one-step calls
    # (one_step_to_torch, set here whatever this CPU's row says), auto runs torch's own cell, not a
    # one-step layer of ours; half types still come to us
    monkeypatch.setattr(dispatch, "table", lambda: {**t, **{f"one_step_to_torch.{d}.{m}": True for d in (
        "float32", "float64") for m in ("fwd", "fwdbwd")}})
    monkeypatch.setattr(dispatch, "PICKS", {})
    layers = []
    real_layer = functional.rnn_layer
    monkeypatch.setattr(functional, "rnn_layer", lambda *a, **k: layers.append(1) or real_layer(*a, **k))
    cell, ref_cell = fastrnn.LSTMCell(4, 6), torch.nn.LSTMCell(4, 6)
    ref_cell.load_state_dict(cell.state_dict())
    got, want = cell(x[0]), ref_cell(x[0])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and layers == []
    cell.double()(x[0].double())
    fastrnn.GRUCell(4, 6)(x[0])
    assert layers == []
    cell.bfloat16()(x[0].bfloat16())
    assert layers == [1]


def test_wide_rule_keeps_wide_lstm_layers_on_cpp(monkeypatch):
    """`onednn_cpp_wide.<plan>.<mode>` = [hidden from, hidden to, rows]: where the rows rule
    stopped at a narrow layer's loss, layers of those widths stay on cpp up to those rows;
    narrower or wider ones and more rows go to oneDNN."""
    if "cpp" not in fastrnn.available_backends("cpu"):
        pytest.skip("cpp backend not built")
    from fastrnn.backends import cpp
    from fastrnn.dispatch import onednn_lstm_applies as onednn_lstm_applies_to
    if not onednn_lstm_applies_to("lstm", "cpu", torch.float32, 0, False):
        pytest.skip("torch has no oneDNN LSTM here")
    base = {k: v for k, v in dispatch.table().items() if not k.startswith(("onednn_cpp_rows.", "onednn_cpp_wide."))}
    monkeypatch.setattr(dispatch, "PICKS", {})
    plan = cpp.loop_plan(_call(batch=32, hidden_size=320, steps=100, needs_grad=True))
    t = dict(base, **{f"onednn_cpp_wide.{plan}.fwdbwd": [320, 336, 64]})
    monkeypatch.setattr(dispatch, "table", lambda: t)
    for H, B, want in ((320, 32, "cpp"), (336, 64, "cpp"), (319, 32, "torch"), (337, 32, "torch"),
                       (320, 65, "torch")):
        call = _call(batch=B, hidden_size=H, steps=100, needs_grad=True)
        if cpp.loop_plan(call) == plan:  # the rule is per loop
            assert backends.select("auto", call).name == want, (H, B)
    assert backends.select("auto", _call(batch=32, hidden_size=320, steps=100)).name == "torch"  # fwd: no rule


def test_auto_keeps_wide_few_row_lstm_on_cpp(monkeypatch):
    """Where our loop measured faster than oneDNN (<= 2 rows; <= 4 rows with hidden <= 256 or
    >= 1024; 4-64 rows with the input projection in the panel loop's steps) auto keeps cpp, in
    select and in the module's shortcut alike."""
    if "cpp" not in fastrnn.available_backends("cpu"):
        pytest.skip("cpp backend not built")
    from fastrnn import functional
    # the rules against the default row (the Zen4 measurements), whatever this CPU's fitted row says
    defaults = dispatch.table("cpu-never-seen-64c")
    monkeypatch.setattr(dispatch, "table", lambda: defaults)
    monkeypatch.setattr(dispatch, "PICKS", {})
    assert backends.select("auto", _call(batch=4, hidden_size=1024, steps=100)).name == "cpp"
    from fastrnn.dispatch import onednn_lstm_applies as onednn_lstm_applies_to
    onednn = onednn_lstm_applies_to("lstm", "cpu", torch.float32, 0, False)
    veto = "torch" if onednn else "cpp"
    assert backends.select("auto", _call(batch=8, hidden_size=1024, steps=100)).name == veto
    assert backends.select("auto", _call(batch=2, needs_grad=True, steps=100)).name == "cpp"
    assert backends.select("auto", _call(batch=1, needs_grad=False, steps=100)).name == "cpp"
    assert backends.select("auto", _call(batch=3, needs_grad=False, steps=100)).name == "cpp"
    assert backends.select("auto", _call(batch=3, hidden_size=512, steps=100)).name == veto
    from fastrnn import _ext
    plan = _ext.loop_plan(proj=False, batch=16, steps=100, input_size=64, hidden=64, gates=4)
    step = 16 <= dispatch.table().get(f"onednn_cpp_rows.{plan}.fwd", 0)  # measured per CPU class and loop
    assert backends.select("auto", _call(batch=16, input_size=64, hidden_size=64, steps=100)).name == (
        "torch" if onednn and not step else "cpp")
    assert backends.select("auto", _call(batch=128, input_size=64, hidden_size=64, steps=100)).name == veto
    # oneDNN's per-call weight reorder: up to 20 steps (one included) every shape stays ours
    for steps in (1, 5, 20):
        assert backends.select("auto", _call(batch=128, input_size=64, hidden_size=64, steps=steps)).name == "cpp"
        assert backends.select("auto", _call(batch=8, hidden_size=1024, steps=steps)).name == "cpp"
    assert backends.select("auto", _call(batch=8, hidden_size=1024, steps=21)).name == veto
    assert backends.select("auto", _call(cell="gru", steps=1)).name == "torch"
    seen = []
    real = functional.rnn
    monkeypatch.setattr(functional, "rnn", lambda *a, **k: seen.append(k["backend"]) or real(*a, **k))
    m = fastrnn.LSTM(8, 1024, batch_first=True)
    ref = torch.nn.LSTM(8, 1024, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
    assert seen == ["auto"]


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="torch has no native bf16 CPU kernels here (then auto keeps every bf16 call)")
def test_auto_hands_bf16_to_torch_where_torch_measured_faster():
    """bf16 runs natively in cpp where the CPU has AVX512_BF16 (cpp.NATIVE_DTYPES), upcast to float32
    elsewhere; torch's native oneDNN bf16 wins from a few rows (the bfloat16.* and bfloat16.native.*
    rows of fastrnn/dispatch_table.py), where auto must hand the call over."""
    if "cpp" not in fastrnn.available_backends():
        pytest.skip("cpp backend not built")
    pick = lambda **kw: backends.select("auto", _call(dtype=torch.bfloat16, **kw)).name  # noqa: E731
    key = "bfloat16" + dispatch._cpp_native(torch.bfloat16)  # upcast, AMX (".native") or vdpbf16ps (".native_dp")
    amx = key == "bfloat16.native"
    rows = dispatch.table()[key + ".fused_lstm_rows_above.fwdbwd"]
    rows_fwd = dispatch.table()[key + ".fused_lstm_rows_above.fwd"]
    assert pick(cell="lstm", batch=rows_fwd + 1, hidden_size=256, needs_grad=False) == "torch"
    assert pick(cell="lstm", batch=1, hidden_size=256, needs_grad=True) == "cpp"
    assert pick(cell="lstm", batch=rows + 1, hidden_size=256, needs_grad=True) == "torch"
    assert pick(cell="gru", batch=16, hidden_size=128, needs_grad=False) == "cpp"    # 1.6 MFLOP a step
    flops = dispatch.table()[key + ".gemm_flops_above.fwdbwd"]
    above = int(flops // (2 * 3 * 512 * 512)) + 1  # rows of a GRU H=512 step over that edge
    assert pick(cell="gru", batch=above, hidden_size=512, needs_grad=True) == "torch"
    assert pick(cell="gru", batch=above - 1, hidden_size=512, needs_grad=True) == "cpp"
    # AMX: GRU/RNN inference at every measured size (to 537 MFLOP a step); upcast: up to 4 MFLOP;
    # vdpbf16ps alone: up to 6.3
    assert pick(cell="gru", batch=64, hidden_size=512, needs_grad=False) == ("cpp" if amx else "torch")
    assert pick(cell="lstm", batch=rows, hidden_size=256, needs_grad=True) == "cpp"
    assert backends.select("auto", _call(dtype=torch.float32, cell="gru", batch=64, hidden_size=512)).name == "cpp"
