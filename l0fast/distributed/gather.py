"""One unsharded model from the shards of a sharded fit, for the outputs of rank 0."""

from __future__ import annotations

import torch

from ..engine import AdamState
from .group import ShardGroup


def gather_model(model, group):
    """An unsharded copy of ``model`` (a shard of a SparseCalibrationWeights fit) on every rank of ``group`` (a
    :class:`ShardGroup`, or the process group of the fit): the shards' parameters, initial weights, kept
    records and Adam's moments joined in rank order, in the model's dtype, with the fit's history, so
    ``fit(reset_optimizer=False)`` on it goes on as the sharded fit would.

    The keep mask is None when no shard keeps a record (as a single-process fit's), else the shards' masks
    joined, a shard without one (it keeps none of its records) counted as all False."""
    group = group if isinstance(group, ShardGroup) else ShardGroup(group)
    if group.size > 1 and not model.is_shard:
        raise ValueError(f"model holds all {model.n_features_total} households, not a shard of them: there is nothing to "
                         "gather (gather the shard models of a sharded fit, household_offset= and n_features_total= set)")
    group.check_blocks(model.household_offset, model.n_features, model.n_features_total)
    config = {**model.config(), "n_features": model.n_features_total, "household_offset": 0}
    # shards of one fit: settings, dtype, noise position and epochs alike (a mix would join into no model)
    group.check_same({"settings": config, "dtype": str(model.log_weight.dtype), "noise position": model.rng_state.tolist(),
                      "epochs_trained": model.epochs_trained}, "the model to gather:")
    whole = type(model)(**config, device=model.log_weight.device).to(model.log_weight.dtype)
    with torch.no_grad():
        for name in ("log_weight", "log_alpha", "initial_weights"):
            getattr(whole, name).copy_(group.concatenate(getattr(model, name).detach()))
        whole.rng_state.copy_(model.rng_state)
    adam = model.optimizer_state
    # which ranks hold a keep mask and Adam's state, in one exchange: the same collectives then run on every rank
    keeps, held = zip(*group.objects((model._keep_mask is not None, adam is not None)))
    if any(keeps):
        kept = model._keep_mask if model._keep_mask is not None else torch.zeros_like(model.log_weight, dtype=torch.bool)
        whole._keep_mask = group.concatenate(kept)
    if any(held) and not all(held):  # every rank holds one after a sharded fit, none before it
        raise ValueError(f"the ranks' shards differ in holding Adam's state ({list(held)}): gather the shards of one sharded fit")
    if adam is not None:
        whole.optimizer_state = AdamState(adam.step, **{k: group.concatenate(v) for k, v in adam.moments().items()})
    whole.history, whole.epochs_trained, whole.lambda_l0_ = list(model.history), model.epochs_trained, model.lambda_l0_
    return whole
