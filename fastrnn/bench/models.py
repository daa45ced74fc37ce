"""Whole-model benchmarks: training steps and an inference loop of small real models, torch.nn
against fastrnn swapped in the way a user swaps it in, each in its own fresh process.

The layer grid (`runner`) times one RNN call in a process that runs nothing else; a user's
step also runs an embedding, a large softmax, a loss and an optimizer, and whatever fastrnn
does to the process (thread settings: issue 16) reaches those too.  So here:

- every (model, implementation) runs in a fresh subprocess (`--worker`): the first call
  matters, and nothing one implementation leaves behind reaches the other;
- the same seed builds the same torch.nn model in each; `auto` (or a backend by name) then
  swaps its RNN layers with `fastrnn.convert(model)`, which keeps the Parameter objects, so the
  weights are the same and the optimizer is built exactly as the user's code builds it;
- after warm-up, whole steps (forward, loss, backward, optimizer step) alternate with timed
  calls of the model's RNN layers alone (the inputs they got in the first step, forward and
  backward): the RNN's share of the step is measured in the same process, not guessed;
- `torch.get_num_threads()` (and the inter-op count) is recorded before anything runs, after
  the first step and at the end, and a change is flagged.

Targets checked per model (issue 16): auto is never slower than torch.nn per whole step, and
nothing is lost outside the layer, i.e. the whole-step speedup is at least what the layer
speedup alone predicts (Amdahl: 1 / ((1 - p) + p / s) for share p and layer speedup s; the
looser `s * p` bound is reported too).

    python -m fastrnn.bench models --quick          # 9 models, one process each: 1-2.5 min on 2 cores
    python -m fastrnn.bench models                  # 13 models, 3 rounds each
    python -m fastrnn.bench models --model lm-lstm --impl torch,auto,cpp

Results: benchmarks/results/models/<hardware-id>.json (the report reads it).  Nothing here
asserts speed.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

MARK = "@@fastrnn-models@@ "
SCHEMA = 1


# ----------------------------------------------------------------------------- (a) the seed tutorial's models
# Verbatim from the tutorial (/work/shared/seed/rnn-tutorial.txt), sizes included.  Its
# RNNModel reads the global `hidden_size` in forward; kept as it is.

hidden_size = 10


class RNNModel(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(RNNModel, self).__init__()
        self.rnn = nn.RNN(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        h0 = torch.zeros(1, x.size(0), hidden_size)  # Initialize hidden state
        out, _ = self.rnn(x, h0)  # RNN output
        out = self.fc(out[:, -1, :])  # Fully connected layer for output
        return out


class LSTMModel(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(LSTMModel, self).__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)
        out = self.fc(h_n[-1])
        return out


class GRUModel(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(GRUModel, self).__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        _, h_n = self.gru(x)
        out = self.fc(h_n[-1])
        return out


# ----------------------------------------------------------------------------- (b) word-level LM
# pytorch/examples word_language_model's RNNModel at 64 units (its default is 200) and the
# WikiText-2 vocabulary size, trained as its main.py trains (bptt 35, batch 20, dropout 0.2,
# log_softmax + NLLLoss, clip_grad_norm_ 0.25, SGD lr 20), evaluated as its evaluate() does
# (batch 10, no_grad, loss.item() per batch).

LM_VOCAB, LM_UNITS, LM_LAYERS, BPTT, LM_BATCH, LM_EVAL_BATCH = 33278, 64, 2, 35, 20, 10


class WordLM(nn.Module):
    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity="tanh", dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def get_batch(source, i):
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


# ----------------------------------------------------------------------------- (c) bidirectional tagger

TAG_VOCAB, TAG_EMBED, TAG_HIDDEN, TAG_TAGS, TAG_BATCH, TAG_LEN = 5000, 100, 128, 20, 32, (5, 40)


class Tagger(nn.Module):
    """A BiLSTM/BiGRU sequence tagger (POS/NER style) on packed variable-length sentences."""

    def __init__(self, rnn_type):
        super().__init__()
        self.embedding = nn.Embedding(TAG_VOCAB, TAG_EMBED, padding_idx=0)
        self.rnn = getattr(nn, rnn_type)(TAG_EMBED, TAG_HIDDEN, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * TAG_HIDDEN, TAG_TAGS)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.size(1))
        return self.fc(out)


# ----------------------------------------------------------------------------- (d) encoder-decoder

S2S_VOCAB, S2S_EMBED, S2S_HIDDEN, S2S_LAYERS, S2S_BATCH, S2S_SRC, S2S_TGT = 4000, 128, 256, 2, 32, 20, 20


class Seq2Seq(nn.Module):
    """A 2-layer encoder-decoder trained with teacher forcing: the decoder starts from the
    encoder's final state and reads the shifted target in one call."""

    def __init__(self, rnn_type):
        super().__init__()
        rnn = getattr(nn, rnn_type)
        self.src_embed = nn.Embedding(S2S_VOCAB, S2S_EMBED)
        self.tgt_embed = nn.Embedding(S2S_VOCAB, S2S_EMBED)
        self.encoder = rnn(S2S_EMBED, S2S_HIDDEN, S2S_LAYERS, batch_first=True)
        self.decoder = rnn(S2S_EMBED, S2S_HIDDEN, S2S_LAYERS, batch_first=True)
        self.out = nn.Linear(S2S_HIDDEN, S2S_VOCAB)

    def forward(self, src, tgt_in):
        _, state = self.encoder(self.src_embed(src))
        dec, _ = self.decoder(self.tgt_embed(tgt_in), state)
        return self.out(dec)


