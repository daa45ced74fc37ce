"""torch.compile(fullgraph=True) on models holding fastrnn modules: one graph, no graph break,
torch.nn's numbers forward and backward, no recompile across sizes with dynamic shapes, and a
user's own nn.LSTM treated by Dynamo exactly as before.

Most cases compile with the aot_eager backend (Dynamo + AOTAutograd, the parts our op plugs
into, without Inductor's C++ codegen, which costs ~10 s a graph on 2 cores); one runs Inductor."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import CPU_BACKENDS, assert_close
from tool_models import KINDS, example, pair

torch._dynamo = pytest.importorskip("torch._dynamo")


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_same(ref, fast, compiled, x, what):
    want = ref(x)
    got = compiled(x)
    assert_close(got, want, f"{what} forward", rtol=1e-5, atol=1e-6)
    want.square().sum().backward()
    got.square().sum().backward()
    gw, gg = _grads(ref), _grads(fast)
    assert gw.keys() == gg.keys()
    for n in gw:
        assert_close(gg[n], gw[n], f"{what} grad {n}", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "auto"])
@pytest.mark.parametrize("kind", ["LSTM-L2", "GRU-bi"])
def test_fullgraph_every_backend(kind, backend):
    torch._dynamo.reset()
    ref, fast = pair(kind, backend)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    _check_same(ref, fast, compiled, example(kind), f"{kind} on {backend}")
    assert isinstance(fast.rnn, getattr(nn, KINDS[kind][0]))


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("LSTM-L2", "GRU-bi")])
def test_fullgraph_every_kind(kind):
    torch._dynamo.reset()
    ref, fast = pair(kind)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    _check_same(ref, fast, compiled, example(kind), kind)


def test_fullgraph_unbatched_and_hx():
    torch._dynamo.reset()
    ref, fast = pair("LSTM-L2")

    def run(m, x, h):
        out, (hn, cn) = m.rnn(x, h)
        return m.head(out), hn, cn

    x = example("LSTM-L2")[:, 0]  # [T, I]: unbatched
    h = (torch.randn(2, 16), torch.randn(2, 16))
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(fast, x, h), run(ref, x, h)):
        assert_close(got, want, "unbatched with hx", rtol=1e-5, atol=1e-6)


def test_inductor_matches_eager():
    torch._dynamo.reset()
    ref, fast = pair("GRU-bi", "cpp")
    compiled = torch.compile(fast, fullgraph=True)
    _check_same(ref, fast, compiled, example("GRU-bi"), "inductor")


def test_dynamic_sizes_do_not_recompile():
    torch._dynamo.reset()
    ref, fast = pair("LSTM-L2")
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager", dynamic=True)
    compiled(example("LSTM-L2", T=5, B=3))
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for T, B in [(7, 4), (2, 9), (30, 2)]:  # sizes 0 and 1 are specialised by Dynamo for any model
        x = example("LSTM-L2", T=T, B=B)
        assert_close(compiled(x), ref(x), f"T={T} B={B}", rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames, "a size change recompiled"


def test_users_own_nn_lstm_is_left_alone():
    """fastrnn lifts Dynamo's RNN refusal for its own modules only, never globally."""
    torch._dynamo.reset()
    ref, fast = pair("LSTM-L2")
    torch.compile(fast, fullgraph=True, backend="aot_eager")(example("LSTM-L2"))
    assert torch._dynamo.config.allow_rnn is False
    with pytest.raises(Exception, match="Attempted to wrap RNN, GRU, or LSTM"):
        torch.compile(ref, fullgraph=True, backend="aot_eager")(example("LSTM-L2"))


def test_opcheck_every_backend():
    """The custom op passes torch.library.opcheck (schema, autograd registration, fake tensors,
    AOT dispatch with dynamic shapes) for every CPU backend, each cell, with and without bias."""
    from torch.library import opcheck
    for backend in CPU_BACKENDS:
        for cell, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1)):
            x = torch.randn(12, 5, requires_grad=True)
            h0 = torch.randn(2, 3, 6, requires_grad=True)
            c0 = torch.randn(2, 3, 6) if cell == "lstm" else None
            ws = [w for _ in range(2) for w in (torch.randn(G * 6, 5, requires_grad=True),
                                                torch.randn(G * 6, 6, requires_grad=True),
                                                torch.randn(G * 6, requires_grad=True),
                                                torch.randn(G * 6, requires_grad=True))]
            present = [1, 1, 1, 1, 0] * 2
            result = opcheck(torch.ops.fastrnn.rnn_layer.default, (x, h0, c0, ws, present, None, cell, backend, True))
            assert all(v == "SUCCESS" for v in result.values()), (backend, cell, result)


def test_packed_input_compiles_like_torch():
    """PackedSequence: torch.compile breaks the graph at pack_padded_sequence for torch.nn too
    (Dynamo skips it); the layer itself still runs as our op with torch.nn's numbers."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch._dynamo.reset()
    ref, fast = pair("GRU-bi", "cpp")

    def run(m, x, lengths):
        out, _ = m.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return m.head(pad_packed_sequence(out)[0])

    x, lengths = example("GRU-bi", T=7, B=3), torch.tensor([7, 4, 2])
    got = torch.compile(run, backend="aot_eager")(fast, x, lengths)
    assert_close(got, run(ref, x, lengths), "packed", rtol=1e-5, atol=1e-6)
