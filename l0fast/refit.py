"""Refit on a chosen support: the weights of the active records, with their gates frozen.

With ``S`` the records whose deterministic gate ``g_h`` is > 0, the refit
minimises the data term of ``fit`` (same loss options) plus
``lambda_l2 * sum_{h in S} w_h^2`` over ``w_h = exp(log_weight_h) * g_h``, with
Adam, no gate noise and no L0 penalty: an ungated fit of ``M[:, S]`` from
``log w``, written back as ``log_weight_h = log w_h - log g_h``.  The records
outside ``S`` and every ``log_alpha`` stay as they are, so the support and
the deterministic gates do not change.  ``weight_bounds=(lo, hi)``, as in
``fit`` (not carried over from it), keeps every ``w_h`` within
``[lo w0_h, hi w0_h]`` of its initial weight: ``log w`` is projected after
every Adam step (:mod:`l0fast.household_options`).  A shard of a sharded fit
(:mod:`l0fast.distributed`) refits its part of ``S`` with the others
(``process_group``, every argument the same on every process: a ValueError
on every rank otherwise), the target sums added over the shards each epoch.
"""

from __future__ import annotations

import torch

from .checkpoint import loss_fingerprint, restored_if_diverged
from .engine import AdamState, FitOptions, FitShard, HouseholdOptions, make_fit
from .fit_loop import FitRun, chunk_size, run_epochs, show_progress, showing
from .household_options import log_weight_bounds
from .rng import new_rng_state
from .sparse import _check_fit_args


def refit_support(model, M, y, *, epochs: int, lr: float, lambda_l2: float, loss_type: str, verbose: bool, verbose_freq: int,
                  target_groups, normalize_groups: bool, group_multipliers, relative_floor, progress, weight_bounds=None,
                  process_group=None) -> object:
    """``SparseCalibrationWeights.refit`` (see the module docstring); returns ``model``."""
    _check_fit_args(lr=lr, epochs=epochs, verbose=verbose, verbose_freq=verbose_freq, lambda_l2=lambda_l2)
    log_lo, log_hi = log_weight_bounds(model, weight_bounds)
    show_progress(progress)
    group = model._shard_group(process_group)
    op, y, groups, targets = model._loss_setup(M, y, loss_type, relative_floor, target_groups, normalize_groups, group_multipliers, verbose)
    if group is not None:  # as fit's: ranks that run other epochs or another loss would send the collectives out of step
        group.check_same({"epochs": epochs, "lr": lr, "lambda_l2": lambda_l2, "verbose_freq": verbose_freq,
                          **loss_fingerprint(loss_type, relative_floor, targets, weight_bounds)}, "the refit's argument")
    with torch.no_grad():
        gates = model._gates_in_use()
        support = torch.nonzero(gates > 0).flatten()
        log_gate = gates[support].log()
        log_w = (model.log_weight[support] + log_gate).contiguous().requires_grad_()  # the reference engine differentiates it
        frozen = torch.zeros_like(log_w)  # log_alpha of an ungated fit: never used, never moved
    adam = AdamState.zeros_like(log_w, frozen)
    options = FitOptions(lr=lr, lambda_l0=0.0, lambda_l2=lambda_l2, gate_params=(model.beta, model.gamma, model.zeta), use_gates=False,
                         households=None if weight_bounds is None else _bounds_on(support, log_lo, log_hi, log_w))
    shard = None if group is None else FitShard(0, support.numel(), group.exchange)  # ungated: no noise to place
    engine = make_fit(op.select_households(support), targets, log_w, frozen, new_rng_state(0, log_w.device), adam, options, shard)

    def write_back():
        with torch.no_grad():
            model.log_weight[support] = log_w - log_gate

    run = FitRun(epochs, chunk_size(verbose_freq, epochs), verbose, progress, group=group, phase="refit")
    with restored_if_diverged(model, "refit"), showing(run):
        run_epochs(model, engine, op, y, groups, options, run, after_chunk=write_back)
    return model


def _bounds_on(support, log_lo, log_hi, like) -> HouseholdOptions:
    """The engines' per-household options of the refit: ``log w`` of the records in ``support`` within
    ``[log_lo, log_hi]`` (n_features,); nothing kept, no L0 penalty (the refit has none)."""
    as_tensor = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
    index = support.cpu().numpy()
    return HouseholdOptions(torch.zeros_like(like), torch.zeros_like(like), as_tensor(log_lo[index]), as_tensor(log_hi[index]))
