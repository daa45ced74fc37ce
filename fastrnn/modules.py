"""Drop-in front-ends for torch.nn.LSTM/GRU/RNN and the three cells.

They subclass torch's own modules, so the constructor, parameter names, shapes,
registration order, init, state_dict, repr, flatten_parameters, all_weights and
the argument checks are torch's by construction (and `isinstance(m, nn.LSTM)`
holds). Only `forward` is ours: torch's input handling, then fastrnn's
functional API. Where an input is invalid in a way torch only reports from C++
(device or dtype mismatches), we hand the call to torch's forward so the user
gets torch's exact exception.
"""
from __future__ import annotations


import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import _dynamo, custom, functional, plans
from fastrnn.cells import MODE_TO_CELL

_check_backend_name = functional.check_backend


_AUTOCAST_POLICY: dict = {}


def _autocast_dtypes(torch_cls, device_type: str):
    """(compute dtype, output dtype) of torch's own `torch_cls` under the active autocast, or None
    where it runs as called."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return _autocast_policy(torch_cls, device_type, torch.get_autocast_dtype(device_type))


def _autocast_policy(torch_cls, device_type: str, dt):
    """torch's policy differs by device and module: on CPU, LSTM and RNN run in the autocast dtype
    and return it, while GRU and the LSTM/GRU cells return float32 but compute their products
    (and much of the gate math) in the autocast dtype. We ask torch once per (module, device,
    autocast dtype) with a 1x1 probe instead of copying its op lists: weights that the autocast
    dtype cannot hold (0.5 + 2^-13) show whether a float32 result was computed in it."""
    key = (torch_cls, device_type, dt)
    if key not in _AUTOCAST_POLICY:
        probe = torch_cls(1, 1).to(device_type)
        with torch.no_grad():
            for w in probe.parameters():
                w.fill_(0.5 + 2.0 ** -13)
        x = torch.ones((1, 1, 1) if issubclass(torch_cls, nn.RNNBase) else (1, 1), device=device_type)
        first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
        try:
            with torch.no_grad(), torch.autocast(device_type, dtype=dt):
                out = first(probe(x))
            policy = None if out.dtype == torch.float32 else (out.dtype, out.dtype)
            if policy is None:
                with torch.no_grad(), torch.autocast(device_type, enabled=False):
                    if not torch.equal(first(probe(x)), out):
                        policy = (dt, torch.float32)
        except RuntimeError:  # e.g. oneDNN has no bf16 LSTM on this CPU: torch meant to cast
            policy = (dt, dt)
        _AUTOCAST_POLICY[key] = policy
    return _AUTOCAST_POLICY[key]


_autocast_policy._dynamo_marked_constant = True  # torch.compile: asked at trace time, result kept


def _autocast(torch_cls, device_type: str, tensors):
    """Cast float32 tensors as torch's autocast would for this module (float64 never is), and the
    dtype the outputs are returned in (None: as computed)."""
    dts = _autocast_dtypes(torch_cls, device_type)
    if dts is None:
        return tensors, None
    compute, out = dts
    cast = [t.to(compute) if t is not None and t.dtype == torch.float32 else t for t in tensors]
    return cast, (out if out != compute and tensors[0].dtype == torch.float32 else None)


def _retype(dtype, *outs):
    """The outputs in the dtype torch's autocast returns them in (None: unchanged)."""
    if dtype is None:
        return outs
    return tuple(None if t is None else t.to(dtype) for t in outs)


class _Front:
    """forward() of every module: the plan remembered for the call's facts where there is one
    (fastrnn/plans.py), else the checked path (`_checked`), which makes and remembers it. The
    mixins below supply `_weights`, `_plannable`, `_planned`, `_checked` and `_exported`."""

    def forward(self, input, hx=None):
        facts = plans.facts(self, input, hx, self._weights) if self._plannable() else None
        plan = plans.lookup(self, facts)  # none while tracing or exporting (facts is None)
        if plan is not None:
            if plan is plans.TORCH:
                return self._torch_forward(input, hx)
            try:
                return self._planned(input, hx, self._weights(), plan)
            except plans.REJECTED:
                pass  # a kernel refused the call (a weight changed since): the checked path raises torch's error
        if _exporting():
            return self._exported(input, hx)
        return self._checked(input, hx, self._weights(), facts)

    def _torch_forward(self, input, hx):
        """torch.nn's own forward (the class after the mixins in the MRO)."""
        return super().forward(input, hx)


