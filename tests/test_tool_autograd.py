"""Higher-order autograd and torch.func on models holding fastrnn modules, against torch.nn:
double backward (create_graph=True, e.g. gradient penalties) on every CPU backend, and
torch.func grad / vjp / jacrev / vmap through functional_call."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vjp, vmap

from conftest import CPU_BACKENDS, assert_close
from tool_models import KINDS, LAYER_KINDS, example, pair

F64 = dict(rtol=1e-8, atol=1e-10)


def _penalty_grads(model, x):
    """d/dparams of |d out / d x|^2: a gradient penalty, which needs second-order gradients."""
    x = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
    params = [p for p in model.parameters()]
    return torch.autograd.grad(gx.square().sum(), [x, *params], allow_unused=True)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "auto"])
@pytest.mark.parametrize("kind", LAYER_KINDS + ["GRUCell"])
def test_double_backward(kind, backend):
    ref, fast = pair(kind, backend, dtype=torch.float64)
    x = example(kind, dtype=torch.float64)
    for got, want in zip(_penalty_grads(fast, x), _penalty_grads(ref, x)):
        if want is None:
            assert got is None or not got.any()
        else:
            assert_close(got, want, f"{kind} second-order", **F64)


@pytest.mark.parametrize("kind", list(KINDS))
def test_func_grad_vjp_jacrev(kind):
    ref, fast = pair(kind, dtype=torch.float64)
    x = example(kind, dtype=torch.float64, T=3, B=2)
    pr, pf = dict(ref.named_parameters()), dict(fast.named_parameters())

    def loss(p, m, x):
        return functional_call(m, p, (x,)).square().sum()

    gr, gf = grad(loss)(pr, ref, x), grad(loss)(pf, fast, x)
    for n in gr:
        assert_close(gf[n], gr[n], f"grad {n}", **F64)
    (out_r, fn_r), (out_f, fn_f) = vjp(lambda x: ref(x), x), vjp(lambda x: fast(x), x)
    assert_close(out_f, out_r, "vjp out", **F64)
    v = torch.randn_like(out_r)
    assert_close(fn_f(v)[0], fn_r(v)[0], "vjp", **F64)
    assert_close(jacrev(lambda x: fast(x))(x), jacrev(lambda x: ref(x))(x), "jacrev", **F64)


@pytest.mark.parametrize("kind", ["LSTM-L2", "GRUCell"])
def test_vmap_like_torch(kind):
    """vmap over a batch of inputs gives torch.nn's results one input at a time (torch.nn's own
    LSTM has no batching rule for aten::lstm; under transforms fastrnn runs the reference
    recurrence, plain torch ops, which vmap batches)."""
    ref, fast = pair(kind, dtype=torch.float64)
    xs = torch.stack([example(kind, dtype=torch.float64, seed=s) for s in range(3)])
    want = torch.stack([ref(x) for x in xs])
    assert_close(vmap(fast)(xs), want, "vmap", **F64)
