"""torch.fx.symbolic_trace of gated models, as of l0-python's: the graph records the gate functions as leaves
(the traced module samples from the model's streams and runs the kernels), reads the parameters instead of a
cached product, and computes what the model computes, gradients included."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import l0fast
from graph_capture import MODEL_PARAMS, PenaltyOfForward, assert_follows_the_parameters, warm_eval_model
from l0fast.rng import load_rng_state_dict, rng_state_dict


def _calls(graph_module) -> set[str]:
    return {getattr(n.target, "__name__", str(n.target)) for n in graph_module.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize(**MODEL_PARAMS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_traced_eval_model_follows_the_weights(factory, shape, grad):
    model, x = warm_eval_model(factory, shape)
    with torch.set_grad_enabled(grad):
        traced = torch.fx.symbolic_trace(model)
    assert "hard_concrete_mean" in _calls(traced)
    assert_follows_the_parameters(traced, model, x)


@pytest.mark.parametrize(**MODEL_PARAMS)
def test_traced_train_step_equals_the_models(factory, shape):
    """From the same stream position, the traced module draws the model's gates, advances the streams as the
    model does and gives the same gradients."""
    torch.manual_seed(0)
    model, x = factory().train(), torch.randn(shape)
    traced = torch.fx.symbolic_trace(model)
    assert "sample_gated" in _calls(traced)
    start = rng_state_dict(model)
    results = []
    for module in (model, traced):  # the traced module's buffers and parameters are the model's
        load_rng_state_dict(model, start)
        model.zero_grad(set_to_none=True)
        outs = [module(x), module(x)]
        sum(o.square().sum() for o in outs).backward()
        results.append((outs, {k: p.grad.clone() for k, p in model.named_parameters()}, rng_state_dict(model)))
    (want, want_grads, want_end), (got, got_grads, got_end) = results
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert want_grads.keys() == got_grads.keys() and all(torch.equal(got_grads[k], v) for k, v in want_grads.items())
    assert all(torch.equal(got_end[k], v) for k, v in want_end.items())


def test_traced_module_copies_and_pickles():
    torch.manual_seed(0)
    model, x = l0fast.SparseMLP(6, 5, 3).eval(), torch.randn(4, 6)
    traced = torch.fx.symbolic_trace(model)
    buffer = io.BytesIO()
    torch.save(traced, buffer)
    buffer.seek(0)
    for module in (copy.deepcopy(traced), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x))


def test_traced_loss_computes_the_penalty_in_the_graph():
    """A penalty remembered from an eager forward (the memo) is not what the graph records."""
    torch.manual_seed(0)
    model, x = l0fast.L0Linear(6, 5, seed=0).train(), torch.randn(4, 6)
    model(x)  # leaves a penalty memo
    traced = torch.fx.symbolic_trace(PenaltyOfForward(model))
    assert "l0_penalty" in _calls(traced)
    with torch.no_grad():
        model.weight_gates.qz_logits.add_(1.0)
    torch.testing.assert_close(traced(x), model.get_l0_penalty())
