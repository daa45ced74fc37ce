"""Meta tensors and FakeTensorMode (deferred init, FSDP meta init, shape inference) give torch.nn's
shapes and dtypes through models holding fastrnn modules."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tool_models import KINDS, example, pair


def _shapes(out):
    return [(t.shape, t.dtype) for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("kind", list(KINDS))
def test_meta_device(kind):
    ref, fast = pair(kind)
    ref, fast = ref.to("meta"), fast.to("meta")
    x = example(kind).to("meta")
    got = fast(x)
    assert got.device.type == "meta"
    assert _shapes(got) == _shapes(ref(x))


@pytest.mark.parametrize("kind", ["LSTM-proj", "GRU-bi", "RNNCell"])
def test_built_on_meta_then_materialised(kind):
    """with torch.device("meta"): build, then to_empty + reset_parameters, as deferred init does."""
    with torch.device("meta"):
        _, fast = pair(kind)
    fast = fast.to_empty(device="cpu")
    for m in fast.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert fast(example(kind)).isfinite().all()


@pytest.mark.parametrize("kind", ["LSTM-L2", "GRU-bi", "LSTM-proj", "LSTMCell"])
def test_fake_tensor_mode(kind):
    ref, fast = pair(kind)
    x = example(kind)
    want = _shapes(ref(x))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        got = fast(mode.from_tensor(x))
    assert _shapes(got) == want
