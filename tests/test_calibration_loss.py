"""The calibration loss options: denominators, group weights, and capped_relative end to end."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast import SparseCalibrationWeights
from l0fast.calibration_loss import fit_targets, group_weights

Y = torch.tensor([-50.0, -0.5, 0.0, 1e-3, 2.0, 1e4], dtype=torch.float64)


@pytest.mark.parametrize("loss_type,floor,expected", [
    ("mse", None, torch.ones(6, dtype=torch.float64)),
    ("relative", None, 1 / (Y + 1)),
    ("capped_relative", 1.0, 1 / torch.tensor([50.0, 1.0, 1.0, 1.0, 2.0, 1e4], dtype=torch.float64)),
    ("capped_relative", 100.0, 1 / torch.tensor([100.0, 100.0, 100.0, 100.0, 100.0, 1e4], dtype=torch.float64)),
])
def test_denominators(loss_type, floor, expected):
    targets = fit_targets(Y, loss_type, floor, torch.ones_like(Y))
    assert torch.equal(targets.inv_denom, expected)
    assert torch.equal(targets.y, Y)


def test_a_target_of_minus_one_is_refused_under_relative_loss():
    """'relative' divides by y + 1: a target of -1 made the fit divide by 0 and fail as 'became NaN, lower lr'."""
    M = sp.random(5, 50, density=0.5, format="csr", random_state=np.random.default_rng(0))
    y = np.array([3.0, -1.0, 2.0, 1.0, 4.0])
    for call in ("fit", "refit"):
        with pytest.raises(ValueError, match=r"divides each residual by y \+ 1, which is 0 for y\[1\] = -1 \(the target at index 1, counting from 0\).*capped_relative"):
            getattr(SparseCalibrationWeights(50, seed=0), call)(M, y, epochs=3, loss_type="relative")
    SparseCalibrationWeights(50, seed=0).fit(M, y, epochs=3, loss_type="capped_relative", relative_floor=1.0)


def test_group_weights_normalize_and_multiply():
    weights, groups = group_weights(Y, np.array([0, 0, 1, 1, 1, 2]), True, {1: 3.0})
    assert torch.equal(weights, torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert groups.tolist() == [0, 0, 1, 1, 1, 2]


def test_capped_relative_keeps_tiny_targets_from_dominating():
    """60 noisy targets, 40 households: no exact fit.  Under 'relative' the target of 1e-3 (divided
    by ~1) outweighs the others (divided by their size); a floor of 10 takes that away, and the
    other targets fit better."""
    rng = np.random.default_rng(0)
    M = sp.random(60, 40, density=0.3, format="csr", random_state=rng)
    y = M @ rng.uniform(0.5, 2.0, 40) * rng.uniform(0.8, 1.2, 60)
    y[0] = 1e-3
    errors, tiny = {}, {}
    for loss_type, floor in (("relative", None), ("capped_relative", 10.0)):
        model = SparseCalibrationWeights(40, seed=0, use_gates=False)
        model.fit(M, y, lambda_l0=0.0, lr=0.05, epochs=500, loss_type=loss_type, relative_floor=floor)
        estimate = model.predict(M).double().numpy()
        errors[loss_type] = np.median(np.abs(estimate - y)[1:] / y[1:])
        tiny[loss_type] = estimate[0]
    assert errors["capped_relative"] < 0.75 * errors["relative"]
    assert tiny["capped_relative"] > tiny["relative"]  # the tiny target gave way
