"""``fit(target_count=K)``: a number of records instead of a ``lambda_l0`` (records in ``keep`` not counted).

During the fit ``lambda_l0`` is a Lagrange multiplier of the constraint
"expected active records = K", moved by dual ascent after every epoch
(:func:`l0fast.engine.next_lambda`: multiplicative, ``dual_step`` per unit
of relative excess), starting from :data:`START_LAMBDA`.  When the fit ends,
:func:`snap_to_count` makes the deterministic count exactly K: the K records
with the largest ``log_alpha`` are opened (a closed one among them is moved
just past the opening threshold), the others closed.  The deterministic gate
``clamp(sigmoid(a / beta) (zeta - gamma) + gamma, 0, 1)`` is > 0 exactly when
``a > beta * logit(-gamma / (zeta - gamma))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .ops.hard_concrete import LOG_ALPHA_BOUND

START_LAMBDA = 1e-6
SNAP_MARGIN = 1e-3  # log_alpha units past the threshold, times beta


def check_target_count(target_count, lambda_l0, default_lambda_l0: float, n_features: int, gate_params: tuple) -> None:
    """ValueError unless ``target_count`` is None or an int in [1, n_features] given without an explicit ``lambda_l0``,
    with gates ``gate_params`` (beta, gamma, zeta) the snap can close and open (:func:`check_snap_reaches`)."""
    if target_count is None:
        return
    if np.ndim(lambda_l0):
        raise ValueError("target_count and a lambda_l0 array exclude each other: target_count sets lambda_l0 itself")
    if isinstance(target_count, bool) or not isinstance(target_count, (int, np.integer)) or not 1 <= target_count <= n_features:
        raise ValueError(f"target_count must be an int in [1, n_features={n_features}], got {target_count!r}")
    if lambda_l0 != default_lambda_l0:
        raise ValueError("target_count and an explicit lambda_l0 exclude each other: target_count sets lambda_l0 itself "
                         f"(the fit reports it as model.lambda_l0_); drop lambda_l0={lambda_l0!r}")
    check_snap_reaches(*gate_params)


def check_count_reachable(target_count: int, kept, n_features: int, like, group=None) -> None:
    """ValueError when fewer than ``target_count`` of the ``n_features`` records are outside ``kept`` (bool mask or
    None; a shard's part in a sharded fit, counted over ``group``): the snap could not open that many."""
    n_kept = torch.zeros(1, dtype=torch.float64, device=like.device)
    if kept is not None:
        n_kept += kept.sum().to(like.device, torch.float64)
    if group is not None:
        n_kept = group.sum(n_kept)
    n_kept = int(n_kept.item())
    if target_count > n_features - n_kept:
        raise ValueError(f"target_count={target_count} is more than the {n_features - n_kept:,} records outside keep ({n_kept:,} of "
                         f"{n_features:,} kept, always active and not counted); lower target_count or keep fewer records")


def check_snap_reaches(beta: float, gamma: float, zeta: float) -> None:
    """ValueError when the gate kernels' clamp of log_alpha to +-LOG_ALPHA_BOUND would keep the snap from closing
    (or opening) records: the opening threshold lies within SNAP_MARGIN * beta of the bound, or beyond it."""
    a0, margin = opening_threshold(beta, gamma, zeta), SNAP_MARGIN * beta
    if not -LOG_ALPHA_BOUND + margin <= a0 <= LOG_ALPHA_BOUND - margin:
        raise ValueError(f"target_count cannot be met with these gates (beta={beta:g}, gamma={gamma:g}, zeta={zeta:g}): a gate "
                         f"opens above log_alpha = beta * log(-gamma / zeta) = {a0:.4g}, and the kernels clamp log_alpha to "
                         f"+-{LOG_ALPHA_BOUND:g}, so no record could {'close' if a0 < 0 else 'open'}; use gate parameters that "
                         f"put it within +-{LOG_ALPHA_BOUND - margin:g} (l0's defaults: beta=2/3, gamma=-0.1, zeta=1.1)")


def opening_threshold(beta: float, gamma: float, zeta: float) -> float:
    """The log_alpha above which the deterministic gate is > 0."""
    p = -gamma / (zeta - gamma)
    return beta * math.log(p / (1 - p))


@torch.no_grad()
def snap_to_count(model, target_count: int, kept=None, group=None) -> None:
    """Open exactly the ``target_count`` records with the largest log_alpha (deterministic gates), besides ``kept``.

    Ties go to the lower record index.  In a fit sharded over processes
    (``group``, :mod:`l0fast.distributed`) the count is over all shards: each
    rank offers its ``target_count`` best records, every rank finds the same
    K-th (log_alpha, global index) among them, and opens its records above it.
    """
    a0 = opening_threshold(model.beta, model.gamma, model.zeta)
    margin = SNAP_MARGIN * model.beta
    la = model.log_alpha
    score = la.double()
    index = torch.arange(la.numel(), device=la.device) + model.household_offset
    free = torch.ones_like(la, dtype=torch.bool) if kept is None else ~kept
    order = torch.argsort(score, descending=True, stable=True)
    best = order[free[order]][:target_count]
    values, indices = score[best], index[best]
    if group is not None:
        values, indices = group.concatenate(values), group.concatenate(indices)
    opened = free.clone()
    if values.numel() >= target_count:
        by_index = torch.argsort(indices)
        ranked = by_index[torch.argsort(values[by_index], descending=True, stable=True)]
        last_value, last_index = values[ranked[target_count - 1]], indices[ranked[target_count - 1]]
        opened &= (score > last_value) | ((score == last_value) & (index <= last_index))
    la[opened] = torch.maximum(la[opened], torch.full_like(la[opened], a0 + margin))
    closed = free & ~opened
    la[closed] = torch.minimum(la[closed], torch.full_like(la[closed], a0 - margin))
