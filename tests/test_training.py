"""Programs users write train to the same loss curve when nn.LSTM/GRU/RNN becomes fastrnn's.

Each program runs twice from the same seed: once with torch.nn, once with a namespace
where LSTM/GRU/RNN are fastrnn's (the one-import change a user makes). Since fastrnn's
modules initialise exactly like torch's, the same seed gives the same initial weights.
"""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn as torch_nn

import fastrnn
from conftest import CPU_BACKENDS


def _nn(backend):
    """torch.nn, or torch.nn with the recurrent modules swapped for fastrnn's."""
    if backend is None:
        return torch_nn
    ns = types.SimpleNamespace(**{k: getattr(torch_nn, k) for k in dir(torch_nn) if not k.startswith("__")})
    for name in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"):
        cls = getattr(fastrnn, name)
        setattr(ns, name, type(name, (cls,), {"__init__": lambda self, *a, _c=cls, **k: _c.__init__(
            self, *a, backend=backend, **k)}))
    return ns


# --- the seed tutorial's programs, as written there (only `nn` is injected) ----------------

def seed_regression_rnn(nn):
    """The tutorial's 'Simple RNN Implementation': batch_first RNN, explicit h0, Adam."""
    class RNNModel(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(RNNModel, self).__init__()
            self.rnn = nn.RNN(input_size, hidden_size, batch_first=True)
            self.fc = nn.Linear(hidden_size, output_size)

        def forward(self, x):
            h0 = torch.zeros(1, x.size(0), hidden_size)
            out, _ = self.rnn(x, h0)
            out = self.fc(out[:, -1, :])
            return out

    input_size, hidden_size, output_size, sequence_length, batch_size = 1, 10, 1, 5, 3
    x = torch.randn(batch_size, sequence_length, input_size)
    y = torch.randn(batch_size, output_size)
    model = RNNModel(input_size, hidden_size, output_size)
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for epoch in range(100):
        optimizer.zero_grad()
        output = model(x)
        loss = criterion(output, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def seed_lstm_gru_regressors(nn):
    """The tutorial's 'LSTM vs GRU' models (h_n[-1] into a Linear), trained briefly."""
    class LSTMModel(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(LSTMModel, self).__init__()
            self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
            self.fc = nn.Linear(hidden_size, output_size)

        def forward(self, x):
            _, (h_n, _) = self.lstm(x)
            return self.fc(h_n[-1])

    class GRUModel(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(GRUModel, self).__init__()
            self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
            self.fc = nn.Linear(hidden_size, output_size)

        def forward(self, x):
            _, h_n = self.gru(x)
            return self.fc(h_n[-1])

    input_size, hidden_size, output_size, seq_len, batch_size = 10, 20, 1, 5, 3
    x = torch.randn(batch_size, seq_len, input_size)
    y = torch.randn(batch_size, output_size)
    losses = []
    for model in (LSTMModel(input_size, hidden_size, output_size), GRUModel(input_size, hidden_size, output_size)):
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(30):
            opt.zero_grad()
            loss = nn.MSELoss()(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def seed_sentiment_rnn(nn):
    """The tutorial's SentimentRNN (embedding + RNN, h_n[-1]) on a toy token task."""
    class SentimentRNN(nn.Module):
        def __init__(self, vocab_size, embed_size, hidden_size, output_size):
            super(SentimentRNN, self).__init__()
            self.embedding = nn.Embedding(vocab_size, embed_size)
            self.rnn = nn.RNN(embed_size, hidden_size, batch_first=True)
            self.fc = nn.Linear(hidden_size, output_size)

        def forward(self, x):
            x = self.embedding(x)
            _, h_n = self.rnn(x)
            return self.fc(h_n[-1])

    model = SentimentRNN(vocab_size=50, embed_size=16, hidden_size=24, output_size=2)
    tokens = torch.randint(0, 50, (16, 12))
    labels = (tokens[:, 0] < 25).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(tokens), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def lstm_language_model_tbptt(nn):
    """Embedding + 2-layer LSTM LM with dropout, truncated BPTT, hidden state carried and detached."""
    class LM(nn.Module):
        def __init__(self, vocab, emb, hidden):
            super().__init__()
            self.emb = nn.Embedding(vocab, emb)
            self.lstm = nn.LSTM(emb, hidden, num_layers=2, dropout=0.2)
            self.drop = nn.Dropout(0.2)
            self.out = nn.Linear(hidden, vocab)

        def forward(self, tokens, hidden):
            out, hidden = self.lstm(self.drop(self.emb(tokens)), hidden)
            return self.out(self.drop(out)), hidden

    vocab, bptt, batch = 40, 8, 4
    steps = torch.arange(bptt * 6 + 1)[:, None]
    corpus = (steps * 3 + torch.arange(batch) * 7) % vocab  # a learnable sequence
    model = LM(vocab, 16, 32)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    losses = []
    for epoch in range(2):
        model.train()
        hidden = None
        for i in range(0, corpus.size(0) - 1, bptt):
            data, target = corpus[i:i + bptt], corpus[i + 1:i + 1 + bptt]
            if hidden is not None:
                hidden = tuple(h.detach() for h in hidden)
            opt.zero_grad()
            logits, hidden = model(data, hidden)
            loss = nn.CrossEntropyLoss()(logits.view(-1, vocab), target.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            losses.append(loss.item())
    return losses


PROGRAMS = [seed_regression_rnn, seed_lstm_gru_regressors, seed_sentiment_rnn, lstm_language_model_tbptt]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("program", PROGRAMS, ids=[p.__name__ for p in PROGRAMS])
def test_same_loss_curve(program, backend):
    torch.manual_seed(0)
    expected = program(_nn(None))
    torch.manual_seed(0)
    got = program(_nn(backend))
    assert len(got) == len(expected)
    # float32 training: kernels sum in a different order than torch's, so the curves agree to
    # float32 rounding amplified over the steps, not bit for bit.
    for step, (a, b) in enumerate(zip(got, expected)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"step {step}: loss {a} vs torch {b}"
    assert expected[-1] < expected[0], "the program did not train at all; the comparison proves little"
