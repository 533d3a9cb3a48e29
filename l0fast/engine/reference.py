"""The calibration fit as a plain PyTorch loop: the two-pass engine the fused ones are tested against.

Per epoch: ``calibration_objective`` (sampled gates, the gated sparse product
and both penalties, one fused backward) and ``torch.optim.Adam`` loaded from
and written back to :class:`AdamState`.  It also serves devices or builds
without a fused implementation (``L0FAST_BACKEND=reference``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import HouseholdMajorMatrix, calibration_objective, gated_sparse_product, l0_penalty
from ..ops.l0_penalty import active_prob
from ..rng import sample_gates
from .state import AdamState, FitOptions, FitTargets, next_lambda, raise_if_diverged


class ReferenceFit:
    """Same interface as the fused fits: ``run(epochs, finish) -> (epochs, 4)`` fp64 stats, ``lambda_l0``."""

    def __init__(self, matrix: HouseholdMajorMatrix, targets: FitTargets, log_weight: Tensor, log_alpha: Tensor,
                 rng_state: Tensor, adam: AdamState, options: FitOptions):
        self.adam, self._matrix, self._options = adam, matrix, options
        self._params, self._rng_state = (log_weight, log_alpha), rng_state
        dtype = log_weight.dtype
        self._y, self._loss_weight, self._inv_denom = (t.to(dtype) for t in (targets.y, targets.loss_weight, targets.inv_denom))
        self._lambda = torch.tensor(float(options.lambda_l0), dtype=torch.float64)

    def _optimizer(self) -> torch.optim.Adam:
        opt = self._options
        optimizer = torch.optim.Adam(self._params, lr=opt.lr, betas=opt.betas, eps=opt.eps)
        moments = ((self.adam.exp_avg_lw, self.adam.exp_avg_sq_lw), (self.adam.exp_avg_la, self.adam.exp_avg_sq_la))
        for param, (exp_avg, exp_avg_sq) in zip(self._params, moments):
            optimizer.state[param] = {"step": torch.tensor(float(self.adam.step)), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        return optimizer

    def _objective_with_options(self):
        """(y_pred, penalty, the L0 sum ``sum s_h p_h``) composed from the ops, with per-household lambda and kept gates."""
        opt, h = self._options, self._options.households
        log_weight, log_alpha = self._params
        kept = h.keep != 0
        gate = sample_gates(log_alpha, self._rng_state, *opt.gate_params) if opt.use_gates else torch.ones_like(log_weight)
        gate = torch.where(kept, torch.ones_like(gate), gate)
        e = log_weight.exp()
        y_pred = gated_sparse_product(self._matrix, e * gate)
        p = active_prob(log_alpha, *opt.gate_params)
        l0_sum = (h.lambda_scale * p).sum()  # a kept household's scale is 0
        penalty = float(self._lambda) * l0_sum + opt.lambda_l2 * e.square().sum()
        return y_pred, penalty, float(l0_sum.detach())

    def _frozen_state(self):
        """Copies of what a kept household must keep: log_alpha and its two moments."""
        kept = self._options.households.keep != 0
        return kept, self._params[1].detach()[kept].clone(), self.adam.exp_avg_la[kept].clone(), self.adam.exp_avg_sq_la[kept].clone()

    @torch.no_grad()
    def _apply_options(self, kept, log_alpha, exp_avg, exp_avg_sq) -> None:
        h = self._options.households
        log_weight, la = self._params
        log_weight.copy_(torch.minimum(torch.maximum(log_weight, h.log_weight_min), h.log_weight_max))
        la[kept], self.adam.exp_avg_la[kept], self.adam.exp_avg_sq_la[kept] = log_alpha, exp_avg, exp_avg_sq

    @property
    def lambda_l0(self) -> float:
        return float(self._lambda)

    def run(self, epochs: int, finish: bool) -> Tensor:  # noqa: ARG002 (no pending epoch to drop)
        opt = self._options
        log_weight, log_alpha = self._params
        optimizer = self._optimizer()  # shares the moment tensors: they are updated in place
        stats = torch.zeros(epochs, 4, dtype=torch.float64)
        gates = "sample" if opt.use_gates else "none"
        for epoch in range(epochs):
            raise_if_diverged(stats[:epoch], self._params, self.adam.step)  # before NaN reaches the gate ops' own check
            with torch.no_grad():
                stats[epoch, 2] = float(log_weight.exp().square().sum())
                stats[epoch, 3] = self._lambda
            if opt.households is None:
                with torch.no_grad():
                    stats[epoch, 1] = float(l0_penalty(log_alpha, *opt.gate_params))
                y_pred, penalty = calibration_objective(self._matrix, log_weight, log_alpha, self._rng_state, opt.gate_params,
                                                        float(self._lambda), opt.lambda_l2, gates)
            else:
                y_pred, penalty, stats[epoch, 1] = self._objective_with_options()
            data_loss = ((self._y - y_pred) * self._inv_denom).square().mul(self._loss_weight).sum()
            optimizer.zero_grad()
            (data_loss + penalty).backward()
            frozen = None if opt.households is None else self._frozen_state()
            optimizer.step()
            if frozen is not None:
                self._apply_options(*frozen)
            stats[epoch, 0] = float(data_loss.detach())
            self._lambda = next_lambda(self._lambda, stats[epoch, 1], opt)
            self.adam.step += 1
        raise_if_diverged(stats, (*self._params, *self.adam.second_moments()), self.adam.step)
        return stats
