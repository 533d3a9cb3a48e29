"""What a calibration result looks like: per-target errors, weight summaries and the fit history.

Relative errors here are ``(estimate - y) / max(|y|, 1)`` (signed; a target of
0 is measured absolutely).  For the ``n`` active weights ``w`` (deterministic
gates) with initial (design) weights ``w0``:

- Kish effective sample size ``ESS = (sum w)^2 / sum w^2``;
- design effect ``deff = n / ESS``;
- quantiles of ``w / w0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

RATIO_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
WEIGHT_BINS = (0.01, 0.1, 1.0, 10.0, 1000.0)  # edges of weight_histogram's bins
WEIGHT_BIN_LABELS = ("<0.01", "0.01-0.1", "0.1-1", "1-10", "10-1000", ">1000")


@dataclass
class Diagnostics:
    """``targets``: one row per target (target, value, estimate, relative_error, group); ``summary``: figures."""

    targets: pd.DataFrame
    summary: dict


def relative_errors(estimate: Tensor, y: Tensor) -> Tensor:
    """``(estimate - y) / max(|y|, 1)`` in fp64, (Q,)."""
    y = y.double()
    return (estimate.double() - y) / y.abs().clamp_min(1.0)


def history_record(epoch: int, loss: float, estimate: Tensor, y: Tensor, active: int, lambda_l0: float,
                   phase: str = "fit") -> dict:
    """One row of ``SparseCalibrationWeights.history``: ``loss`` is the training loss of the row's last epoch (on the
    gates it sampled, before its Adam step: l0's ``total_loss``); ``mean_relative_error`` and ``active`` are of the
    deterministic weights after it; ``lambda_l0`` is the multiplier that epoch used (``lambda_l0_``: the next one's);
    ``phase``: ``"fit"``, or ``"refit"`` for the epochs of ``refit`` (rows of checkpoints from before it have none)."""
    mean_error = float(relative_errors(estimate, y).abs().mean()) if y.numel() else 0.0
    return {"epoch": epoch, "loss": loss, "mean_relative_error": mean_error, "active": active, "lambda_l0": lambda_l0,
            "phase": phase}


def weight_histogram(weights: Tensor) -> Tensor:
    """Counts (6,) fp64 of the active (> 0) weights in the bins of :data:`WEIGHT_BIN_LABELS`."""
    active = weights[weights > 0]
    edges = torch.tensor(WEIGHT_BINS, device=weights.device, dtype=weights.dtype)
    return torch.bincount(torch.bucketize(active, edges, right=True), minlength=len(WEIGHT_BIN_LABELS)).double()


def weight_summary(weights: Tensor, initial: Tensor) -> dict:
    """Active count, Kish ESS, design effect and ``w / w0`` quantiles of the active weights, and the design effect
    of the initial weights (over those > 0), the spread the calibration started from."""
    active = weights > 0
    w = weights[active].double()
    count = int(active.sum())
    ess = float(w.sum() ** 2 / w.square().sum()) if count else 0.0
    w0 = initial[active].double()
    ratio = (w / w0)[w0 > 0].cpu().numpy()  # records of design weight 0 (allowed in Python) have no ratio
    return {
        "active": count,
        "n_features": weights.numel(),
        "kish_ess": ess,
        "design_effect": _design_effect(w),
        "initial_design_effect": _design_effect(initial[initial > 0].double()),
        "weight_ratio_quantiles": {q: float(np.quantile(ratio, q)) for q in RATIO_QUANTILES} if ratio.size else {},
    }


def _design_effect(w: Tensor) -> float:
    """Kish's design effect ``n * sum(w^2) / sum(w)^2`` of the weights ``w`` (n,), n > 0 (nan for none)."""
    return float(w.numel() * w.square().sum() / w.sum() ** 2) if w.numel() else float("nan")


def calibration_diagnostics(model, M, y, target_names=None, target_groups=None, estimate=None) -> Diagnostics:
    """:class:`Diagnostics` of ``model`` (a fitted ``SparseCalibrationWeights``) against M (Q, N) and y (Q,).

    ``estimate``: ``model.predict(M)`` (Q,) when already known (a sharded fit's, summed over the shards); M is then unused.
    """
    import pandas as pd  # imported on use: `import l0fast` stays light

    from .sparse import as_target_vector

    if model.is_shard:  # its estimates and weights would be its block's only
        raise ValueError(f"this model holds households [{model.household_offset}, {model.household_offset + model.n_features}) "
                         f"of {model.n_features_total}: gather the shards first, l0fast.distributed.gather_model(model, "
                         "ShardGroup()), and pass estimate=<predict summed over them> (l0fast calibrate does both)")
    with torch.no_grad():
        estimate = model.predict(M).double() if estimate is None else _checked_estimate(estimate, y)
        y = as_target_vector(y, estimate.numel(), estimate.device, torch.float64)
        q = y.numel()
        names = np.arange(q) if target_names is None else np.asarray(target_names)
        groups = np.zeros(q, dtype=np.int64) if target_groups is None else np.asarray(target_groups)
        for name, values in (("target_names", names), ("target_groups", groups)):
            if values.shape != (q,):
                raise ValueError(f"{name} must have one entry per target, shape ({q},); got {values.shape}")
        missing = np.flatnonzero(pd.isna(groups))
        if len(missing):  # pandas' groupby would drop them from the per-group table, the report's and its plot
            raise ValueError(f"target_groups holds NaN or None at targets {missing[:5].tolist()}; give every target a group")
        errors = relative_errors(estimate, y)
        table = pd.DataFrame({
            "target": names, "value": y.cpu().numpy(), "estimate": estimate.cpu().numpy(),
            "relative_error": errors.cpu().numpy(), "group": groups,
        })
        summary = weight_summary(model.get_weights(deterministic=True), model.initial_weights)
        summary["mean_abs_relative_error"] = float(errors.abs().mean()) if q else 0.0
        summary["max_abs_relative_error_by_group"] = table.groupby("group")["relative_error"].apply(lambda e: e.abs().max()).to_dict()
    return Diagnostics(table, summary)


def _checked_estimate(estimate, y) -> Tensor:
    """``estimate`` as an fp64 tensor (Q,), Q the number of targets in ``y``; ValueError naming it otherwise."""
    estimate = torch.as_tensor(estimate).double()
    q = y.numel() if isinstance(y, Tensor) else np.size(y)
    if estimate.shape != (q,):
        raise ValueError(f"estimate must be a vector with one entry per target ({q}), got shape {tuple(estimate.shape)}")
    bad = torch.nonzero(~torch.isfinite(estimate)).flatten()
    if len(bad):
        raise ValueError(f"estimate holds NaN or inf at targets {bad[:5].tolist()}; pass the finite estimate of a fitted model")
    return estimate
