"""Gates, gated weight and penalty from one pass (``hard_concrete_gated``) against the separate ops and autograd of the references."""

import pytest
import torch

from l0fast.ops import hard_concrete_gated, hard_concrete_sample, l0_penalty
from l0fast.ops.hard_concrete import GATE_PARAMS, example_log_alpha, hard_concrete_sample_ref
from l0fast.ops.l0_penalty import l0_penalty_ref

DTYPES = [(torch.float32, 2e-6, 1e-5), (torch.float64, 1e-12, 1e-10)]
SIZES = [1, 7, 1000, 16_385, 65_537]  # 16,385: one element past a penalty block


def _inputs(numel, dtype, generator, weighted):
    log_alpha = example_log_alpha(numel, dtype, generator)
    weight = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype).view(-1, 1) if weighted else None
    return log_alpha, torch.tensor([11, 5], dtype=torch.int64), weight


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_forward_is_the_separate_ops(weighted, numel, dtype, atol, rtol, generator):
    log_alpha, state, weight = _inputs(numel, dtype, generator, weighted)
    out, penalty = hard_concrete_gated(log_alpha, state, *GATE_PARAMS, weight=weight)
    gates = hard_concrete_sample(log_alpha, state, *GATE_PARAMS)
    torch.testing.assert_close(out, gates if weight is None else weight * gates.view(weight.shape), atol=atol, rtol=rtol)
    assert out.shape == (log_alpha if weight is None else weight).shape
    assert torch.equal(penalty, l0_penalty(log_alpha, *GATE_PARAMS)), "the penalty's sum must be l0_penalty's, bit for bit"
    assert torch.equal(state, torch.tensor([11, 5])), "the caller advances the stream"


def _reference(log_alpha, state, weight):
    gates = hard_concrete_sample_ref(log_alpha, state, *GATE_PARAMS)
    return (gates if weight is None else weight * gates.view(weight.shape)), l0_penalty_ref(log_alpha, *GATE_PARAMS)


@pytest.mark.parametrize("used", ["both", "gates", "penalty"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("numel", [7, 16_385])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_backward_matches_autograd_of_references(used, weighted, numel, dtype, atol, rtol, generator):
    log_alpha, state, weight = _inputs(numel, dtype, generator, weighted)
    grad_out = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)
    leaves = []
    for fn in (lambda a, w: hard_concrete_gated(a, state, *GATE_PARAMS, weight=w), lambda a, w: _reference(a, state, w)):
        a = log_alpha.clone().requires_grad_()
        w = None if weight is None else weight.clone().requires_grad_()
        out, penalty = fn(a, w)
        loss = {"both": (out.reshape(-1) * grad_out).sum() + 0.3 * penalty,
                "gates": (out.reshape(-1) * grad_out).sum(), "penalty": 0.3 * penalty}[used]
        loss.backward()
        leaves.append((a, w))
    (a1, w1), (a2, w2) = leaves
    torch.testing.assert_close(a1.grad, a2.grad, atol=atol, rtol=rtol)
    if weighted:
        if used == "penalty":
            assert w1.grad is None or not w1.grad.any()
        else:
            torch.testing.assert_close(w1.grad, w2.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("weighted", [False, True])
def test_broadcast_gradient_of_sum(weighted, generator):
    log_alpha, state, weight = _inputs(5000, torch.float32, generator, weighted)
    grads = []
    for fn in (lambda a, w: hard_concrete_gated(a, state, *GATE_PARAMS, weight=w), lambda a, w: _reference(a, state, w)):
        a = log_alpha.clone().requires_grad_()
        w = None if weight is None else weight.clone().requires_grad_()
        out, penalty = fn(a, w)
        (out.sum() + penalty).backward()
        grads.append((a.grad, None if w is None else w.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=2e-6, rtol=1e-5)
    if weighted:
        torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_and_gradgradcheck_fp64(weighted, generator):
    log_alpha = (2 * torch.randn(48, generator=generator, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(48, generator=generator, dtype=torch.float64).requires_grad_() if weighted else None
    state = torch.tensor([3, 1], dtype=torch.int64)

    def fn(a, *w):
        return hard_concrete_gated(a, state, *GATE_PARAMS, weight=w[0] if w else None)

    assert torch.autograd.gradcheck(fn, (log_alpha,) + ((weight,) if weighted else ()), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (log_alpha,) + ((weight,) if weighted else ()), eps=1e-6, atol=1e-5)


def test_weight_of_another_size_or_dtype_is_refused():
    log_alpha, state = torch.zeros(6), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="weight must have log_alpha's number of elements and dtype"):
        hard_concrete_gated(log_alpha, state, *GATE_PARAMS, weight=torch.zeros(5))
    with pytest.raises(ValueError, match="weight must have log_alpha's number of elements and dtype"):
        hard_concrete_gated(log_alpha, state, *GATE_PARAMS, weight=torch.zeros(6, dtype=torch.float64))


def test_nan_log_alpha_raises():
    log_alpha = torch.zeros(100)
    log_alpha[17] = float("nan")
    with pytest.raises(ValueError, match="log_alpha contains NaN"):
        hard_concrete_gated(log_alpha, torch.tensor([0, 0]), *GATE_PARAMS, weight=torch.ones(100))
