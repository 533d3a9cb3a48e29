"""``fit``'s per-household options: records that must stay, weight bounds, a ``lambda_l0`` per record.

- ``keep``: bool (n_features,); those records are always active (gate held at
  1, ``log_alpha`` left still during the fit and raised to the clamp bound at
  its end, so a ``state_dict`` holds them too), outside the L0 penalty and
  outside ``target_count``'s count;
- ``weight_bounds=(lo, hi)``: every active weight ends within
  ``[lo * w0, hi * w0]`` of its initial (design) weight ``w0``: ``log_weight``
  is projected onto ``[log(lo w0), log(hi w0)]`` after every Adam step, and at
  the end an active record whose deterministic gate is below 1 is moved so
  that ``exp(log_weight) * gate`` is inside too (``refit`` takes them as well:
  :mod:`l0fast.refit`);
- ``lambda_l0`` an array: ``lambda_l0_h`` per record.

All three run inside the fit engines' household pass, C++ and Triton
(:class:`l0fast.engine.HouseholdOptions`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .checkpoint import digest
from .engine import HouseholdOptions
from .ops.hard_concrete import LOG_ALPHA_BOUND

NO_BOUND = 1e4  # |log_weight| beyond which a bound means "none" (exp(-1e4) is 0 in every dtype)


def _vector(value, name: str, n: int, dtype) -> np.ndarray:
    arr = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one entry per record, shape ({n},); got {arr.shape}")
    if dtype is bool:
        if arr.dtype != np.bool_:
            raise TypeError(f"{name} must be a bool array (True = always keep the record), got dtype {arr.dtype}")
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 everywhere")
    return arr


def household_options(model, lambda_l0, keep, weight_bounds) -> tuple[float, HouseholdOptions | None, Tensor | None]:
    """(the scalar lambda_l0 multiplier, the engine's options or None, the keep mask or None), validated."""
    n, like = model.n_features, model.log_weight
    per_record = np.ndim(lambda_l0) > 0
    if not per_record and keep is None and weight_bounds is None:
        return lambda_l0, None, None
    scale = _vector(lambda_l0, "lambda_l0", n, float) if per_record else np.ones(n)
    kept = np.zeros(n, dtype=bool) if keep is None else _vector(keep, "keep", n, bool)
    scale[kept] = 0.0
    lo, hi = log_weight_bounds(model, weight_bounds)
    as_tensor = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
    options = HouseholdOptions(as_tensor(scale), as_tensor(kept.astype(np.float64)), as_tensor(lo), as_tensor(hi))
    keep_mask = torch.as_tensor(kept, device=like.device) if kept.any() else None
    return (1.0 if per_record else float(lambda_l0)), options, keep_mask


def as_given(model, lambda_l0, keep, weight_bounds) -> dict:
    """The per-household options as passed to ``fit`` (validated by :func:`household_options`), for the record of
    a checkpointed fit: a resume whose options differ then names the one that does, where the fingerprint holds
    one digest of them all.  ``keep`` and an array ``lambda_l0`` by size and digest, ``weight_bounds`` as given;
    None where not given."""
    n = model.n_features
    kept = None if keep is None else _vector(keep, "keep", n, bool)
    scale = _vector(lambda_l0, "lambda_l0", n, float) if np.ndim(lambda_l0) > 0 else None
    return {"keep": None if kept is None else f"{int(kept.sum())} of {n} records, sha256 {digest(torch.as_tensor(kept))[:16]}",
            "weight_bounds": None if weight_bounds is None else tuple(map(float, weight_bounds)),
            "lambda_l0": None if scale is None else f"an array, sha256 {digest(torch.as_tensor(scale))[:16]}"}


def log_weight_bounds(model, weight_bounds) -> tuple[np.ndarray, np.ndarray]:
    """``(log(lo w0), log(hi w0))`` per record (n_features,) fp64 for ``weight_bounds=(lo, hi)``, validated,
    each moved inward by a few rounding errors of the model's dtype (8 eps max(1, |log b|), at most half the
    interval) so that the weights, computed in that dtype, end within ``[lo w0, hi w0]`` (in float32 they ended up
    to ~5e-7 outside); +-:data:`NO_BOUND` where there is none (``weight_bounds=None``, ``lo = 0``)."""
    n = model.n_features
    if weight_bounds is None:
        return np.full(n, -NO_BOUND), np.full(n, NO_BOUND)
    bounds = np.asarray(weight_bounds, dtype=np.float64) if np.ndim(weight_bounds) == 1 else None
    if bounds is None or bounds.shape != (2,) or not np.isfinite(bounds).all() or not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"weight_bounds must be (lo, hi) with 0 <= lo <= hi, finite (multiples of init_weights); got {weight_bounds!r}")
    w0 = model.initial_weights.double().cpu().numpy()
    eps = 8 * torch.finfo(model.log_weight.dtype).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = np.log(bounds[0] * w0), np.log(bounds[1] * w0)  # -inf for a 0
        half = np.where(np.isfinite(lo) & np.isfinite(hi), (hi - lo) / 2, np.inf)
        lo = np.where(np.isfinite(lo), lo + np.minimum(eps * np.maximum(1.0, np.abs(lo)), half), lo)
        hi = np.where(np.isfinite(hi), hi - np.minimum(eps * np.maximum(1.0, np.abs(hi)), half), hi)
    return np.maximum(lo, -NO_BOUND), np.clip(hi, -NO_BOUND, NO_BOUND)


@torch.no_grad()
def open_kept_gates(model, kept: Tensor) -> None:
    """Raise the ``kept`` records' log_alpha to the clamp bound, where their deterministic gate is 1 (as the model's
    keep mask holds it): the parameters alone (a ``state_dict``, l0's keys) then give the same weights.  Up to a
    temperature of ~8 with the default stretch; above, no log_alpha within the clamp gives a gate of 1."""
    la = model.log_alpha
    la[kept] = torch.clamp(la[kept], min=LOG_ALPHA_BOUND)


@torch.no_grad()
def project_active_weights(model, options: HouseholdOptions) -> None:
    """Move each active record with a deterministic gate below 1 so that its weight is within its bounds."""
    gates = model._gates_in_use()
    active = gates > 0
    log_gate = torch.where(active, gates, torch.ones_like(gates)).log()
    lw = model.log_weight
    moved = torch.minimum(torch.maximum(lw + log_gate, options.log_weight_min), options.log_weight_max) - log_gate
    lw.copy_(torch.where(active, moved, lw))
