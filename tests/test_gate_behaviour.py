"""Sampled-gate statistics, reproducibility, torch.compile and bad input for the gate ops."""

import math

import pytest
import torch

from l0fast.ops import hard_concrete_mean, hard_concrete_sample, l0_penalty
from l0fast.rng import new_rng_state, sample_gates

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def _logit(p):
    return math.log(p / (1 - p))


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_sampled_gate_distribution_matches_stretched_concrete(log_alpha):
    n = 1 << 20
    gates = hard_concrete_sample(torch.full((n,), log_alpha, dtype=torch.float64), torch.tensor([3, 0]), BETA, GAMMA, ZETA)
    # Analytic: g = 0 iff s <= -gamma/(zeta-gamma), g = 1 iff s >= (1-gamma)/(zeta-gamma),
    # with logit(s) = (logistic + log_alpha) / beta.
    p_zero = 1 / (1 + math.exp(-(BETA * _logit(-GAMMA / (ZETA - GAMMA)) - log_alpha)))
    p_one = 1 - 1 / (1 + math.exp(-(BETA * _logit((1 - GAMMA) / (ZETA - GAMMA)) - log_alpha)))
    u = (torch.arange(1 << 22, dtype=torch.float64) + 0.5) / (1 << 22)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    mean = (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1).mean().item()
    tol = 5 * 0.5 / math.sqrt(n)
    assert abs((gates == 0).double().mean().item() - p_zero) < tol
    assert abs((gates == 1).double().mean().item() - p_one) < tol
    assert abs(gates.mean().item() - mean) < tol


def test_same_state_same_gates_and_advancing_state_new_gates():
    log_alpha = torch.randn(10_000)
    state = new_rng_state(seed=11)
    first = sample_gates(log_alpha, state, BETA, GAMMA, ZETA)
    assert state.tolist() == [11, 10_000]
    second = sample_gates(log_alpha, state, BETA, GAMMA, ZETA)
    again = hard_concrete_sample(log_alpha, torch.tensor([11, 0]), BETA, GAMMA, ZETA)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_default_seed_follows_torch_manual_seed():
    torch.manual_seed(5)
    a = new_rng_state()
    torch.manual_seed(5)
    b = new_rng_state()
    assert torch.equal(a, b) and a[1] == 0


def test_compile_fullgraph_gate_and_penalty_without_recompiles():
    import torch._dynamo

    torch._dynamo.reset()
    log_alpha = torch.randn(1000, requires_grad=True)

    def step(log_alpha, state):
        gates = sample_gates(log_alpha, state, BETA, GAMMA, ZETA)
        return gates.sum() + 1e-3 * l0_penalty(log_alpha, BETA, GAMMA, ZETA)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_state, compiled_state = new_rng_state(seed=3), new_rng_state(seed=3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            want = step(log_alpha, eager_state)
            (grad_want,) = torch.autograd.grad(want, log_alpha)
            got = compiled(log_alpha, compiled_state)
            (grad_got,) = torch.autograd.grad(got, log_alpha)
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(grad_got, grad_want)
    assert torch.equal(eager_state, compiled_state)


@pytest.mark.parametrize("fn", ["sample", "mean", "penalty"])
def test_nan_log_alpha_raises(fn):
    log_alpha = torch.zeros(100)
    log_alpha[37] = float("nan")
    call = {
        "sample": lambda: hard_concrete_sample(log_alpha, torch.tensor([1, 0]), BETA, GAMMA, ZETA),
        "mean": lambda: hard_concrete_mean(log_alpha, BETA, GAMMA, ZETA),
        "penalty": lambda: l0_penalty(log_alpha, BETA, GAMMA, ZETA),
    }[fn]
    with pytest.raises(ValueError, match="log_alpha contains NaN"):
        call()


@pytest.mark.parametrize(
    "params,match", [((0.0, GAMMA, ZETA), "beta"), ((BETA, 0.1, ZETA), "gamma"), ((BETA, GAMMA, 1.0), "zeta")]
)
def test_bad_gate_parameters_raise(params, match):
    with pytest.raises(ValueError, match=match):
        hard_concrete_mean(torch.zeros(10), *params)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        new_rng_state(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gates_far_past_exp_overflow_are_exactly_closed_or_open(dtype):
    """|a / beta| > 88 overflows fp32 exp; under -ffast-math that once read closed gates as open."""
    from l0fast.ops.hard_concrete import hard_concrete_mean_ref

    log_alpha = torch.tensor([-10.9, -20.0, -6.0, 6.0, 15.0, 20.0] * 7, dtype=dtype)  # 42: SIMD body and tail
    for beta in (0.0625, 0.05, 0.02):
        got = hard_concrete_mean(log_alpha, beta, -0.1, 1.1)
        torch.testing.assert_close(got, hard_concrete_mean_ref(log_alpha, beta, -0.1, 1.1))
        assert got.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0] * 7
