"""DistributedDataParallel (gloo, 2 CPU processes) gives the gradients of single-process training."""
from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastrnn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return fastrnn.LSTM(4, 8, num_layers=2, bidirectional=True, dtype=torch.float64)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, 4, generator=g, dtype=torch.float64)  # [T, B=4, I]


def _loss(lstm, x):
    out, (h, c) = lstm(x)
    return out.pow(2).mean() + h.sum()


def _worker(rank, world, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    lstm = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(lstm)
    x = _data()
    shard = x[:, rank * 2:(rank + 1) * 2]  # each rank sees half the batch
    _loss(ddp, shard).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in lstm.named_parameters()}, result_path)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without running static destructors: gloo's transport threads can still be joinable
    # then, and once in a CI run (1 of ~10) rank 1 died with "terminate called without an active
    # exception" (SIGABRT) after its work was done.  Everything this test checks is written above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(sys.platform != "linux" or not dist.is_available(), reason="needs torch.distributed (gloo)")
def test_ddp_gradients_match_single_process(tmp_path):
    result = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(result)), nprocs=2, join=True)
    ddp_grads = torch.load(result)
    lstm = _model()
    x = _data()
    # DDP averages gradients over ranks: the same as the mean of the per-shard losses.
    loss = (_loss(lstm, x[:, :2]) + _loss(lstm, x[:, 2:])) / 2
    loss.backward()
    for n, p in lstm.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)