class _RNNMixin(_Front):
    """forward() shared by LSTM, GRU and RNN. Mirrors torch.nn.RNNBase's forward."""

    def _current_weights(self) -> list:
        """The flat weights as torch's forward sees them after its `_update_flat_weights` (which
        rebuilds the list when a weight attribute was replaced), read directly: its hasattr/getattr
        walk costs ~5 us a call (a tenth of a small call).  A name missing from _parameters (a
        parametrization's property, weight_norm's plain attribute) goes through getattr."""
        params = self._parameters
        return [params[n] if n in params else getattr(self, n, None) for n in self._flat_weights_names]

    def _layer_weights(self, flat):
        per_dir = 2 + 2 * bool(self.bias) + (self.proj_size > 0)
        D = 2 if self.bidirectional else 1
        layers = []
        for layer in range(self.num_layers):
            dirs = []
            for d in range(D):
                ws = flat[(layer * D + d) * per_dir:(layer * D + d + 1) * per_dir]
                w_ih, w_hh = ws[0], ws[1]
                b_ih, b_hh = (ws[2], ws[3]) if self.bias else (None, None)
                w_hr = ws[-1] if self.proj_size > 0 else None
                dirs.append((w_ih, w_hh, b_ih, b_hh, w_hr))
            layers.append(dirs)
        return layers

    _weights = _current_weights

    def _plannable(self) -> bool:
        return not (self.zoneout or self.weight_dropout)

    def _exported(self, input, hx):
        self._check_exportable()
        return self._torch_forward(input, hx)

    def _planned(self, input, hx, flat, plan):
        """A call whose facts were checked and picked before (fastrnn/plans.py): plain tensors, no
        PackedSequence, no autocast."""
        is_lstm = self.mode == "LSTM"
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        x = input.transpose(0, 1) if self.batch_first else input
        T, B = x.shape[0], x.shape[1]
        x = x.reshape(T * B, x.shape[2])
        if hx is None:
            rows = self.num_layers * (2 if self.bidirectional else 1)
            h0 = x.new_zeros((rows, B, self.proj_size or self.hidden_size))
            c0 = x.new_zeros((rows, B, self.hidden_size)) if is_lstm else None
        else:
            h0, c0 = hx if is_lstm else (hx, None)
            if not is_batched:
                h0, c0 = h0.unsqueeze(1), (None if c0 is None else c0.unsqueeze(1))
        if plan.inference and not (self.training and self.dropout and self.num_layers > 1):
            out, hn, cn = functional.rnn_inference(MODE_TO_CELL[self.mode], x, h0, c0, self._layer_weights(flat),
                                                   plan.picks)
        else:
            out, hn, cn = functional.rnn(MODE_TO_CELL[self.mode], x, None, h0, c0, self._layer_weights(flat),
                                         dropout=self.dropout, training=self.training, backend=self.backend,
                                         validate=False, picks=plan.picks)
        return self._shaped_outputs(out, hn, cn, T, B, is_batched, batch_dim)

    def _shaped_outputs(self, out, hn, cn, T, B, is_batched, batch_dim):
        """(output, hidden) in the input's layout, from out [T*B, D*Hout] and the [L*D, B, .] states."""
        hidden = (hn, cn) if self.mode == "LSTM" else hn
        out = out.view(T, B, out.size(-1))
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out = out.squeeze(batch_dim)
            hidden = (hn.squeeze(1), cn.squeeze(1)) if self.mode == "LSTM" else hn.squeeze(1)
        return out, hidden

    def _checked(self, input, hx, flat, facts):
        """torch's argument checks and ours, then the call; remembers the picks under `facts`."""
        plain = not (torch.compiler.is_compiling() or self.zoneout or self.weight_dropout)
        if plain and self._auto_picks_torch(input):
            plans.remember(self, facts, plans.TORCH)
            return self._torch_forward(input, hx)
        is_lstm = self.mode == "LSTM"
        orig_input, orig_hx = input, hx
        D = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        name = self.mode.split("_")[0]
        if isinstance(input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched, batch_dim = True, 1
            max_batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
        else:
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            if input.dim() not in (2, 3):
                tail = "D tensor instead" if name == "RNN" else "D instead"
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{tail}")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                want = 3 if is_batched else 2
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                if is_lstm and (hx[0].dim() != want or hx[1].dim() != want):
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                       f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if not is_lstm and hx.dim() != want:
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
            max_batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            zeros = lambda n: torch.zeros(self.num_layers * D, max_batch, n,  # noqa: E731
                                          dtype=input.dtype, device=input.device)
            hx = (zeros(h_size), zeros(self.hidden_size)) if is_lstm else zeros(self.hidden_size)
            # hx is right by construction, so torch's check can only fail on the input's size or
            # dtype: asked only then (it raises torch's own message; a call costs ~2 us)
            if batch_sizes is None and (input.size(-1) != self.input_size or input.dtype != flat[0].dtype):
                self.check_forward_args(input, hx, batch_sizes)
        else:
            if batch_sizes is None:
                self.check_forward_args(input, hx, batch_sizes)
            hx = self.permute_hidden(hx, sorted_indices)
        if batch_sizes is not None:
            self.check_forward_args(input, hx, batch_sizes)
        h0, c0 = hx if is_lstm else (hx, None)

        x = input
        if (input.size(1 if self.batch_first else 0) if batch_sizes is None else batch_sizes.numel()) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if batch_sizes is None:
            if self.batch_first:
                x = x.transpose(0, 1)
            T, B = x.shape[0], x.shape[1]
            x = x.reshape(T * B, x.shape[2])
        cell, layers = MODE_TO_CELL[self.mode], self._layer_weights(flat)
        problem = None if _consistent([x, h0, c0, *flat]) else "inconsistent devices or dtypes"
        for layer, ws in enumerate(layers):
            if problem:
                break
            D = len(ws)
            in_size = self.input_size if layer == 0 else D * h_size
            h0_l, c0_l = functional.layer_states(h0, c0, layer, D, len(layers))
            problem = functional.check_layer_args(cell, (x.size(0), in_size), batch_sizes, h0_l, c0_l, ws)
        if problem:
            return _torch_error_or_raise(self._torch_forward, orig_input, orig_hx, problem)
        autocast = x.device.type not in ("cpu", "cuda") or torch.is_autocast_enabled(x.device.type)
        if autocast:
            (x, h0, c0, *flat), out_dtype = _autocast(_torch_class(self), x.device.type, [x, h0, c0, *flat])
            layers = self._layer_weights(flat)
        else:
            out_dtype = None
        # The checks above are functional's (shapes per layer) plus one dtype/device test for all
        # tensors, which autocast relaxes: only then does functional run its own again.
        if self.weight_dropout and self.training:
            layers = custom.drop_connect(layers, self.weight_dropout, True)
        if self.zoneout:
            out, hn, cn = custom.rnn_zoneout(cell, x, batch_sizes, h0, c0, layers, self.dropout, self.training,
                                             self.zoneout, backend=self.backend)
        else:
            record = [] if facts is not None and batch_sizes is None else None
            out, hn, cn = functional.rnn(cell, x, batch_sizes, h0, c0, layers, dropout=self.dropout,
                                         training=self.training, backend=self.backend, validate=autocast,
                                         record=record)
            if record:  # empty where torch ran the stack
                plans.remember(self, facts, tuple(record))

        out, hn, cn = _retype(out_dtype, out, hn, cn)
        if batch_sizes is not None:
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), \
                self.permute_hidden((hn, cn) if is_lstm else hn, unsorted_indices)
        return self._shaped_outputs(out, hn, cn, T, B, is_batched, batch_dim)

    def _auto_picks_torch(self, input) -> bool:
        """Whether auto hands this whole call to torch (functional.torch_runs, fastrnn/dispatch.py):
        then torch's own forward runs the call as it stands, skipping our checks and per-layer
        dispatch: same result and errors, and torch's per-call cost plus ~3 us for this test."""
        if self.backend != "auto" or type(input) is not torch.Tensor:
            return False
        dim = input.dim()
        if dim not in (2, 3):
            return False
        T = input.size(1 if self.batch_first else 0) if dim == 3 else input.size(0)
        cell, device, dtype = MODE_TO_CELL[self.mode], input.device.type, input.dtype
        # Under autocast the call runs in torch's compute dtype for this module (float32 tensors
        # cast): decided in that dtype, and handed over whole, torch's autocast then casting in C++
        # as it does for torch.nn (ours cast in Python: ~7% of a small bf16 LSTM call).
        casts = None
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            casts = _autocast_dtypes(_torch_class(self), device)
        w = self._flat_weights[0] if self._flat_weights else None
        if casts is not None:
            if dtype != torch.float32 or w is None or w.dtype != torch.float32:
                return False  # what autocast leaves as it is: the checked path decides
            dtype = casts[0]
        if not functional.torch_may_run(cell, device, dtype, T, self.proj_size):
            return False  # the common call: decided in ~1 us
        if w is None or (casts is None and w.dtype != dtype) or w.device != input.device:
            return False
        return functional.torch_runs(
            cell, device, dtype, input_size=self.input_size, hidden_size=self.hidden_size, proj_size=self.proj_size,
            batch=input.size(0 if self.batch_first else 1) if dim == 3 else 1, steps=T,
            directions=2 if self.bidirectional else 1, packed=False, backend="auto", may_win=True,
            needs_grad=lambda: torch.is_grad_enabled() and (input.requires_grad or w.requires_grad))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        for name, default in (("zoneout", 0.0), ("weight_dropout", 0.0)):
            if getattr(self, name, default) != default:
                s += f", {name}={getattr(self, name)}"
        return s if self.backend == "auto" else s + f", backend={self.backend!r}"

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(plans.ATTR, None)  # remembered plans are this process's (fastrnn/plans.py)
        return state

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("zoneout", 0.0)
        self.__dict__.setdefault("weight_dropout", 0.0)

    def __prepare_scriptable__(self):
        """torch.jit.script compiles torch.nn's own module in our place (same Parameters), so the
        scripted model runs where fastrnn is not installed."""
        if hasattr(self, "zoneout"):
            self._check_exportable()
        return _torch_twin(self)

    def _check_exportable(self):
        """Exports record torch.nn's forward, which has neither option: refuse rather than record
        something else (weight dropout is a no-op at eval)."""
        if self.zoneout or (self.weight_dropout and self.training):
            raise NotImplementedError(
                "fastrnn: a module with zoneout (or weight_dropout in training) cannot be exported: exports "
                "record torch.nn's own RNN, which has neither; export the model with zoneout=0 (eval)")


