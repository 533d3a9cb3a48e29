"""torch.func transforms through l0fast's layers and gates, as through l0-python's plain torch code.

Inside a transform the differentiable wrappers run the pure-PyTorch references
(``l0fast.ops.registry.in_functorch_transform``); outside, the kernels.  So each
transform is checked against ordinary autograd on the kernels, from the same
noise position: gradients, second derivatives, per-sample gradients (vmap of
grad), forward-mode Jacobians, and a vmapped model ensemble against each model
on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, jacfwd, jacrev, stack_module_state, vmap

import l0fast
from l0fast.rng import load_rng_state_dict, rng_state_dict

try:
    import l0 as ref
except ImportError:  # l0-python is a bench extra
    ref = None
needs_l0 = pytest.mark.skipif(ref is None, reason="needs l0-python 0.6.2 (pip install l0-python==0.6.2)")


class Loss(nn.Module):
    """``sum(module(x) ** 2) + 0.5 * penalty``: the training objective as one forward, for functional_call."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x) if not isinstance(self.module, l0fast.L0Gate) else self.module.apply_gates(x, dim=-1)
        penalty = self.module.get_l0_loss() if isinstance(self.module, l0fast.SparseMLP) else (
            self.module.get_penalty() if isinstance(self.module, l0fast.L0Gate) else self.module.get_l0_penalty())
        return out.square().sum() + 0.5 * penalty


# (name, factory given a dtype, input shape)
MODULES = [
    ("L0Linear", lambda: l0fast.L0Linear(7, 5, seed=1), (4, 7)),
    ("L0Conv2d", lambda: l0fast.L0Conv2d(2, 3, 3, padding=1, seed=2), (2, 2, 5, 5)),
    ("L0Conv2d-structured", lambda: l0fast.L0Conv2d(2, 3, 3, structured=True, seed=3), (2, 2, 5, 5)),
    ("L0DepthwiseConv2d", lambda: l0fast.L0DepthwiseConv2d(3, 3, seed=4), (2, 3, 5, 5)),
    ("SparseMLP", lambda: l0fast.SparseMLP(6, 5, 3), (4, 6)),
    ("L0Gate", lambda: l0fast.L0Gate(6, init_mean=0.6, seed=5), (3, 6)),
]
IDS = [name for name, *_ in MODULES]
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _build(factory, shape, dtype, mode):
    torch.manual_seed(0)
    model = Loss(factory()).to(dtype)
    with torch.no_grad():  # logits spread over the gates' range, so some gates are clamped
        for name, p in model.named_parameters():
            if name.endswith("qz_logits"):
                p.copy_(torch.randn(p.shape, dtype=dtype) * 2)
    return model.train(mode == "train"), torch.randn(shape, dtype=dtype)


def _params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


