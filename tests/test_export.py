"""torch.export of gated models: the exported program holds aten ops (plus philox_uniform where gates are
sampled), so it loads where l0fast is not installed, as l0-python's does, and computes what the model does."""

from __future__ import annotations

import pytest
import torch

from graph_capture import MODEL_PARAMS
from l0fast.rng import load_rng_state_dict, rng_state_dict


def _l0fast_ops(program) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function" and "l0fast" in str(node.target)}


@pytest.mark.parametrize(**MODEL_PARAMS)
def test_exported_eval_model_is_aten_only_and_equals_the_model(factory, shape):
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    program = torch.export.export(model, (x,))
    assert _l0fast_ops(program) == set()
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize(**MODEL_PARAMS)
def test_exported_train_model_draws_the_models_gates(factory, shape):
    """The exported training forward samples the gates the model samples from the same stream position, and
    advances its stream as the model does; only the noise op stays l0fast's."""
    torch.manual_seed(0)
    model, x = factory().train(), torch.randn(shape)
    start = rng_state_dict(model)
    program = torch.export.export(model, (x,))
    assert _l0fast_ops(program) == {"l0fast.philox_uniform.default"}
    load_rng_state_dict(model, start)
    want = [model(x), model(x)]
    exported = program.module()
    load_rng_state_dict(exported, start)
    got = [exported(x), exported(x)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert all(torch.equal(rng_state_dict(exported)[k], v) for k, v in rng_state_dict(model).items())
