"""Gated layers under DistributedDataParallel (gloo, 2 processes on CPU).

Gate noise: identical on every rank.  A gated module's ``rng_state`` is a
buffer, which DDP broadcasts from rank 0 (``broadcast_buffers=True``, its
default) and which every rank advances alike, so each rank draws the same
gates; a DDP step on a batch split over the ranks then equals one process's
step on the whole batch with the same gates (to float tolerance), which this
test checks for a SparseMLP and an L0Conv2d network over several Adam steps.
"""

import torch
import torch.distributed as dist
from distributed_harness import run_ranks, values_of
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from l0fast import L0Conv2d, SparseMLP, compute_l0_penalty

STEPS = 4
BATCH = 8


def networks():
    torch.manual_seed(0)  # SparseMLP's gate streams are seeded from torch's generator
    conv = nn.Sequential(L0Conv2d(2, 4, 3, padding=1, seed=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    data = {"mlp": (torch.randn(BATCH, 20), torch.randn(BATCH, 5)), "conv": (torch.randn(BATCH, 2, 6, 6), torch.randn(BATCH, 3))}
    return {"mlp": SparseMLP(20, 16, 5), "conv": conv}, data


def train(model, forward, x, y, steps=STEPS):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(forward(x), y) + 1e-3 * compute_l0_penalty(model)
        loss.backward()
        optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def ddp_training(rank, size):
    models, data = networks()
    out = {}
    for name, model in models.items():
        x, y = data[name]
        part = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
        out[name] = train(model, DistributedDataParallel(model, process_group=dist.group.WORLD), x[part], y[part])
    return out


def test_ddp_step_on_a_split_batch_equals_the_single_process_step_on_the_whole_batch():
    ranks = values_of(run_ranks(ddp_training, 2))
    models, data = networks()
    for name, model in models.items():
        single = train(model, model, *data[name])
        for params in ranks:
            assert params[name].keys() == single.keys()
            for key, value in single.items():
                torch.testing.assert_close(params[name][key], value, rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(single[k], v) for k, v in zip(single, networks()[0][name].parameters()))  # it trained
