"""One unsharded model from the shards of a sharded fit, for the outputs of rank 0."""

from __future__ import annotations

import torch

from .group import ShardGroup


def gather_model(model, group: ShardGroup):
    """An unsharded copy of ``model`` (a shard of a SparseCalibrationWeights fit) on every rank: the shards'
    parameters, initial weights and kept records joined in rank order, with the fit's history.

    The keep mask is None when no shard keeps a record (as a single-process fit's), else the shards' masks
    joined, a shard without one (it keeps none of its records) counted as all False."""
    config = {**model.config(), "n_features": model.n_features_total, "household_offset": 0}
    whole = type(model)(**config, device=model.log_weight.device)
    with torch.no_grad():
        for name in ("log_weight", "log_alpha", "initial_weights"):
            getattr(whole, name).copy_(group.concatenate(getattr(model, name).detach()))
        whole.rng_state.copy_(model.rng_state)
    if any(group.objects(model._keep_mask is not None)):  # the same collectives on every rank
        kept = model._keep_mask if model._keep_mask is not None else torch.zeros_like(model.log_weight, dtype=torch.bool)
        whole._keep_mask = group.concatenate(kept)
    whole.history, whole.epochs_trained, whole.lambda_l0_ = list(model.history), model.epochs_trained, model.lambda_l0_
    return whole