def _torch_error_or_raise(torch_forward, input, hx, problem: str):
    """Let torch raise its own exception for an input we refuse; if torch accepts it
    (e.g. inconsistent dtypes under autocast) its result is the right answer, unless the
    problem is one torch silently computes garbage for (a wrongly shaped weight)."""
    result = torch_forward(input, hx)
    if problem.startswith("inconsistent"):
        return result
    raise RuntimeError(problem)


def _exporting() -> bool:
    """torch.jit.trace (and the TorchScript ONNX exporter) or torch.export (and the dynamo ONNX
    exporter) is recording this call: then torch.nn's own forward runs, so the artifact holds
    torch's RNN ops and runs where fastrnn is not installed, with torch.nn's numbers."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _torch_twin(module):
    """torch.nn's module of the same class sharing `module`'s Parameters and settings."""
    twin = _copy_as(module, _torch_class(module))
    for name in ("backend", "zoneout", "weight_dropout"):
        twin.__dict__.pop(name, None)
    return twin


def _copy_as(module, cls):
    """A `cls` instance with `module`'s attributes, sharing its Parameter objects."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    state.pop(plans.ATTR, None)
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = type(state[key])(state[key])
    new.__dict__.update(state)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    return new


def _torch_class(module):
    """The torch.nn class a fastrnn module stands in for."""
    return next(c for c in type(module).__mro__ if c.__module__.startswith("torch.nn"))