def _autograd(model, x):
    """(loss, {name: grad}) by loss.backward() on the kernels."""
    model.zero_grad(set_to_none=True)
    loss = model(x)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _assert_close(got, want, dtype):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOLERANCE[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("factory,shape", [m[1:] for m in MODULES], ids=IDS)
def test_grad_transform_matches_autograd(factory, shape, mode, dtype):
    """torch.func.grad of loss + penalty: the kernels' gradients and loss, from the same noise, and the noise
    stream advanced as far."""
    model, x = _build(factory, shape, dtype, mode)
    start = rng_state_dict(model)
    want_loss, want = _autograd(model, x)
    after = rng_state_dict(model)
    load_rng_state_dict(model, start)
    got, loss = grad_and_value(lambda p: functional_call(model, p, (x,)))(_params(model))
    _assert_close(got, want, dtype)
    torch.testing.assert_close(loss, want_loss, **TOLERANCE[dtype])
    assert all(torch.equal(rng_state_dict(model)[k], v) for k, v in after.items())


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("factory,shape", [m[1:] for m in MODULES], ids=IDS)
def test_second_derivatives_match_the_transform(factory, shape, mode):
    """The gradient of a gradient penalty ``|d loss / d params|^2``: by autograd on the kernels
    (``create_graph=True``) and by torch.func on the references, from the same noise position."""
    model, x = _build(factory, shape, torch.float64, mode)
    start = rng_state_dict(model)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(model(x), params, create_graph=True)
    want = dict(zip(names, torch.autograd.grad(sum(g.square().sum() for g in grads), params)))
    load_rng_state_dict(model, start)

    def grad_penalty(p):
        first = torch.func.grad(lambda q: functional_call(model, q, (x,)))(p)
        return sum(g.square().sum() for g in first.values())

    _assert_close(torch.func.grad(grad_penalty)(_params(model)), want, torch.float64)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("factory,shape", [m[1:] for m in MODULES], ids=IDS)
def test_per_sample_grads_match_a_loop(factory, shape, mode):
    """vmap(grad) over the batch (one draw of gates for the whole batch, as one forward draws them) against
    autograd on each sample alone, each from that same noise position."""
    model, x = _build(factory, shape, torch.float64, mode)
    start = rng_state_dict(model)
    want = []
    for xi in x:
        load_rng_state_dict(model, start)
        want.append(_autograd(model, xi[None])[1])
    load_rng_state_dict(model, start)
    per_sample = vmap(torch.func.grad(lambda p, xi: functional_call(model, p, (xi[None],))), in_dims=(None, 0))
    got = per_sample(_params(model), x)
    _assert_close(got, {name: torch.stack([w[name] for w in want]) for name in got}, torch.float64)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("factory,shape", [m[1:] for m in MODULES[:5]], ids=IDS[:5])
def test_forward_mode_jacobian_matches_autograd(factory, shape, mode):
    """jacfwd and jacrev of the layer's output in its input against torch.autograd.functional.jacobian (the kernels)."""
    model, x = _build(factory, shape, torch.float64, mode)
    layer, start = model.module, rng_state_dict(model)
    want = torch.autograd.functional.jacobian(layer, x)
    for transform in (jacfwd, jacrev):
        load_rng_state_dict(model, start)
        torch.testing.assert_close(transform(layer)(x), want, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("factory,shape", [m[1:] for m in MODULES[:5]], ids=IDS[:5])
def test_vmapped_ensemble_matches_each_model(factory, shape, mode):
    """Three models stacked (torch.func.stack_module_state, noise streams included) and vmapped: each output is
    that model's own, and each stacked stream advances as that model's does."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(factory().double().train(mode == "train"))
    x = torch.randn(shape, dtype=torch.float64)
    params, buffers = stack_module_state(models)
    base = models[0]
    got = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    with torch.no_grad():
        want = torch.stack([m(x) for m in models])
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])
    for name, stacked in buffers.items():
        if name.endswith("rng_state"):
            assert torch.equal(stacked, torch.stack([dict(m.named_buffers())[name] for m in models]))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("model_cls", [l0fast.SparseL0Linear, l0fast.SparseCalibrationWeights])
def test_grad_transform_through_the_sparse_models(model_cls, mode):
    """The sparse regression and calibration models take a scipy matrix (data, converted outside the
    transform): torch.func.grad of ``|model(M)|^2 + penalty`` equals autograd, from the same noise."""
    matrix = scipy.sparse.random(12, 9, density=0.4, format="csr", random_state=0, dtype=np.float32)
    torch.manual_seed(0)
    model = model_cls(9).train(mode == "train")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    loss = Loss(model)
    start = rng_state_dict(loss)
    want = _autograd(loss, matrix)[1]
    load_rng_state_dict(loss, start)
    got = torch.func.grad(lambda p: functional_call(loss, p, (matrix,)))(_params(loss))
    _assert_close(got, want, torch.float32)


def test_vmap_randomness_different_is_refused_for_one_stream():
    """One forward draws one set of gates: vmap's randomness="different" (a set per batch element) raises for
    a module's single stream, in both sampling paths; a stacked ensemble (a stream per member) and eval-mode
    gates (no draw) are served."""
    torch.manual_seed(0)
    layer, gate, x = l0fast.L0Linear(5, 3).train(), l0fast.L0Gate(5).train(), torch.randn(4, 5)
    for draw in (lambda xi: layer(xi[None]), lambda xi: gate.apply_gates(xi, dim=-1)):
        with pytest.raises(RuntimeError, match='randomness="same"'):
            vmap(draw, randomness="different")(x)
        assert vmap(draw, randomness="same")(x).shape[0] == 4
    members = [l0fast.L0Linear(5, 3).train() for _ in range(2)]
    params, buffers = stack_module_state(members)
    assert vmap(lambda p, b: functional_call(layer, (p, b), (x,)), randomness="different")(params, buffers).shape == (2, 4, 3)
    assert vmap(lambda xi: layer.eval()(xi[None]), randomness="different")(x).shape == (4, 1, 3)


def test_a_stacked_ensemble_trains_under_vmap_of_grad_with_randomness_different():
    """grad wraps vmap's batched stream in its own tensor, so the refusal above took the ensemble for one stream."""
    torch.manual_seed(0)
    members = [l0fast.L0Linear(5, 3).train() for _ in range(2)]
    params, buffers = stack_module_state(members)
    x = torch.randn(4, 5)

    def loss(p, b):
        return functional_call(members[0], (p, b), (x,)).square().sum()

    grads = vmap(torch.func.grad(loss), randomness="different")(params, buffers)
    for k, member in enumerate(members):
        member(x).square().sum().backward()
        torch.testing.assert_close(grads["weight"][k], member.weight.grad)


def test_eval_cache_is_neither_filled_nor_read_under_a_transform():
    """Inference under vmap computes the gated weight (by the reference) without keeping it: the cache, filled
    later by the kernels, gives the output of a layer that never saw a transform."""
    torch.manual_seed(0)
    layer, fresh = l0fast.L0Linear(9, 4, seed=0).eval(), l0fast.L0Linear(9, 4, seed=0).eval()
    with torch.no_grad():
        layer.weight_gates.qz_logits.normal_()
        fresh.load_state_dict(layer.state_dict())
        x = torch.randn(5, 9)
        vmapped = vmap(lambda xi: layer(xi[None]))(x)
        assert "_eval_weight" not in layer.__dict__
        torch.testing.assert_close(vmapped[:, 0], fresh(x))
        assert torch.equal(layer(x), fresh(x))


def test_nan_logits_still_raise_under_grad():
    """The NaN check of the gate logits reads a value, which a grad transform allows: it still raises there."""
    model, x = _build(MODULES[0][1], MODULES[0][2], torch.float32, "train")
    params = _params(model)
    params["module.weight_gates.qz_logits"] = params["module.weight_gates.qz_logits"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match="log_alpha contains NaN"):
        torch.func.grad(lambda p: functional_call(model, p, (x,)))(params)


@needs_l0
@pytest.mark.parametrize("name,args,shape", [
    ("L0Linear", (7, 5), (4, 7)),
    ("L0Conv2d", (2, 3, 3), (2, 2, 5, 5)),
    ("L0DepthwiseConv2d", (3, 3), (2, 3, 5, 5)),
    ("SparseMLP", (6, 5, 3), (4, 6)),
])
def test_eval_transforms_match_l0_python(name, args, shape):
    """Drop-in: torch.func.grad and per-sample outputs (vmap) of an eval-mode model equal l0-python's."""
    torch.manual_seed(0)
    theirs = getattr(ref, name)(*args).eval()
    ours = getattr(l0fast, name)(*args).eval()
    ours.load_state_dict(theirs.state_dict(), strict=False)
    x = torch.randn(shape)
    models = (theirs, ours)
    params = [{n: p.detach() for n, p in m.named_parameters()} for m in models]
    grads = [torch.func.grad(lambda p, m=m: functional_call(m, p, (x,)).square().sum())(p) for m, p in zip(models, params)]
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-6, msg=key)
    outs = [vmap(lambda xi, m=m, p=p: functional_call(m, p, (xi[None],)))(x) for m, p in zip(models, params)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
