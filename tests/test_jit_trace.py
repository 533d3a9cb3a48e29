"""torch.jit.trace of gated models: the traced module holds aten ops (plus philox_uniform where gates are
sampled), so it saves and loads as TorchScript, as l0-python's does, computes what the model does, and the
trace meets no warning (a Python autograd.Function cannot be saved; a cached weight would be a constant)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import l0fast
from graph_capture import MODEL_PARAMS, PenaltyOfForward, assert_follows_the_parameters, warm_eval_model
from l0fast.rng import load_rng_state_dict, rng_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # still served in torch 2.13


def _trace(fn, x, **kwargs):
    """(traced module, its non-aten node kinds), failing on any TracerWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, (x,), **kwargs)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    return traced, {k for k in kinds if not k.startswith(("aten::", "prim::Constant", "prim::GetAttr", "prim::ListConstruct",
                                                           "prim::TupleConstruct", "prim::NumToTensor"))}


def _reloaded(traced):
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize(**MODEL_PARAMS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_traced_eval_model_is_aten_only_and_follows_the_weights(factory, shape, grad):
    model, x = warm_eval_model(factory, shape)
    with torch.set_grad_enabled(grad):
        traced, other = _trace(model, x)
    assert other == set()
    with torch.no_grad():
        torch.testing.assert_close(_reloaded(traced)(x), model(x))
    assert_follows_the_parameters(traced, model, x)


@pytest.mark.parametrize(**MODEL_PARAMS)
def test_traced_train_model_draws_the_models_gates(factory, shape):
    """The traced training forward samples the gates the model samples from the same stream position and
    advances its stream as the model does; only the noise op stays l0fast's, and it saves and loads."""
    torch.manual_seed(0)
    model, x = factory().train(), torch.randn(shape)
    start = rng_state_dict(model)
    traced, other = _trace(model, x, check_trace=False)
    assert other == {"l0fast::philox_uniform"}
    loaded = _reloaded(traced)  # its own copy of the parameters and the streams
    load_rng_state_dict(model, start)
    want = [model(x), model(x)]
    end = rng_state_dict(model)
    for module in (traced, loaded):
        load_rng_state_dict(module, start)  # the traced module's buffers are the model's
        got = [module(x), module(x)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        assert all(torch.equal(rng_state_dict(module)[k], v) for k, v in end.items())


def test_traced_loss_computes_the_penalty_in_the_graph():
    """A penalty remembered from an eager forward (the memo) is not what the trace records: the traced
    loss's penalty follows the logits."""
    torch.manual_seed(0)
    model, x = l0fast.L0Linear(6, 5, seed=0).train(), torch.randn(4, 6)
    model(x)  # leaves a penalty memo
    traced, _ = _trace(PenaltyOfForward(model), x, check_trace=False)
    with torch.no_grad():
        model.weight_gates.qz_logits.add_(1.0)
    torch.testing.assert_close(traced(x), model.get_l0_penalty())