def _consistent(tensors) -> bool:
    """Same device and dtype everywhere (torch's C++ kernels reject anything else); the first
    tensor is the input (never None)."""
    dev, dt = tensors[0].device, tensors[0].dtype
    autocast = torch.is_autocast_enabled(dev.type) if dev.type in ("cpu", "cuda") else False
    for t in tensors:
        if t is not None and (t.device != dev or (not autocast and t.dtype != dt)):
            return False
    return True


_EXTRA_DOC = """
    fastrnn's extra keyword arguments (defaults keep torch.nn's behaviour exactly):
        backend: "auto" (default) or a backend name (`fastrnn.available_backends()`).
        zoneout: probability p of keeping each unit's previous state (h, and c for LSTM) at each
            step (Krueger et al. 2016): in training, Bernoulli masks from torch's RNG
            (reproducible under torch.manual_seed); at eval, the deterministic mix
            p * old + (1 - p) * new. Runs on generated kernels (fastrnn.custom); not with proj_size.
        weight_dropout: DropConnect on weight_hh (AWD-LSTM's weight drop): one mask per layer and
            direction drawn per forward call in training; the full weights at eval.
"""


def _check_probability(name: str, p) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1], got {p!r}")
    return float(p)


class LSTM(_RNNMixin, nn.LSTM):
    __doc__ = nn.LSTM.__doc__ + _EXTRA_DOC

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, weight_dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)
        self.zoneout = _check_probability("zoneout", zoneout)
        self.weight_dropout = _check_probability("weight_dropout", weight_dropout)


