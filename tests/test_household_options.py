"""keep, weight_bounds and per-record lambda_l0: inside the fused pass, equal to the reference, and each one effective."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast import SparseCalibrationWeights
from l0fast.engine import FitOptions, HouseholdOptions
from l0fast.engine.cpu import CppFit
from l0fast.engine.gpu import TritonFit
from test_fit_engine import GATE_PARAMS, _problem, _targets, assert_follows_reference

N = 600


def _options(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    keep = rng.random(n) < 0.1
    scale = np.where(keep, 0.0, rng.uniform(0, 3, n))
    as_t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return HouseholdOptions(as_t(scale), as_t(keep.astype(float)), as_t(np.full(n, -0.3)), as_t(np.full(n, 0.4)))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("target_count", [None, 200])
def test_fused_options_follow_the_reference(dtype, tol, target_count):
    matrix, y, params = _problem(9, 1100, dtype, compact_rows=True)
    options = FitOptions(lr=0.05, lambda_l0=0.05, lambda_l2=1e-3, gate_params=GATE_PARAMS, target_count=target_count,
                         households=_options(1100, dtype))
    assert_follows_reference(CppFit, matrix, _targets(y, "relative"), params, options, 5, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_triton_options_follow_the_reference(dtype, tol):
    matrix, y, params = _problem(7, 300, dtype, compact_rows=False)
    options = FitOptions(lr=0.05, lambda_l0=0.05, lambda_l2=1e-3, gate_params=GATE_PARAMS, target_count=60,
                         households=_options(300, dtype))
    assert_follows_reference(TritonFit, matrix, _targets(y, "relative"), params, options, 4, tol)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    M = sp.random(25, N, density=0.2, format="csr", random_state=rng)
    return M, M @ rng.uniform(0.2, 8.0, N)  # far from the initial weights (all 1)


def _fit(problem, **kwargs):
    M, y = problem
    model = SparseCalibrationWeights(N, init_weights=np.full(N, 1.0), seed=0)
    return model.fit(M, y, lr=0.1, epochs=150, loss_type="relative", **({"lambda_l0": 0.02} | kwargs))


def test_weight_bounds_hold_and_are_needed(problem):
    free = _fit(problem).get_weights(deterministic=True).detach()
    active = free[free > 0]
    assert (active > 5).any() or (active < 0.2).any(), "without bounds some weight should leave [0.2, 5]"
    bounded = _fit(problem, weight_bounds=(0.2, 5.0)).get_weights(deterministic=True).detach()
    active = bounded[bounded > 0]
    assert len(active) and (active >= 0.2).all() and (active <= 5.0).all()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_refit_holds_weight_bounds_when_given(problem, backend, monkeypatch):
    """refit(weight_bounds=) keeps the refitted weights within the bounds; without them (the fit's are not carried
    over) a refit leaves them.  Gates and the support stay as the fit left them."""
    import l0fast.engine as engine

    if backend == "reference":
        monkeypatch.setattr(engine, "engine_backend", lambda device: "reference")
    M, y = problem
    fitted = _fit(problem, weight_bounds=(0.3, 4.0))
    gates = fitted.get_deterministic_gates().clone()
    free, bounded = (_fit(problem, weight_bounds=(0.3, 4.0)).refit(M, y, epochs=150, lr=0.1, loss_type="relative", **kw)
                     for kw in ({}, {"weight_bounds": (0.3, 4.0)}))
    w = free.get_weights(deterministic=True).detach()
    assert ((w[w > 0] < 0.3) | (w[w > 0] > 4.0)).any(), "an unbounded refit should leave [0.3, 4.0] here"
    w = bounded.get_weights(deterministic=True).detach()
    active = w[w > 0]
    assert len(active) and (active >= 0.3).all() and (active <= 4.0).all()
    assert torch.equal(bounded.get_deterministic_gates(), gates)
    errors = lambda m: np.abs(m.predict(M).numpy() - y) / y  # noqa: E731
    assert errors(bounded).mean() < errors(fitted).mean(), "the bounded refit should still lower the error"


def test_kept_records_survive_a_strong_penalty(problem):
    keep = np.zeros(N, dtype=bool)
    keep[::7] = True
    free = _fit(problem, lambda_l0=1.0).get_weights(deterministic=True).detach().numpy()
    assert (free[keep] == 0).any(), "a strong penalty should prune some of these records without keep"
    model = _fit(problem, lambda_l0=1.0, keep=keep)
    kept = model.get_weights(deterministic=True).detach().numpy()
    assert (kept[keep] > 0).all()
    assert torch.equal(model.get_deterministic_gates()[torch.as_tensor(keep)], torch.ones(int(keep.sum())))


def test_target_count_leaves_kept_records_out_of_the_count(problem):
    keep = np.zeros(N, dtype=bool)
    keep[:50] = True
    model = _fit(problem, lambda_l0=0.01, keep=keep, target_count=100)
    active = model.get_weights(deterministic=True).detach().numpy() > 0
    assert active[keep].all() and active[~keep].sum() == 100


def test_per_record_lambda(problem):
    lam = np.where(np.arange(N) % 2 == 0, 0.0, 5.0)
    weights = _fit(problem, lambda_l0=lam).get_weights(deterministic=True).detach().numpy()
    assert (weights[::2] > 0).mean() > 0.9 and (weights[1::2] > 0).mean() < 0.5


@pytest.mark.parametrize("kwargs,error,match", [
    ({"keep": np.ones(N)}, TypeError, "keep must be a bool array"),
    ({"keep": np.ones(N - 1, dtype=bool)}, ValueError, "keep must have one entry per record"),
    ({"weight_bounds": (2.0, 1.0)}, ValueError, "weight_bounds must be"),
    ({"weight_bounds": (0.5,)}, ValueError, "weight_bounds must be"),
    ({"lambda_l0": -np.ones(N)}, ValueError, "lambda_l0 must be finite and >= 0"),
    ({"lambda_l0": np.ones(N), "target_count": 10}, ValueError, "exclude each other"),
    ({"keep": np.arange(N) < 100, "target_count": N - 99}, ValueError, f"is more than the {N - 100} records outside keep"),
    ({"keep": np.ones(N, dtype=bool), "target_count": 1}, ValueError, "more than the 0 records outside keep"),
])
def test_bad_household_options(problem, kwargs, error, match):
    M, y = problem
    with pytest.raises(error, match=match):
        SparseCalibrationWeights(N, seed=0).fit(M, y, epochs=2, **kwargs)


def test_the_reported_l0_sum_is_the_one_lambda_multiplies():
    """With per-record lambda the stats' L0 column is sum_h scale_h p_h (kept records have scale 0)."""
    from l0fast.ops.l0_penalty import active_prob
    from test_fit_engine import _engine

    matrix, y, params = _problem(5, 700, torch.float64, compact_rows=True)
    households = _options(700, torch.float64)
    options = FitOptions(lr=0.05, lambda_l0=0.05, lambda_l2=0.0, gate_params=GATE_PARAMS, households=households)
    fit, state = _engine(CppFit, matrix, _targets(y, "mse"), params, options)
    expected = (households.lambda_scale * active_prob(state[1].detach(), *GATE_PARAMS)).sum()
    torch.testing.assert_close(fit.run(1, True)[0, 1], expected, rtol=1e-12, atol=1e-12)
