"""Property-based fuzzing against torch.nn in float64: random configurations, every CPU backend.

CI runs a bounded, seeded number of examples; `make fuzz` runs many more
(FASTRNN_FUZZ_EXAMPLES). Outputs, final states and all gradients must match.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from conftest import CPU_BACKENDS, TOL, assert_close

EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "25"))


@st.composite
def configs(draw):
    mode = draw(st.sampled_from(["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]))
    H = draw(st.integers(1, 12))
    return dict(
        mode=mode, I=draw(st.integers(1, 9)), H=H, layers=draw(st.integers(1, 3)), bi=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        proj=draw(st.integers(0, H - 1)) if mode == "LSTM" and H > 1 else 0,
        T=draw(st.integers(1, 9)), B=draw(st.integers(1, 5)),
        packed=draw(st.sampled_from([None, "sorted", "unsorted"])), hx=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])), seed=draw(st.integers(0, 2**16)),
    )


def _run(m, x, hx, lengths, c):
    x = x.clone().requires_grad_()
    if hx is not None and c["mode"] != "LSTM":
        hx = hx[:1]  # GRU/RNN have no cell state
    hx_in = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=c["batch_first"], enforce_sorted=c["packed"] == "sorted")
    out, h = m(inp, hx_in if hx_in is None or c["mode"] == "LSTM" else hx_in[0])
    if lengths is not None:
        out = pad_packed_sequence(out, batch_first=c["batch_first"])[0]
    hs = list(h) if isinstance(h, tuple) else [h]
    (out.sum() + sum((t * 0.5).sum() for t in hs)).backward()
    grads = [x.grad] + ([] if hx_in is None else [t.grad for t in hx_in]) + [p.grad for p in m.parameters()]
    return [out] + hs, grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_against_torch(backend):
    @seed(20261125)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(configs())
    def check(c):
        torch.manual_seed(c["seed"])
        kw = dict(num_layers=c["layers"], bias=c["bias"], batch_first=c["batch_first"], bidirectional=c["bi"],
                  dtype=c["dtype"])
        if c["proj"]:
            kw["proj_size"] = c["proj"]
        mode = c["mode"]
        if mode.startswith("RNN"):
            kw["nonlinearity"] = mode[4:].lower()
        name = mode.split("_")[0]
        ref = getattr(nn, name)(c["I"], c["H"], **kw)
        fast = getattr(fastrnn, name)(c["I"], c["H"], backend=backend, **kw)
        fast.load_state_dict(ref.state_dict())
        T, B, D = c["T"], c["B"], 2 if c["bi"] else 1
        x = torch.randn((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"]), dtype=c["dtype"])
        hx = None
        if c["hx"]:
            hx = (torch.randn(c["layers"] * D, B, c["proj"] or c["H"], dtype=c["dtype"]),
                  torch.randn(c["layers"] * D, B, c["H"], dtype=c["dtype"]))
        lengths = None
        if c["packed"]:
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T
            if c["packed"] == "sorted":
                lengths = lengths.sort(descending=True).values
        vals_r, grads_r = _run(ref, x, hx, lengths, c)
        vals_f, grads_f = _run(fast, x, hx, lengths, c)
        tol = TOL[c["dtype"]]
        for i, (a, b) in enumerate(zip(vals_f, vals_r)):
            assert_close(a, b, f"{c} value[{i}]", **tol)
        for i, (a, b) in enumerate(zip(grads_f, grads_r)):
            assert_close(a, b, f"{c} grad[{i}]", **tol)

    check()