class GRU(_RNNMixin, nn.GRU):
    __doc__ = nn.GRU.__doc__ + _EXTRA_DOC

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, weight_dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)
        self.zoneout = _check_probability("zoneout", zoneout)
        self.weight_dropout = _check_probability("weight_dropout", weight_dropout)


class RNN(_RNNMixin, nn.RNN):
    __doc__ = nn.RNN.__doc__ + _EXTRA_DOC

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, weight_dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)
        self.zoneout = _check_probability("zoneout", zoneout)
        self.weight_dropout = _check_probability("weight_dropout", weight_dropout)


class _CellMixin(_Front):
    """forward() shared by the cells: one time step through the same layer op."""

    _cell_name = ""

    def _cell(self) -> str:
        if self._cell_name:
            return self._cell_name
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "rnn_" + self.nonlinearity

    _WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def _weights(self) -> tuple:
        params = self._parameters  # read directly: four nn.Module.__getattr__ calls cost ~2 us
        return tuple([params[n] if n in params else getattr(self, n, None) for n in self._WEIGHT_NAMES])

    def _plannable(self) -> bool:
        return True

    def _exported(self, input, hx):
        return self._torch_forward(input, hx)

    def _planned(self, input, hx, w, plan):
        """A call whose facts were checked and picked before (fastrnn/plans.py)."""
        is_lstm = self._cell_name == "lstm"
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            h0 = x.new_zeros((1, x.size(0), self.hidden_size))
            c0 = h0 if is_lstm else None  # the kernels copy the states they start from
        else:
            h0, c0 = hx if is_lstm else (hx, None)
            h0 = h0.unsqueeze(0) if is_batched else h0.view(1, 1, -1)
            c0 = None if c0 is None else c0.unsqueeze(0) if is_batched else c0.view(1, 1, -1)
        if plan.inference:
            _, hn, cn = functional.rnn_inference(self._cell(), x, h0, c0, (((*w, None),),), plan.picks)
        else:
            _, hn, cn = functional.rnn_layer(self._cell(), x, None, h0, c0, [(*w, None)], self.backend,
                                             validate=False, picked=plan.picks[0])
        return self._outputs(hn, cn, is_batched)

    def _outputs(self, hn, cn, is_batched):
        if self._cell_name == "lstm":
            h1, c1 = hn[0], cn[0]
            return (h1, c1) if is_batched else (h1.squeeze(0), c1.squeeze(0))
        return hn[0] if is_batched else hn[0].squeeze(0)

    def _checked(self, input, hx, w, facts):
        """torch's argument checks and ours, then the call; remembers the pick under `facts`."""
        cls = type(self).__name__
        is_lstm = self._cell_name == "lstm"
        if self._auto_picks_torch(input, hx, w):
            plans.remember(self, facts, plans.TORCH)
            return self._torch_forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"{cls}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx if is_lstm else [hx]):
                if value.dim() not in (1, 2):
                    which = f"hx[{idx}]" if is_lstm else "hidden"
                    raise ValueError(f"{cls}: Expected {which} to be 1D or 2D, got {value.dim()}D instead")
        cell = self._cell()
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
            h0, c0 = (zeros, zeros) if is_lstm else (zeros, None)
        else:
            h0, c0 = hx if is_lstm else (hx, None)
            if not is_batched:
                h0 = h0.unsqueeze(0)
                c0 = None if c0 is None else c0.unsqueeze(0)
        ok = (x.size(1) == self.input_size and all(
            s.dim() == 2 and s.size(0) == x.size(0) and s.size(1) == self.hidden_size
            for s in (h0, c0) if s is not None) and _consistent([x, h0, c0, *w]))
        if not ok:
            return self._torch_forward(input, hx)  # torch raises its own error here
        (x, h0, c0, *w), out_dtype = _autocast(_torch_class(self), x.device.type, [x, h0, c0, *w])
        h0, c0, weights = h0.unsqueeze(0), None if c0 is None else c0.unsqueeze(0), [(*w, None)]
        problem = functional.check_layer_args(cell, x, None, h0, c0, weights)
        if problem:  # a weight of another shape than the module's sizes
            return _torch_error_or_raise(self._torch_forward, input, hx, problem)
        picked = functional.choose(cell, x, x.size(1), None, h0, c0, weights, self.backend)
        _, hn, cn = functional.rnn_layer(cell, x, None, h0, c0, weights, self.backend, validate=False,
                                         picked=picked)
        plans.remember(self, facts, (picked,))
        return self._outputs(*_retype(out_dtype, hn, cn), is_batched)

    def _auto_picks_torch(self, input, hx, w) -> bool:
        """auto runs a single step in torch where the dispatch table says so (functional.cell_to_torch):
        then torch's own cell runs the call as it stands, without our checks and dispatch (the same
        result, errors and speed as torch)."""
        if type(input) is not torch.Tensor or torch.is_autocast_enabled("cpu"):
            return False
        if w[0].dtype != input.dtype or w[0].device != input.device:
            return False
        states = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (input, *states, *w))
        return functional.cell_to_torch(input.device.type, input.dtype, self.backend, needs_grad)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else s + f", backend={self.backend!r}"

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(plans.ATTR, None)  # remembered plans are this process's (fastrnn/plans.py)
        return state

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("backend", "auto")

    def __prepare_scriptable__(self):
        """torch.jit.script compiles torch.nn's own module in our place (same Parameters), so the
        scripted model runs where fastrnn is not installed."""
        return _torch_twin(self)


