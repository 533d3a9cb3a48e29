"""Synthetic, survey-shaped calibration problems with a known solution (no download).

:func:`make_survey_problem` draws ``n_households`` households, each with

- ``region``          int in [0, n_regions), regions of unequal size;
- ``persons_by_age``  persons per age band (household size 1 + Poisson(1.4), at most 8);
- ``income``          whole currency units, log-normal, growing with the number of adults.

Targets (rows of M), listed region by region and then nationally; each level
has the same ``K = 3 + n_age_bands + n_income_bands`` kinds, in this order:

=====================  =============================================  ==================
kind                   entry M[t, h] for household h in the area      name
=====================  =============================================  ==================
households             1                                              ``households``
persons in age band a  persons_by_age[h, a]                           ``persons_<band>``
households in band b   1 if income[h] falls in income band b          ``income_band_<b>``
total income           income[h]                                      ``income``
persons                household size                                 ``persons``
=====================  =============================================  ==================

so ``M`` is ``(n_regions + 1) * K`` targets x ``n_households`` and row
``level * K + kind`` is target ``kind`` of region ``level`` (level
``n_regions`` = national).  ``target_groups`` gives one group per (kind,
regional/national): regional targets of one kind share a group, each
national total is its own group.

A random ``active_fraction`` of households carries a positive "true" weight
``mean_weight`` x (a log-normal rate per region) x uniform[0.5, 1.5], the rest weight 0, and
``y = M @ true_weights`` exactly (all entries of M are integers, exact in
float32), times ``1 + target_noise * N(0, 1)`` if ``target_noise > 0``.
Everything is vectorized numpy: a million households build in about a second.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse as sp

from .distributions import _check_size
from .ops.hard_concrete import check_number

AGE_BANDS = ("0_17", "18_34", "35_49", "50_64", "65_plus")
_AGE_PROBS = np.array([0.22, 0.22, 0.2, 0.19, 0.17])


@dataclass
class SurveyProblem:
    """A calibration problem ``y ≈ M @ w``, ``w >= 0`` sparse, with its generating data."""

    M: sp.csr_matrix  # (n_targets, n_households) float32
    y: np.ndarray  # (n_targets,) float64
    target_groups: np.ndarray  # (n_targets,) int64
    target_names: list[str]
    true_weights: np.ndarray  # (n_households,) float64, zero outside the active set
    region: np.ndarray  # (n_households,) int64
    persons_by_age: np.ndarray  # (n_households, n_age_bands) int64
    income: np.ndarray  # (n_households,) float64, whole units
    age_bands: tuple[str, ...] = field(default=AGE_BANDS)

    @property
    def n_targets(self) -> int:
        return self.M.shape[0]

    @property
    def n_households(self) -> int:
        return self.M.shape[1]

    def relative_errors(self, estimate) -> np.ndarray:
        """``|estimate - y| / (y + 1)`` per target, the metric l0-python reports."""
        return np.abs(np.asarray(estimate, dtype=np.float64) - self.y) / (self.y + 1)


def make_survey_problem(
    n_households: int = 10_000,
    n_regions: int = 10,
    n_income_bands: int = 4,
    active_fraction: float = 0.5,
    mean_weight: float = 100.0,
    target_noise: float = 0.0,
    seed: int | np.random.Generator | None = 0,
) -> SurveyProblem:
    """Seeded synthetic survey calibration problem; see the module docstring for its structure.

    >>> p = make_survey_problem(1_000, n_regions=3, seed=0)
    >>> p.M.shape, p.y.shape
    ((48, 1000), (48,))
    """
    n_households, n_regions, n_income_bands = (_check_size(value, name) for value, name in (
        (n_households, "n_households"), (n_regions, "n_regions"), (n_income_bands, "n_income_bands")))
    active_fraction = check_number("active_fraction", active_fraction, 0, 1, open_lo=True)
    mean_weight = check_number("mean_weight", mean_weight, 0, open_lo=True)
    target_noise = check_number("target_noise", target_noise, 0)
    numpy_seeds = (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)
    if seed is not None and not isinstance(seed, numpy_seeds) and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be an int >= 0 (or None, or a numpy Generator), got {seed!r}")
    rng = np.random.default_rng(seed)
    n, n_age = n_households, len(AGE_BANDS)

    region = rng.choice(n_regions, size=n, p=rng.dirichlet(np.full(n_regions, 4.0)))
    size = np.minimum(1 + rng.poisson(1.4, size=n), 8)
    persons = rng.multinomial(size, _AGE_PROBS)  # (n, n_age)
    adults = np.maximum(persons[:, 1:].sum(axis=1), 1)
    income = np.minimum(np.round(rng.lognormal(10.3, 0.7, size=n) * adults**0.6), 5e6)
    cuts = np.quantile(income, np.linspace(0, 1, n_income_bands + 1)[1:-1])
    band = np.searchsorted(cuts, income, side="right")

    # per household: (kind, value) pairs, in the kind order of the module docstring
    n_kinds = 3 + n_age + n_income_bands
    kinds = np.concatenate([np.zeros((n, 1)), np.arange(1, 1 + n_age) + np.zeros((n, 1)), 1 + n_age + band[:, None],
                            np.full((n, 1), 1 + n_age + n_income_bands), np.full((n, 1), 2 + n_age + n_income_bands)], axis=1)
    values = np.concatenate([np.ones((n, 1)), persons, np.ones((n, 1)), income[:, None], size[:, None]], axis=1)
    kinds = kinds.astype(np.int64)
    keep = values != 0
    cols = np.broadcast_to(np.arange(n)[:, None], kinds.shape)[keep]
    kinds, values, lvl = kinds[keep], values[keep], np.broadcast_to(region[:, None], keep.shape)[keep]
    rows = np.concatenate([lvl * n_kinds + kinds, n_regions * n_kinds + kinds])
    cols, values = np.concatenate([cols, cols]), np.concatenate([values, values])
    n_targets = (n_regions + 1) * n_kinds
    M = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n_targets, n))

    true_weights = np.zeros(n)
    active = rng.random(n) < active_fraction
    region_rate = rng.lognormal(0.0, 0.5, size=n_regions)  # regions sampled at different rates
    true_weights[active] = mean_weight * region_rate[region[active]] * rng.uniform(0.5, 1.5, size=int(active.sum()))
    y = np.bincount(rows, weights=values * true_weights[cols], minlength=n_targets)
    if target_noise > 0:
        y = y * (1 + target_noise * rng.standard_normal(n_targets))

    kind_names = ["households", *(f"persons_{a}" for a in AGE_BANDS), *(f"income_band_{b}" for b in range(n_income_bands)), "income", "persons"]
    areas = [f"region_{r:02d}" for r in range(n_regions)] + ["national"]
    names = [f"{area}/{kind}" for area in areas for kind in kind_names]
    level = np.repeat(np.arange(n_regions + 1), n_kinds)
    kind = np.tile(np.arange(n_kinds), n_regions + 1)
    groups = np.where(level < n_regions, kind, n_kinds + kind).astype(np.int64)
    return SurveyProblem(M, y, groups, names, true_weights, region.astype(np.int64), persons.astype(np.int64), income)
