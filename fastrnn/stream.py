"""`fastrnn.Stream`: run a recurrent module one frame at a time, with its state kept between calls.

Real-time speech and control code feeds an RNN frame by frame. Calling the module with T=1 pays
the module's whole per-call path every frame (argument checks, hx handling, dispatch, the layer
op, output allocation): 70-90 us in torch.nn.LSTM at B=1, H=64 on a 2-core Sapphire Rapids, for
~32k multiply-adds. A Stream does that work once, at construction, and each `step` is one
compiled call (`fastrnn.kernels.numba.stream.stream_step`) that runs every layer of the frame:
~6 us for that LSTM (`python -m fastrnn.bench stream` times it against torch, fastrnn's module
and ONNX Runtime). Where those 6 us go (measured, minima): the kernel 3.5 (the two products 1.5,
the gates 0.2, the call with its four arguments and the returned array ~1), Python 2.5 (the
version check 0.4, x.numpy() 0.55, torch.from_numpy 0.4, the checks and numba's dispatch).
The first Stream of a dtype compiles the kernel (2-3 s, once: numba caches it on disk).

    s = fastrnn.Stream(module, batch_size=1)    # fastrnn or torch.nn LSTM/GRU/RNN or a cell
    with torch.inference_mode():
        for frame in frames:                    # frame: [B, input_size], or [input_size] when B=1
            y = s.step(frame)                   # [B, P] (or [P]): the module's output for the frame
    h, c = s.state                              # torch's layout: [L, B, P], [L, B, H] (cells: [B, H])
    s.reset()                                   # zeros; or s.reset(hx) with hx as the module takes it

`y` is the same as `module(frames[:t+1])[0][t]` (float64 to ~1e-15; float32 to ~1e-6: the
recurrent products are summed in a fixed order rather than by BLAS, and float32 tanh/sigmoid
are those of the numba backend).

Weights. The step kernel reads one packed, transposed copy of the parameters (a transposed
layout is what lets the products vectorise without reordering sums, and one buffer keeps the
compiled call at four arguments; see the kernel's docstring). Before every step the Stream
compares each parameter's autograd version counter (`p._version`, ~0.07 us a parameter) with
the one it packed, and re-packs when one moved. So in-place updates made the ordinary ways are
seen at the next step: optimizer steps, `load_state_dict`, `with torch.no_grad(): p.copy_(...)`,
`nn.init.*`. Not seen, because they leave the version counter alone: writes through `p.data`
(`p.data.copy_(...)`, `p.data = t`) and replacing a Parameter object (`module.weight_hh_l0 =
nn.Parameter(...)`, `module.to(...)`); call `s.refresh()` after those. Measured alternative: a
kernel reading torch's [G*H, K] weights in place would need a reordered (fastmath) dot product
to vectorise, and one argument per weight, which makes the compiled signature depend on the
depth, bias and proj (one JIT compile per configuration).

Limits, each a clear error: inference only (grad mode with a parameter or the input requiring
grad raises: use torch.no_grad() or torch.inference_mode(); autograd is never silently dropped);
float32 and float64 on CPU (the dtype of the module's parameters; bf16/fp16 run upcast in the
module itself); no bidirectional modules (a backward direction needs the frames that have not
arrived yet); no zoneout, and dropout/weight_dropout only at eval (`module.eval()`), where they
do nothing. The batch size is fixed at construction (the buffers are preallocated for it).

The kernel is single-threaded: at B=1 and H <= 256 a frame is too small to split over threads
profitably (a 2-thread torch.mv of 1 MiB costs more in the OpenMP barrier than in the reads once
the cores are shared), and it calls no BLAS, so no thread count is touched (process state stays as
it was). A Stream is not thread-safe: use one per thread.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

_MODE_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_DTYPES = (torch.float32, torch.float64)
_K = None


def _kernels():
    global _K
    if _K is None:
        from fastrnn.kernels.numba import stream
        _K = stream
    return _K


def _describe(module) -> tuple:
    """(cell name, is a cell module, layers, input_size, hidden_size, proj, bias, [per-layer params])."""
    if isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        if isinstance(module, nn.LSTMCell):
            cell = "lstm"
        elif isinstance(module, nn.GRUCell):
            cell = "gru"
        else:
            if module.nonlinearity not in ("tanh", "relu"):
                raise ValueError(f"Unknown nonlinearity: {module.nonlinearity}")
            cell = "rnn_" + module.nonlinearity
        names = [("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if module.bias else (None, None)) + (None,)]
        return cell, True, 1, module.input_size, module.hidden_size, 0, module.bias, names
    if isinstance(module, nn.RNNBase):
        if module.mode not in _MODE_CELL:
            raise ValueError(f"Unknown recurrent mode {module.mode!r}")
        if module.bidirectional:
            raise ValueError("fastrnn.Stream cannot run a bidirectional module: its backward direction "
                             "reads the sequence from the last frame back, and a stream has not seen the "
                             "frames that come after the current one. Run the module on the whole "
                             "sequence instead.")
        if getattr(module, "zoneout", 0.0):
            raise ValueError("fastrnn.Stream does not support zoneout; run the module itself")
        proj = getattr(module, "proj_size", 0)
        names = []
        for layer in range(module.num_layers):
            sfx = f"_l{layer}"
            names.append(("weight_ih" + sfx, "weight_hh" + sfx,
                          "bias_ih" + sfx if module.bias else None, "bias_hh" + sfx if module.bias else None,
                          "weight_hr" + sfx if proj > 0 else None))
        return (_MODE_CELL[module.mode], False, module.num_layers, module.input_size, module.hidden_size,
                proj, module.bias, names)
    raise TypeError(f"fastrnn.Stream runs torch.nn/fastrnn LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell "
                    f"modules; got {type(module).__name__}")


class Stream:
    """Runs `module` one frame at a time, keeping its state and buffers between calls.

    Args:
        module: a fastrnn or torch.nn `LSTM`, `GRU`, `RNN` (tanh or relu; any depth, bias,
            proj_size; unidirectional) or `LSTMCell`, `GRUCell`, `RNNCell`, on CPU, with float32
            or float64 parameters. Its parameters are read, never copied into the module or
            changed; see the module docstring for when updates to them are seen.
        batch_size: B, the number of independent streams stepped together (fixed).
        hx: the initial state as the module takes it (LSTM: (h0 [L, B, P], c0 [L, B, H]);
            GRU/RNN: h0 [L, B, H]; cells: [B, H] / (h, c); the unbatched forms when B = 1);
            None for zeros.

    `step(x)`: x [B, input_size] (or [input_size] when B = 1) -> the module's output for this
    frame, [B, P] (or [P]), a new tensor each call. `state`: copies of the current state in the
    module's layout. `reset(hx=None)`. `refresh()`: re-pack the parameters now.
    """

    def __init__(self, module: nn.Module, batch_size: int = 1, hx=None):
        K = _kernels()
        cell, is_cell, L, I, H, proj, bias, names = _describe(module)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        params = []
        for layer in names:
            for n in layer:
                if n is None:
                    continue
                p = module._parameters.get(n)
                if not isinstance(p, torch.Tensor):
                    raise ValueError(f"fastrnn.Stream reads the module's parameters directly; {n} is not a "
                                     f"plain parameter (a parametrization or weight_norm?)")
                params.append(p)
        dtype = params[0].dtype
        if dtype not in _DTYPES:
            raise TypeError(f"fastrnn.Stream runs float32 and float64 modules; this one's parameters are "
                            f"{dtype}. Convert it (module.float()) or call the module itself, which runs "
                            f"{dtype} (upcast where no native kernel exists).")
        if any(p.dtype != dtype or p.device.type != "cpu" for p in params):
            raise TypeError("fastrnn.Stream runs on CPU, with every parameter of one dtype; got "
                            f"{sorted({(str(p.device), str(p.dtype)) for p in params})}")
        self.module = module
        self.batch_size = B = batch_size
        self.dtype = dtype
        self._cell, self._is_cell, self._L, self._I, self._H = cell, is_cell, L, I, H
        self._P = P = proj if proj > 0 else H
        self._names = names
        self._params = params
        self._dropout = bool(getattr(module, "dropout", 0.0) or getattr(module, "weight_dropout", 0.0))
        self._lstm = cell == "lstm"
        self._gru = cell == "gru"
        GH = K.GATES[cell] * H
        self._GH = GH

        # The packed buffer: a 1.0 at index 0, then each layer's W_ih^T, W_hh^T, bias, b_hn, W_hr^T.
        meta = np.zeros(K.META + K.META * L, np.int64)
        meta[:7] = (K.CELL_IDS[cell], L, B, H, P, GH, 0)
        off = 1
        self._layout = []
        for layer in range(L):
            In = I if layer == 0 else P
            e = K.META + K.META * layer
            o_ih, off = off, off + In * GH
            o_hh, off = off, off + P * GH
            o_b, off = (off, off + GH) if bias else (-1, off)
            o_hn, off = off, off + H
            o_hr, off = (off, off + H * P) if proj > 0 else (-1, off)
            meta[e:e + 6] = (In, o_ih, o_hh, o_b, o_hn, o_hr)
            self._layout.append((In, o_ih, o_hh, o_b, o_hn, o_hr))
        self._wt = torch.zeros(off, dtype=dtype)
        self._wt[0] = 1.0
        self._meta = meta
        self._w = self._wt.numpy()
        self._st = torch.zeros(K.scratch_size(L, B, H, P, GH), dtype=dtype)
        self._state = self._st.numpy()
        n_h, n_c = L * B * P, L * B * H
        self._h = self._st[:n_h].view(L, B, P)
        self._c = self._st[n_h:n_h + n_c].view(L, B, H)
        self._shape2 = (B, I)
        self._shape1 = (I,) if B == 1 else None  # None: a 1D frame never takes the fast path
        self._step = K.stream_step
        self.refresh()
        self._step(self._meta, self._w, self._state, np.zeros((B, I), self._w.dtype))  # JIT / cache load
        self.reset(hx)

    # -------------------------------------------------------------------------------- weights

    def refresh(self):
        """Re-packs the parameters now (after writes through `p.data` or replaced Parameters)."""
        module, params = self.module, []
        for layer in self._names:
            for n in layer:
                if n is not None:
                    params.append(module._parameters.get(n))
        for old, p in zip(self._params, params):
            if not isinstance(p, torch.Tensor) or p.shape != old.shape or p.dtype != self.dtype or \
                    p.device.type != "cpu":
                raise RuntimeError("the module's parameters changed shape, dtype or device since this "
                                   "fastrnn.Stream was built; build a new Stream")
        self._params = params
        self._versions = [p._version for p in params]
        H, GH, wt = self._H, self._GH, self._wt
        is_gru = self._gru
        with torch.no_grad():
            it = iter(params)
            for (In, o_ih, o_hh, o_b, o_hn, o_hr), names in zip(self._layout, self._names):
                w_ih, w_hh = next(it), next(it)
                b_ih, b_hh = (next(it), next(it)) if names[2] is not None else (None, None)
                w_hr = next(it) if names[4] is not None else None
                wt[o_ih:o_ih + In * GH].view(In, GH).copy_(w_ih.t())
                wt[o_hh:o_hh + w_hh.shape[1] * GH].view(-1, GH).copy_(w_hh.t())
                if b_ih is not None:
                    b = wt[o_b:o_b + GH]
                    if is_gru:  # b_hn stays apart: it is multiplied by r
                        b.copy_(b_ih)
                        b[:2 * H] += b_hh[:2 * H]
                        wt[o_hn:o_hn + H].copy_(b_hh[2 * H:])
                    else:
                        torch.add(b_ih, b_hh, out=b)
                if w_hr is not None:
                    wt[o_hr:o_hr + H * self._P].view(H, self._P).copy_(w_hr.t())

    # -------------------------------------------------------------------------------- state

    def reset(self, hx=None):
        """Sets the state to zeros, or to `hx` in the module's layout (see the class docstring)."""
        if hx is None:
            self._st.zero_()
            return
        if torch.is_grad_enabled() and any(t.requires_grad for t in (hx if isinstance(hx, tuple) else (hx,))
                                           if isinstance(t, torch.Tensor)):
            raise RuntimeError(self._grad_message("hx"))
        B = self.batch_size
        if self._lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("an LSTM stream's hx is a tuple (h_0, c_0)")
            pairs = [(hx[0], self._h, "hidden"), (hx[1], self._c, "cell")]
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
            pairs = [(hx, self._h, "hidden")]
        for t, dst, what in pairs:
            want = tuple(dst.shape[1:]) if self._is_cell else tuple(dst.shape)
            got = tuple(t.shape)
            if B == 1 and got == (want[1:] if self._is_cell else (want[0],) + want[2:]):
                got = want  # the unbatched form
            if got != want:
                raise RuntimeError(f"Expected {what} size {want}, got {list(t.shape)}")
            if t.dtype != self.dtype:
                raise TypeError(f"hx must have the dtype of the module's parameters ({self.dtype}), got {t.dtype}")
            with torch.no_grad():
                dst.copy_(t.reshape(dst.shape))

    @property
    def state(self):
        """Copies of the current state: LSTM (h [L, B, P], c [L, B, H]), GRU/RNN h [L, B, H];
        cells [B, H] (LSTMCell: (h, c))."""
        h, c = self._h.clone(), self._c.clone()
        if self._is_cell:
            h, c = h[0], c[0]
        return (h, c) if self._lstm else h

    # -------------------------------------------------------------------------------- stepping

    def _grad_message(self, what: str) -> str:
        return (f"fastrnn.Stream is inference-only and grad mode is on with {what} requiring grad: "
                f"its step kernel has no backward, and it will not silently drop autograd. Wrap the "
                f"loop in `with torch.inference_mode():` (or torch.no_grad()), or run the module itself "
                f"to train.")

    def _check_slow(self, x):
        """The errors, off the fast path: says what is wrong with x or the module."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"step() expects a Tensor, got {type(x).__name__}")
        if self._dropout and self.module.training:
            raise RuntimeError("fastrnn.Stream is inference-only and the module is in training mode with "
                               "dropout; call module.eval() first")
        if torch.is_grad_enabled():
            if x.requires_grad:
                raise RuntimeError(self._grad_message("the input"))
            if any(p.requires_grad for p in self._params):
                raise RuntimeError(self._grad_message("the module's parameters"))
        if x.device.type != "cpu":
            raise RuntimeError(f"fastrnn.Stream runs on CPU; the input is on {x.device}")
        if x.dtype != self.dtype:
            raise RuntimeError(f"input must have the type of the module's parameters: expected {self.dtype}, "
                               f"got {x.dtype}")
        if x.dim() not in (1, 2):
            raise ValueError(f"step() expects one frame: a 2D [batch, input_size] or, with batch_size=1, "
                             f"a 1D [input_size] input; got {x.dim()}D {list(x.shape)}")
        if x.size(-1) != self._I:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self._I}, got {x.size(-1)}")
        if x.dim() == 1 and self.batch_size != 1:
            raise ValueError(f"a 1D (unbatched) frame needs batch_size=1; this Stream was built with "
                             f"batch_size={self.batch_size}")
        if x.dim() == 2 and x.size(0) != self.batch_size:
            raise RuntimeError(f"Expected batch size {self.batch_size}, got {x.size(0)}: the Stream was built "
                               f"with batch_size={self.batch_size}")

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One frame x [B, input_size] (or [input_size] with B = 1) -> the top layer's new h, [B, P]
        (or [P]): the module's output for this frame, as a new tensor. Updates the state."""
        if type(x) is not torch.Tensor or x.dtype is not self.dtype or not x.is_cpu or (
                self._dropout and self.module.training) or (torch.is_grad_enabled() and (
                    x.requires_grad or any(p.requires_grad for p in self._params))):
            self._check_slow(x)
        shape = x.shape
        batched = shape == self._shape2
        if not batched and shape != self._shape1:
            self._check_slow(x)
        if [p._version for p in self._params] != self._versions:
            self.refresh()
        if x.requires_grad:
            x = x.detach()
        xn = x.numpy() if x.is_contiguous() else x.contiguous().numpy()
        if batched:
            return torch.from_numpy(self._step(self._meta, self._w, self._state, xn))
        return torch.from_numpy(self._step(self._meta, self._w, self._state, xn[None])[0])

    __call__ = step

    def __repr__(self):
        return f"fastrnn.Stream({type(self.module).__name__}, batch_size={self.batch_size}, dtype={self.dtype})"
