"""fit(target_count=K): exactly K records, the multiplier moved by dual ascent in every engine."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast import SparseCalibrationWeights
from l0fast.datasets import make_survey_problem
from l0fast.engine import FitOptions, next_lambda
from l0fast.engine.cpu import CppFit
from l0fast.engine.gpu import TritonFit
from l0fast.target_count import START_LAMBDA
from test_fit_engine import GATE_PARAMS, _problem, _targets, assert_follows_reference


@pytest.fixture(scope="module")
def survey():
    return make_survey_problem(3000, n_regions=4, seed=0)


@pytest.mark.parametrize("k", [300, 1000, 2000])
def test_target_count_lands_exactly(survey, k):
    model = SparseCalibrationWeights(survey.n_households, init_weights=100.0, init_keep_prob=0.8, seed=0)
    model.fit(survey.M, survey.y, lr=0.2, epochs=400, loss_type="relative", target_count=k)
    assert model.get_active_weights()["count"] == k
    lambdas = [row["lambda_l0"] for row in model.history]
    assert lambdas[0] > START_LAMBDA and model.lambda_l0_ != lambdas[0], "the multiplier must move with the count"
    errors = np.abs(model.predict(survey.M).numpy() - survey.y) / np.abs(survey.y)
    assert errors.mean() < 0.1


def test_the_multiplier_follows_the_expected_count():
    lam = torch.tensor(1e-3, dtype=torch.float64)
    options = FitOptions(lr=0.1, lambda_l0=1e-3, lambda_l2=0.0, target_count=100)
    assert next_lambda(lam, torch.tensor(150.0, dtype=torch.float64), options) > lam  # too many: penalise more
    assert next_lambda(lam, torch.tensor(50.0, dtype=torch.float64), options) < lam
    assert next_lambda(lam, torch.tensor(100.0, dtype=torch.float64), options) == lam
    plain = FitOptions(lr=0.1, lambda_l0=1e-3, lambda_l2=0.0)
    assert next_lambda(lam, torch.tensor(150.0, dtype=torch.float64), plain) is lam


@pytest.mark.parametrize("cls", [CppFit, TritonFit])
def test_engines_move_the_multiplier_like_the_reference(cls):
    matrix, y, params = _problem(9, 400, torch.float64, compact_rows=cls is CppFit)
    options = FitOptions(lr=0.05, lambda_l0=1e-3, lambda_l2=0.0, gate_params=GATE_PARAMS, target_count=50, dual_step=0.2)
    assert_follows_reference(cls, matrix, _targets(y, "relative"), params, options, 5, 1e-9)


@pytest.mark.parametrize("kwargs,match", [
    ({"target_count": 0}, "target_count must be an int in"),
    ({"target_count": 10**9}, "target_count must be an int in"),
    ({"target_count": 2.5}, "target_count must be an int in"),
    ({"target_count": 10, "lambda_l0": 0.5}, "exclude each other"),
])
def test_bad_target_count(survey, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseCalibrationWeights(survey.n_households, seed=0).fit(survey.M, survey.y, epochs=2, **kwargs)


@pytest.mark.parametrize("gates, side", [(dict(beta=10.0), "close"), (dict(beta=2.0, gamma=-1e-6, zeta=1.000001), "close"),
                                         (dict(beta=1.0, gamma=-1e9, zeta=1.1), "open")])
def test_gates_whose_threshold_lies_beyond_the_log_alpha_clamp_are_refused(gates, side):
    """The kernels clamp log_alpha to +-20: a snap below a threshold of -24 was clamped back above it, and the fit
    ended with every record active, silently."""
    M = sp.random(10, 100, density=0.3, format="csr", random_state=0)
    with pytest.raises(ValueError, match=f"target_count cannot be met with these gates .* so no record could {side}; "):
        SparseCalibrationWeights(100, **gates).fit(M, M @ np.ones(100), epochs=5, target_count=10)
