"""The synthetic survey problem: structure, determinism and a known solution."""

import numpy as np
import pytest
from scipy import sparse as sp

from l0fast.datasets import AGE_BANDS, make_survey_problem


@pytest.fixture(scope="module")
def problem():
    return make_survey_problem(3_000, n_regions=4, n_income_bands=3, seed=0)


def test_shapes_and_types(problem):
    n_kinds = 3 + len(AGE_BANDS) + 3
    n_targets = 5 * n_kinds
    assert sp.isspmatrix_csr(problem.M) and problem.M.shape == (n_targets, 3_000) and problem.M.dtype == np.float32
    assert problem.y.shape == problem.target_groups.shape == (n_targets,) and len(problem.target_names) == n_targets
    assert problem.persons_by_age.shape == (3_000, len(AGE_BANDS)) and problem.region.max() < 4
    assert len(set(problem.target_names)) == n_targets  # names are unique
    assert problem.target_names[n_kinds] == "region_01/households" and problem.target_names[-1] == "national/persons"


def test_groups_are_one_per_kind_and_level(problem):
    groups, counts = np.unique(problem.target_groups, return_counts=True)
    n_kinds = len(groups) // 2
    assert sorted(counts.tolist()) == [1] * n_kinds + [4] * n_kinds  # 4 regional targets per kind, national singletons
    national = [g for g, n in zip(problem.target_groups, problem.target_names) if n.startswith("national/")]
    assert min(national) >= n_kinds


def test_rows_mean_what_their_names_say(problem):
    M, names = problem.M.toarray(), problem.target_names
    in_r1 = problem.region == 1
    np.testing.assert_array_equal(M[names.index("region_01/households")], in_r1.astype(float))
    np.testing.assert_array_equal(M[names.index("national/persons_65_plus")], problem.persons_by_age[:, -1])
    np.testing.assert_array_equal(M[names.index("region_01/income")], np.where(in_r1, problem.income, 0))
    bands = M[[names.index(f"national/income_band_{b}") for b in range(3)]]
    np.testing.assert_array_equal(bands.sum(axis=0), np.ones(3_000))  # each household in exactly one band
    regional = sum(M[names.index(f"region_{r:02d}/persons")] for r in range(4))
    np.testing.assert_array_equal(regional, M[names.index("national/persons")])


def test_y_is_m_times_true_weights(problem):
    np.testing.assert_allclose(problem.M.astype(np.float64) @ problem.true_weights, problem.y, rtol=1e-12)
    active = problem.true_weights > 0
    assert 0.4 < active.mean() < 0.6 and (problem.true_weights >= 0).all()
    np.testing.assert_allclose(problem.relative_errors(problem.y), 0)


def test_target_noise_perturbs_y():
    exact = make_survey_problem(500, n_regions=2, seed=3)
    noisy = make_survey_problem(500, n_regions=2, seed=3, target_noise=0.01)
    rel = np.abs(noisy.y / exact.y - 1)
    assert 0 < rel.max() < 0.06 and (noisy.M != exact.M).nnz == 0


def test_deterministic_by_seed():
    a, b, c = (make_survey_problem(800, n_regions=3, seed=s) for s in (1, 1, 2))
    assert (a.M != b.M).nnz == 0 and np.array_equal(a.y, b.y) and np.array_equal(a.true_weights, b.true_weights)
    assert not np.array_equal(a.y, c.y)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_households": 0}, "n_households must be a positive int, got 0"),
    ({"n_households": 1000.0}, "n_households must be a positive int, got 1000.0"),
    ({"n_regions": 2.5}, "n_regions must be a positive int, got 2.5"),
    ({"n_income_bands": True}, "n_income_bands must be a positive int, got True"),
    ({"active_fraction": 0.0}, r"active_fraction must be a finite number in \(0, 1\]"),
    ({"mean_weight": -1.0}, r"mean_weight must be a finite number in \(0, inf\)"),
    ({"mean_weight": float("nan")}, "mean_weight must be a finite number"),
    ({"mean_weight": float("inf")}, "mean_weight must be a finite number"),
    ({"target_noise": float("nan")}, "target_noise must be a finite number"),
    ({"seed": -1}, r"seed must be an int >= 0 \(or None, or a numpy Generator\), got -1"),
    ({"seed": 1.5}, r"seed must be an int >= 0 \(or None, or a numpy Generator\), got 1.5"),
    ({"seed": "3"}, r"seed must be an int >= 0 \(or None, or a numpy Generator\), got '3'"),
])
def test_rejects_bad_arguments_naming_them(kwargs, message):
    """A NaN or inf mean_weight gave NaN targets, a NaN target_noise was ignored, float sizes and a negative
    seed gave numpy's errors, which name no argument."""
    with pytest.raises(ValueError, match=message):
        make_survey_problem(**{"n_households": 10, **kwargs})


def test_seed_takes_none_and_a_generator_as_numpy_does():
    """The argument check refused them (numpy's default_rng takes both)."""
    assert make_survey_problem(50, seed=None).M.shape[1] == 50
    a, b = (make_survey_problem(50, seed=np.random.default_rng(3)) for _ in range(2))
    assert np.array_equal(a.y, b.y)
