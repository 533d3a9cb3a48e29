"""Activation checkpointing (torch.utils.checkpoint) of regions that sample gates: with
``context_fn=l0fast.checkpoint_context`` a step equals the same step without checkpointing, gradients and
noise streams alike; without it, a rerun that would sample other gates raises."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import l0fast


class Twice(nn.Module):
    """One L0Linear applied twice (weight sharing inside one checkpointed region)."""

    def __init__(self):
        super().__init__()
        self.layer = l0fast.L0Linear(6, 6, seed=7)

    def forward(self, x):
        return self.layer(torch.relu(self.layer(x)))


class GatedFeatures(nn.Module):
    """An L0Gate on the input features, then a dense layer."""

    def __init__(self):
        super().__init__()
        self.gate, self.out = l0fast.L0Gate(6, init_mean=0.7, seed=8), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.gate.apply_gates(x, dim=-1))


def _blocks(kind):
    """(list of blocks run in sequence, each one checkpointed region; input)."""
    torch.manual_seed(0)
    if kind == "SparseMLP":
        return [l0fast.SparseMLP(6, 5, 3)], torch.randn(4, 6)
    if kind == "three regions":
        return [l0fast.L0Linear(6, 5, seed=1), nn.ReLU(), l0fast.L0Linear(5, 5, seed=2), l0fast.L0Linear(5, 2, seed=3)], torch.randn(4, 6)
    if kind == "shared weight":
        return [Twice(), l0fast.L0Linear(6, 2, seed=4)], torch.randn(4, 6)
    if kind == "conv":
        return [l0fast.L0Conv2d(2, 3, 3, seed=5), l0fast.L0Conv2d(3, 2, 3, structured=True, seed=6)], torch.randn(2, 2, 7, 7)
    return [GatedFeatures()], torch.randn(4, 6)


def _penalty(model):
    return sum(m.get_penalty() for m in model.modules() if isinstance(m, l0fast.HardConcrete))


def _step(model, x, how):
    """Gradients and stream positions after one training step of loss + penalty; the streams are put back."""
    start = l0fast.rng_state_dict(model)
    model.zero_grad(set_to_none=True)
    out = x
    for block in model:
        if how == "plain":
            out = block(out)
        else:
            out = checkpoint(block, out, use_reentrant=False, context_fn=l0fast.checkpoint_context)
    (out.square().sum() + 0.1 * _penalty(model)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    after = l0fast.rng_state_dict(model)
    l0fast.load_rng_state_dict(model, start)
    return grads, after


@pytest.mark.parametrize("kind", ["SparseMLP", "three regions", "shared weight", "conv", "L0Gate"])
def test_checkpointed_step_equals_the_plain_step(kind):
    blocks, x = _blocks(kind)
    model = nn.Sequential(*blocks).train()
    x.requires_grad_()
    want_grads, want_streams = _step(model, x, "plain")
    grads, streams = _step(model, x, "checkpoint")
    assert grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)
    assert all(torch.equal(streams[k], want_streams[k]) for k in want_streams)


def test_a_retained_graph_reruns_the_same_gates_at_each_backward():
    blocks, x = _blocks("three regions")
    model = nn.Sequential(*blocks).train()
    out = x
    for block in model:
        out = checkpoint(block, out, use_reentrant=False, context_fn=l0fast.checkpoint_context)
    loss = out.square().sum()
    after = l0fast.rng_state_dict(model)
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[name], msg=name)
    assert all(torch.equal(l0fast.rng_state_dict(model)[k], v) for k, v in after.items())


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_a_rerun_without_the_context_raises(use_reentrant):
    model = l0fast.SparseMLP(6, 5, 3).train()
    x = torch.randn(4, 6, requires_grad=True)
    out = checkpoint(model, x, use_reentrant=use_reentrant)
    with pytest.raises(RuntimeError, match="context_fn=l0fast.checkpoint_context"):
        out.sum().backward()


def test_eval_gates_need_no_context():
    """Mean gates draw no noise: checkpointing an eval-mode gated model needs nothing."""
    model = l0fast.SparseMLP(6, 5, 3).eval()
    x = torch.randn(4, 6, requires_grad=True)
    checkpoint(model, x, use_reentrant=False).square().sum().backward()
    want = x.grad.clone()
    x.grad = None
    model(x).square().sum().backward()
    torch.testing.assert_close(x.grad, want)


def test_a_rerun_rewinds_only_the_streams_its_own_thread_drew():
    """Forwards in other threads (data-parallel replicas) draw during a region without joining it: its rerun
    rewinds the region's own streams only."""
    record, replay = l0fast.checkpoint_context()
    mine, theirs = l0fast.L0Linear(4, 3, seed=1).train(), l0fast.L0Linear(4, 3, seed=2).train()
    x = torch.randn(2, 4)
    start = mine.weight_gates.rng_state.clone()
    with record:
        mine(x)
        other = threading.Thread(target=theirs, args=(x,))
        other.start()
        other.join()
    mine_after, theirs_after = mine.weight_gates.rng_state.clone(), theirs.weight_gates.rng_state.clone()
    with replay:
        assert torch.equal(mine.weight_gates.rng_state, start)
        assert torch.equal(theirs.weight_gates.rng_state, theirs_after)
    assert torch.equal(mine.weight_gates.rng_state, mine_after)