class LSTMCell(_CellMixin, nn.LSTMCell):
    __doc__ = nn.LSTMCell.__doc__
    _cell_name = "lstm"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)


class GRUCell(_CellMixin, nn.GRUCell):
    __doc__ = nn.GRUCell.__doc__
    _cell_name = "gru"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)


class RNNCell(_CellMixin, nn.RNNCell):
    __doc__ = nn.RNNCell.__doc__

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _check_backend_name(backend)


_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


def _twin(mod: nn.Module, backend: str) -> nn.Module:
    """A fastrnn module sharing `mod`'s Parameter objects (optimizers keep working)."""
    new = _copy_as(mod, _TWINS[type(mod)])
    new.backend = backend
    if isinstance(new, nn.RNNBase):
        new.zoneout = new.weight_dropout = 0.0
    return new


# torch.load(weights_only=True), torch's default, unpickles only allow-listed classes: ours are
# listed with torch.nn's, so a whole model saved with fastrnn modules loads wherever the same
# model with torch.nn's classes loads (e.g. inside safe_globals([nn.LSTM, ...])).
torch.serialization.add_safe_globals(list(_TWINS.values()))
# torch.compile(fullgraph=True): Dynamo may wrap our modules although they subclass nn.LSTM/GRU/RNN
_dynamo.install((LSTM, GRU, RNN))


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every torch.nn LSTM/GRU/RNN (and cell) inside `model` by its fastrnn twin, in place.

    The twins share the original Parameter objects, so weights, device, dtype,
    requires_grad and existing optimizers carry over. Returns `model`, or the
    twin when `model` itself is one of those modules.
    """
    _check_backend_name(backend)
    if type(model) in _TWINS:
        return _twin(model, backend)
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is not None and type(child) in _TWINS:
                parent._modules[name] = _twin(child, backend)
    return model