# ----------------------------------------------------------------------------- workloads

@dataclass
class Workload:
    model: nn.Module
    make_optimizer: Callable[[], Optional[torch.optim.Optimizer]]
    # step(i, opt) runs the i-th training step (or inference batch) and returns its loss tensor
    step: Callable[[int, Optional[torch.optim.Optimizer]], torch.Tensor]
    train: bool = True


def _tutorial(kind: str) -> Workload:
    if kind == "rnn":
        input_size, hid, output_size, sequence_length, batch_size = 1, 10, 1, 5, 3
        model = RNNModel(input_size, hid, output_size)
    else:
        input_size, hid, output_size, sequence_length, batch_size = 10, 20, 1, 5, 3
        model = (LSTMModel if kind == "lstm" else GRUModel)(input_size, hid, output_size)
    x = torch.randn(batch_size, sequence_length, input_size)
    y = torch.randn(batch_size, output_size)
    criterion = nn.MSELoss()

    def step(i, optimizer):  # the tutorial's training loop, one epoch
        optimizer.zero_grad()
        output = model(x)
        loss = criterion(output, y)
        loss.backward()
        optimizer.step()
        return loss

    return Workload(model, lambda: torch.optim.Adam(model.parameters(), lr=0.01), step)


def _lm(cell: str, train: bool) -> Workload:
    rnn_type = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}[cell]
    model = WordLM(rnn_type, LM_VOCAB, LM_UNITS, LM_UNITS, LM_LAYERS, 0.2)
    bsz = LM_BATCH if train else LM_EVAL_BATCH
    nbatches = 8
    corpus = torch.randint(LM_VOCAB, (nbatches * BPTT * bsz + bsz,))
    data = batchify(corpus, bsz)
    criterion = nn.NLLLoss()
    state = {"hidden": model.init_hidden(bsz)}
    clip, lr = 0.25, 20.0

    if train:
        model.train()

        def step(i, optimizer):
            data_i, targets = get_batch(data, (i % nbatches) * BPTT)
            model.zero_grad()
            hidden = repackage_hidden(state["hidden"])
            output, hidden = model(data_i, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            state["hidden"] = hidden
            return loss

        return Workload(model, lambda: torch.optim.SGD(model.parameters(), lr=lr), step)

    model.eval()

    def infer(i, optimizer):
        with torch.no_grad():
            data_i, targets = get_batch(data, (i % nbatches) * BPTT)
            output, hidden = model(data_i, state["hidden"])
            loss = len(data_i) * criterion(output, targets).item()
            state["hidden"] = repackage_hidden(hidden)
            return torch.tensor(loss)

    return Workload(model, lambda: None, infer, train=False)


def _tagger(cell: str) -> Workload:
    model = Tagger(cell.upper())
    nbatches = 8
    lo, hi = TAG_LEN
    batches = []
    for _ in range(nbatches):
        lengths = torch.randint(lo, hi + 1, (TAG_BATCH,))
        tokens = torch.randint(1, TAG_VOCAB, (TAG_BATCH, hi))
        tags = torch.randint(TAG_TAGS, (TAG_BATCH, hi))
        pad = torch.arange(hi).unsqueeze(0) >= lengths.unsqueeze(1)
        tokens[pad], tags[pad] = 0, -100
        batches.append((tokens, lengths, tags))
    criterion = nn.CrossEntropyLoss(ignore_index=-100)

    def step(i, optimizer):
        tokens, lengths, tags = batches[i % nbatches]
        optimizer.zero_grad()
        logits = model(tokens, lengths)
        loss = criterion(logits.reshape(-1, TAG_TAGS), tags.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    return Workload(model, lambda: torch.optim.Adam(model.parameters(), lr=1e-3), step)


def _seq2seq(cell: str) -> Workload:
    model = Seq2Seq(cell.upper())
    nbatches = 4
    batches = [(torch.randint(S2S_VOCAB, (S2S_BATCH, S2S_SRC)), torch.randint(S2S_VOCAB, (S2S_BATCH, S2S_TGT + 1)))
               for _ in range(nbatches)]
    criterion = nn.CrossEntropyLoss()

    def step(i, optimizer):
        src, tgt = batches[i % nbatches]
        optimizer.zero_grad()
        logits = model(src, tgt[:, :-1])
        loss = criterion(logits.reshape(-1, S2S_VOCAB), tgt[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    return Workload(model, lambda: torch.optim.Adam(model.parameters(), lr=1e-3), step)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str     # tutorial | lm | tagger | seq2seq
    cell: str
    train: bool
    quick: bool
    what: str

    def build(self) -> Workload:
        if self.family == "tutorial":
            return _tutorial(self.cell)
        if self.family == "lm":
            return _lm(self.cell, self.train)
        if self.family == "tagger":
            return _tagger(self.cell)
        return _seq2seq(self.cell)


_LM = f"Embedding→{LM_LAYERS}×{{}}({LM_UNITS})→Linear({LM_VOCAB}), bptt {BPTT}"
SPECS = (
    ModelSpec("tutorial-rnn", "tutorial", "rnn", True, True, "tutorial RNNModel: RNN(1→10)→Linear, T=5 B=3, MSE, Adam"),
    ModelSpec("tutorial-lstm", "tutorial", "lstm", True, True, "tutorial LSTMModel: LSTM(10→20)→Linear, T=5 B=3"),
    ModelSpec("tutorial-gru", "tutorial", "gru", True, True, "tutorial GRUModel: GRU(10→20)→Linear, T=5 B=3"),
    ModelSpec("lm-lstm", "lm", "lstm", True, True, _LM.format("LSTM") + f" B={LM_BATCH}, SGD"),
    ModelSpec("lm-gru", "lm", "gru", True, True, _LM.format("GRU") + f" B={LM_BATCH}, SGD"),
    ModelSpec("lm-rnn", "lm", "rnn", True, True, _LM.format("RNN") + f" B={LM_BATCH}, SGD"),
    ModelSpec("lm-lstm-infer", "lm", "lstm", False, True, _LM.format("LSTM") + f" B={LM_EVAL_BATCH}, eval loop"),
    ModelSpec("lm-gru-infer", "lm", "gru", False, False, _LM.format("GRU") + f" B={LM_EVAL_BATCH}, eval loop"),
    ModelSpec("lm-rnn-infer", "lm", "rnn", False, False, _LM.format("RNN") + f" B={LM_EVAL_BATCH}, eval loop"),
    ModelSpec("tagger-lstm", "tagger", "lstm", True, True,
              f"BiLSTM({TAG_EMBED}→{TAG_HIDDEN}) tagger, packed, lengths {TAG_LEN[0]}-{TAG_LEN[1]}, B={TAG_BATCH}, Adam"),
    ModelSpec("tagger-gru", "tagger", "gru", True, False,
              f"BiGRU({TAG_EMBED}→{TAG_HIDDEN}) tagger, packed, lengths {TAG_LEN[0]}-{TAG_LEN[1]}, B={TAG_BATCH}, Adam"),
    ModelSpec("seq2seq-lstm", "seq2seq", "lstm", True, True,
              f"{S2S_LAYERS}-layer LSTM({S2S_HIDDEN}) encoder-decoder, T={S2S_SRC}+{S2S_TGT}, B={S2S_BATCH}, "
              f"vocab {S2S_VOCAB}, Adam"),
    ModelSpec("seq2seq-gru", "seq2seq", "gru", True, False,
              f"{S2S_LAYERS}-layer GRU({S2S_HIDDEN}) encoder-decoder, T={S2S_SRC}+{S2S_TGT}, B={S2S_BATCH}, "
              f"vocab {S2S_VOCAB}, Adam"),
)
BY_NAME = {s.name: s for s in SPECS}


# ----------------------------------------------------------------------------- the worker (one process)

def _threads() -> dict:
    return {"intra": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def _clone_arg(a):
    if isinstance(a, PackedSequence):
        data = a.data.detach().clone().requires_grad_(a.data.requires_grad)
        return PackedSequence(data, a.batch_sizes, a.sorted_indices, a.unsorted_indices)
    if isinstance(a, torch.Tensor):
        return a.detach().clone().requires_grad_(a.requires_grad)
    if isinstance(a, (tuple, list)):
        return type(a)(_clone_arg(x) for x in a)
    return a


def _tensors(x) -> list:
    if isinstance(x, PackedSequence):
        return [x.data]
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _layer_call(calls: list, train: bool) -> Callable[[], None]:
    """The model's RNN layer calls alone, on copies of the inputs they got in one step: forward,
    and for training the backward of every output into the inputs that required grad and the
    layer's parameters (grads reset first, as zero_grad does)."""
    calls = [(m, _clone_arg(args), _clone_arg(kwargs), list(m.parameters())) for m, args, kwargs in calls]

    if not train:
        def run():
            with torch.no_grad():
                for m, args, kwargs, _ in calls:
                    m(*args, **kwargs)
        return run

    def run():
        for m, args, kwargs, params in calls:
            for p in params:
                p.grad = None
            outs = [t for t in _tensors(m(*args, **kwargs)) if t.requires_grad]
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
    return run


def worker(name: str, impl: str, warmup: int, min_steps: int, min_time: float, seed: int = 0,
           threads: int = 0) -> dict:
    """One (model, implementation) in this process; returns its record. `threads`: the user's
    torch.set_num_threads before anything runs (0: torch's default)."""
    import fastrnn
    if threads:
        torch.set_num_threads(threads)
    threads0 = _threads()
    spec = BY_NAME[name]
    torch.manual_seed(seed)
    w = spec.build()
    model = w.model
    if impl != "torch":
        fastrnn.convert(model, backend=impl)   # what a user writes; keeps the Parameters
    optimizer = w.make_optimizer()
    weights = float(sum(p.detach().double().sum() for p in model.parameters()))
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    kinds = sorted({type(m).__module__.split(".")[0] + "." + type(m).__name__ for m in rnns})

    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)) or None, with_kwargs=True)
             for m in rnns]
    t0 = time.perf_counter()
    loss0 = float(w.step(0, optimizer).detach())
    first_step_s = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    threads1 = _threads()
    layers = _layer_call(calls, w.train)
    del calls

    i = 1
    for _ in range(warmup):
        w.step(i, optimizer)
        layers()
        i += 1
    steps, layer_ts = [], []
    t_start = time.perf_counter()
    while len(steps) < min_steps or time.perf_counter() - t_start < min_time:
        t = time.perf_counter()
        w.step(i, optimizer)
        steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        layers()
        layer_ts.append(time.perf_counter() - t)
        i += 1
    threads2 = _threads()
    step_s, layer_s = statistics.median(steps), statistics.median(layer_ts)
    return {
        "model": name, "impl": impl, "train": w.train, "rnn_modules": kinds,
        "weights_checksum": weights, "first_loss": loss0, "first_step_s": first_step_s,
        "step_s": step_s, "step_q1_s": _q(steps, 0.25), "step_q3_s": _q(steps, 0.75), "steps": len(steps),
        "layer_s": layer_s, "rnn_share": layer_s / step_s,
        # The fastest step and layer call: on shared cores the median moves with other jobs' load,
        # the minimum much less (it is the step that ran while the cores were free).
        "step_min_s": min(steps), "layer_min_s": min(layer_ts),
        "threads_before": threads0, "threads_after_first_step": threads1, "threads_end": threads2,
        "threads_changed": not (threads0 == threads1 == threads2),
        "pid": os.getpid(),
    }


def _q(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


# ----------------------------------------------------------------------------- the parent

def spawn(name: str, impl: str, warmup: int, min_steps: int, min_time: float, timeout: float = 600,
          threads: int = 0) -> dict:
    """Runs `worker` in a fresh interpreter and returns its record (or {"error": ...})."""
    cmd = [sys.executable, "-m", "fastrnn.bench", "models", "--worker", name, "--impl", impl,
           "--warmup", str(warmup), "--min-steps", str(min_steps), "--min-time", str(min_time),
           "--threads", str(threads)]
    from fastrnn.bench.runner import ROOT
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "impl": impl, "error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "impl": impl, "error": f"exit {p.returncode}: {tail[:300]}"}


def summarize(name: str, runs: dict, base: str = "torch") -> dict:
    """Per implementation: medians over its processes; against `base`: whole-step and layer
    speedups, the RNN share, the Amdahl expectation and the target checks."""
    out = {"model": name, "what": BY_NAME[name].what if name in BY_NAME else "", "impls": {}}
    for impl, recs in runs.items():
        ok = [r for r in recs if "error" not in r]
        if not ok:
            out["impls"][impl] = {"error": recs[0].get("error") if recs else "no run"}
            continue
        med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
        out["impls"][impl] = {
            "step_s": med("step_s"), "layer_s": med("layer_s"), "rnn_share": med("rnn_share"),
            "step_min_s": min(r["step_min_s"] for r in ok), "layer_min_s": min(r["layer_min_s"] for r in ok),
            "first_step_s": med("first_step_s"), "first_loss": ok[0]["first_loss"],
            "weights_checksum": ok[0]["weights_checksum"], "processes": len(ok),
            "step_s_per_process": [r["step_s"] for r in ok], "steps": [r["steps"] for r in ok],
            "rnn_modules": ok[0]["rnn_modules"],
            "threads_before": ok[0]["threads_before"]["intra"],
            "threads_after": sorted({r["threads_end"]["intra"] for r in ok} | {r["threads_after_first_step"]["intra"]
                                                                              for r in ok}),
            "threads_changed": any(r["threads_changed"] for r in ok),
        }
    b = out["impls"].get(base)
    if not b or "error" in b:
        return out
    for impl, r in out["impls"].items():
        if impl == base or "error" in r:
            continue
        r.update({"same_weights": math.isclose(r["weights_checksum"], b["weights_checksum"], rel_tol=1e-9,
                                               abs_tol=1e-9),
                  "first_loss_diff": abs(r["first_loss"] - b["first_loss"])})
        for suffix, step, layer in (("", "step_s", "layer_s"), ("_min", "step_min_s", "layer_min_s")):
            s_w = b[step] / r[step]
            s_l = b[layer] / r[layer]
            p = min(b[layer] / b[step], 1.0)
            amdahl = 1.0 / ((1.0 - p) + p / s_l)
            outside_b, outside_r = b[step] - b[layer], r[step] - r[layer]
            r.update({
                "speedup" + suffix: s_w, "layer_speedup" + suffix: s_l, "rnn_share_torch" + suffix: p,
                "amdahl_speedup" + suffix: amdahl, "share_bound" + suffix: s_l * p,
                "outside_ratio" + suffix: outside_b / outside_r if outside_r > 0 and outside_b > 0 else None,
                "never_slower" + suffix: s_w >= 1.0,
                "no_loss_outside" + suffix: s_w >= amdahl,
                "meets_share_bound" + suffix: s_w >= s_l * p,
            })
    return out


def run(names: list, impls: list, rounds: int, warmup: int, min_steps: int, min_time: float,
        progress: bool = True, settings: Optional[dict] = None, threads: int = 0) -> dict:
    """Every model in `names`, each implementation in its own process, `rounds` times, the
    order of the implementations alternating from round to round (ABBA...)."""
    from fastrnn.bench.runner import _loadavg, environment
    env = environment("cpu")
    t0 = time.perf_counter()
    models = []
    for k, name in enumerate(names):
        runs = {impl: [] for impl in impls}
        for r in range(rounds):
            order = impls if (k + r) % 2 == 0 else impls[::-1]
            for impl in order:
                rec = spawn(name, impl, warmup, min_steps, min_time, threads=threads)
                runs[impl].append(rec)
                if progress:
                    msg = rec.get("error") or (f"step {rec['step_s'] * 1e3:.3g} ms, layers {rec['layer_s'] * 1e3:.3g} ms"
                                               f", threads {rec['threads_before']['intra']}→"
                                               f"{rec['threads_end']['intra']}")
                    print(f"  {name} [{impl}, round {r + 1}/{rounds}]: {msg}", file=sys.stderr, flush=True)
        models.append(summarize(name, runs))
    env["loadavg_end"] = _loadavg()
    return {
        "schema": SCHEMA, "kind": "models", "hardware_id": env["hardware_id"], "env": env,
        "settings": dict(settings or {}, impls=impls, rounds=rounds, warmup=warmup, min_steps=min_steps,
                         min_time=min_time, threads=threads or None, wall_s=time.perf_counter() - t0),
        "models": models,
    }


def results_dir() -> Path:
    from fastrnn.bench.runner import benchmarks_dir
    return benchmarks_dir() / "results" / "models"


def save(doc: dict, path: Optional[Path] = None) -> Path:
    path = Path(path) if path else results_dir() / f"{doc['hardware_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main(argv: list) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m fastrnn.bench models",
                                 description="Whole-model training steps: torch.nn vs fastrnn, each in its own process.")
    ap.add_argument("--quick", action="store_true", help="the quick set (%d models, one round)"
                    % sum(s.quick for s in SPECS))
    ap.add_argument("--model", type=lambda s: [x for x in s.split(",") if x],
                    help="comma list of model names or prefixes (%s)" % ", ".join(BY_NAME))
    ap.add_argument("--impl", default="torch,auto", help="comma list: torch and fastrnn backends (auto, cpp, numba)")
    ap.add_argument("--rounds", type=int, help="processes per implementation and model (3; --quick 1)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    ap.add_argument("--min-steps", type=int, help="timed steps at least (10; --quick 5)")
    ap.add_argument("--min-time", type=float, help="seconds of timed steps at least, per process (2; --quick 0.5)")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/models/<hardware-id>.json)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads in each process before anything runs (default: torch's)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        rec = worker(a.worker, a.impl, a.warmup, a.min_steps or 5, a.min_time or 0.5, threads=a.threads)
        print(MARK + json.dumps(rec), flush=True)
        return 0
    names = [s.name for s in SPECS if s.quick or not a.quick]
    if a.model:
        names = [n for n in BY_NAME if any(n == m or n.startswith(m) for m in a.model)]
    if a.list:
        print("\n".join(f"{n}: {BY_NAME[n].what}" for n in names))
        return 0
    if not names:
        print("no model matches", file=sys.stderr)
        return 2
    impls = [x for x in a.impl.split(",") if x]
    if "torch" not in impls:
        impls = ["torch"] + impls
    rounds = a.rounds or (1 if a.quick else 3)
    min_steps = a.min_steps or (5 if a.quick else 10)
    min_time = a.min_time if a.min_time is not None else (0.5 if a.quick else 2.0)
    cmd = "python -m fastrnn.bench models" + ("" if not argv else " " + " ".join(argv))
    doc = run(names, impls, rounds, a.warmup, min_steps, min_time,
              settings={"quick": a.quick, "argv": argv, "command": cmd}, threads=a.threads)
    path = save(doc, a.out)
    from fastrnn.bench import report
    print(report.models_table(doc))
    print(f"\n{len(names)} models in {doc['settings']['wall_s']:.0f} s; wrote {path}")
    return 0
