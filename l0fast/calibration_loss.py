"""The data term of the calibration loss: per-target weights and denominators from ``fit``'s options.

``loss = sum_i c_i * ((y_i - yhat_i) / d_i)^2`` with

- ``loss_type="mse"``:              ``d_i = 1``
- ``loss_type="relative"``:         ``d_i = y_i + 1`` (l0-python 0.6.2)
- ``loss_type="capped_relative"``:  ``d_i = max(|y_i|, relative_floor)``, so targets
  near zero cannot dominate (``relative_floor`` > 0 required)

and ``c_i = 1 / |group of target i|`` when ``target_groups`` is given with
``normalize_groups=True`` (times any ``group_multipliers``), else 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from .engine import FitTargets
from .ops.hard_concrete import check_number

LOSS_TYPES = ("mse", "relative", "capped_relative")


def check_loss_type(loss_type: str, relative_floor: float | None) -> None:
    """ValueError for an unknown ``loss_type`` or a ``relative_floor`` that does not fit it."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES!r}, got {loss_type!r}")
    if loss_type == "capped_relative":
        ok = isinstance(relative_floor, numbers.Real) and not isinstance(relative_floor, bool) and math.isfinite(relative_floor)
        if not (ok and relative_floor > 0):
            raise ValueError(f"loss_type='capped_relative' needs relative_floor > 0 (e.g. relative_floor=1.0), got {relative_floor!r}")
    elif relative_floor is not None:
        raise ValueError(f"relative_floor only applies to loss_type='capped_relative', got loss_type={loss_type!r}")


def group_weights(y: Tensor, target_groups, normalize_groups: bool, group_multipliers) -> tuple[Tensor, np.ndarray | None]:
    """Per-target loss weights ``c`` (Q,) like ``y``, and the validated group ids (or None)."""
    if group_multipliers is not None and target_groups is None:
        raise ValueError("group_multipliers requires target_groups to be set")
    if target_groups is None:
        return torch.ones_like(y), None
    groups = np.asarray(target_groups.cpu() if isinstance(target_groups, Tensor) else target_groups)
    if groups.shape != (y.numel(),):
        raise ValueError(f"target_groups must have one group id per target, shape ({y.numel()},); got {groups.shape}")
    groups = _integer_group_ids(groups)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse] if normalize_groups else np.ones(len(groups))
    weights = torch.tensor(weights, dtype=y.dtype, device=y.device)
    if group_multipliers is not None and not isinstance(group_multipliers, Mapping):
        raise TypeError(f"group_multipliers must be a dict {{group id: multiplier}}, got {type(group_multipliers).__name__}")
    for gid, mult in (group_multipliers or {}).items():
        mult = check_number(f"group_multipliers[{gid!r}]", mult, 0, hint="; a multiplier scales the group's loss weight")
        mask = torch.as_tensor(groups == gid, device=y.device)
        if not mask.any():
            raise ValueError(f"group_multipliers key {gid} not found in target_groups")
        weights[mask] *= mult
    return weights, groups


def _integer_group_ids(groups: np.ndarray) -> np.ndarray:
    """``groups`` as int64; TypeError unless integer-valued (NaN, 1.5 or strings would merge or split groups silently)."""
    if groups.dtype.kind in "iub":
        return groups.astype(np.int64)
    if groups.dtype.kind == "f" and np.isfinite(groups).all() and (groups == np.round(groups)).all():
        return groups.astype(np.int64)
    raise TypeError(
        f"target_groups must hold integer group ids (one per target), got dtype {groups.dtype} "
        "with non-integer values; map labels to ints first, e.g. np.unique(labels, return_inverse=True)[1]"
    )


def fit_targets(y: Tensor, loss_type: str, relative_floor: float | None, weights: Tensor) -> FitTargets:
    """The engine's targets: y (Q,) fp64, the loss weights and ``1 / d`` (see the module docstring)."""
    if loss_type == "relative":
        zero = torch.nonzero(y == -1).flatten()
        if zero.numel():
            raise ValueError(f"loss_type='relative' divides each residual by y + 1, which is 0 for y[{int(zero[0])}] = -1 (the "
                             f"target at index {int(zero[0])}, counting from 0); use loss_type='capped_relative' with a "
                             "relative_floor, or 'mse'")
        inv_denom = 1 / (y + 1)
    elif loss_type == "capped_relative":
        inv_denom = 1 / y.abs().clamp_min(relative_floor)
    else:
        inv_denom = torch.ones_like(y)
    return FitTargets(y, weights, inv_denom)
