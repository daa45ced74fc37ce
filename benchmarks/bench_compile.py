"""torch.compile on models holding fastrnn modules: compiled vs eager fastrnn vs eager torch.nn,
side by side in one process (rounds in alternating order, medians), training steps and inference.

    python benchmarks/bench_compile.py [--steps 20] [--rounds 7]

Prints one table row per (model, mode): ms per step of each implementation and the ratios. The
compiled model uses Inductor with fullgraph=True (one graph; each RNN layer is one fastrnn op).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

import fastrnn


class Tagger(nn.Module):
    """embedding -> 2-layer bidirectional GRU -> per-token linear (a sequence tagger)."""

    def __init__(self, lib, vocab=5000, emb=64, hidden=128, tags=20):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = lib.GRU(emb, hidden, 2, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


class LanguageModel(nn.Module):
    """embedding -> 2-layer LSTM -> linear to the vocabulary (word-level LM, bptt 35, batch 20)."""

    def __init__(self, lib, vocab=10000, hidden=200):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = lib.LSTM(hidden, hidden, 2)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


MODELS = {"lm-lstm": (LanguageModel, (35, 20), 10000), "tagger-gru": (Tagger, (50, 16), 20)}


def _step_fn(model, tokens, targets, train):
    if not train:
        def infer():
            with torch.no_grad():
                model(tokens)
        return infer
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(tokens)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), targets.reshape(-1))
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ms per step, median of {a.rounds} rounds of {a.steps}")
    print("| model | mode | torch.nn | fastrnn eager | fastrnn compiled | compiled/eager | compiled vs torch |")
    print("|---|---|---|---|---|---|---|")
    for name, (cls, (T, B), classes) in MODELS.items():
        for train in (True, False):
            torch.manual_seed(0)
            ref = cls(nn)
            fast = cls(fastrnn)
            fast.load_state_dict(ref.state_dict())
            comp = cls(fastrnn)
            comp.load_state_dict(ref.state_dict())
            compiled = torch.compile(comp, fullgraph=True)
            tokens = torch.randint(0, 5000, (T, B))
            targets = torch.randint(0, classes, (T, B))
            fns = {"torch": _step_fn(ref, tokens, targets, train), "eager": _step_fn(fast, tokens, targets, train),
                   "compiled": _step_fn(compiled, tokens, targets, train)}
            for f in fns.values():  # warm-up (and the compile)
                for _ in range(3):
                    f()
            times = {k: [] for k in fns}
            for r in range(a.rounds):
                order = list(fns) if r % 2 == 0 else list(reversed(fns))
                for k in order:
                    t = time.perf_counter()
                    for _ in range(a.steps):
                        fns[k]()
                    times[k].append((time.perf_counter() - t) / a.steps * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {name} | {'train' if train else 'infer'} | {med['torch']:.2f} | {med['eager']:.2f} | "
                  f"{med['compiled']:.2f} | {med['eager'] / med['compiled']:.2f}x | {med['torch'] / med['compiled']:.2f}x |")


if __name__ == "__main__":
    main()
