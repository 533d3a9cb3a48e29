"""The Triton fit loop (``kernels/calibration_fit.py``): a fixed sequence of launches per epoch, no host sync.

Per epoch: the target pass (Q-length torch ops: residual, loss, ``grad_y``),
the household pass (one kernel: gather, chain rule, Adam, next gates and
weights) and the target-major product of the next weights; in a sharded
fit the target sums and the penalty sums then go through the shard's
exchange (device tensors: NCCL on GPUs).  Statistics stay on the device
until :meth:`TritonFit.run` returns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels.calibration_fit import household_pass, tiles
from ..kernels.gated_spmv import layout, target_sums
from ..ops import HouseholdMajorMatrix
from ..ops.hard_concrete import advance_rng_state
from .state import AdamState, FitOptions, FitShard, FitTargets, next_lambda, raise_if_diverged


class TritonFit:
    """Runs epochs of one fit on CUDA tensors (or CPU ones in the Triton interpreter)."""

    def __init__(self, matrix: HouseholdMajorMatrix, targets: FitTargets, log_weight: Tensor, log_alpha: Tensor,
                 rng_state: Tensor, adam: AdamState, options: FitOptions, shard: FitShard | None = None):
        self.adam, self._options, self._shard = adam, options, shard
        device, dtype = log_weight.device, log_weight.dtype
        self._matrix = (matrix.col_ptr.contiguous(), matrix.row_idx.contiguous(), matrix.values.contiguous(), matrix.num_rows)
        self._params = (log_weight.data, log_alpha.data)
        self._rng_state = rng_state
        self._noise_shift = torch.tensor([0, 0 if shard is None else shard.offset], dtype=torch.int64, device=device)
        self._y, self._loss_weight, self._inv_denom = (t.to(device, torch.float64) for t in (targets.y, targets.loss_weight, targets.inv_denom))
        self._gate = torch.empty_like(log_weight.data)
        self._w_next = torch.empty_like(log_weight.data)
        self._yhat = torch.empty(matrix.num_rows, dtype=torch.float64, device=device)
        self._sums = torch.empty(2 * tiles(matrix.col_ptr, matrix.values.numel()), dtype=torch.float64, device=device)
        self._dtype, self._primed = dtype, False
        self._lambda = torch.tensor([float(options.lambda_l0)], dtype=torch.float64, device=device)

    @property
    def lambda_l0(self) -> float:
        """The multiplier the next epoch would use (a host read)."""
        return float(self._lambda)

    def _advance_rng(self) -> None:
        if self._options.use_gates:
            advance_rng_state(self._rng_state, self._params[0].numel() if self._shard is None else self._shard.total)

    def _noise_state(self) -> Tensor:
        """[seed, offset] of this shard's first household."""
        return self._rng_state if self._shard is None else self._rng_state + self._noise_shift

    def _exchange(self, sums: Tensor, drew: bool) -> Tensor:
        """(sum p, sum e^2) over all shards, and the target sums of the next gates (if ``drew``) likewise."""
        if self._shard is None:
            return sums
        totals = torch.cat([self._yhat if drew else torch.zeros_like(self._yhat), sums, sums.new_zeros(1)])
        self._shard.exchange(totals)
        if drew:
            self._yhat.copy_(totals[:-3])
        return totals[-3:-1]

    def _target_sums(self) -> None:
        col_ptr, row_idx, values, num_rows = self._matrix
        if num_rows:
            target_sums(layout(*self._matrix), col_ptr, row_idx, values, self._w_next, self._yhat)

    def _adam_step(self) -> tuple:
        opt, step = self._options, self.adam.step
        beta1, beta2 = opt.betas
        return (1 - beta1, beta2, 1 - beta2, opt.lr / (1 - beta1**step), math.sqrt(1 - beta2**step), opt.eps)

    def run(self, epochs: int, finish: bool) -> Tensor:
        """``epochs`` epochs; returns (epochs, 4) fp64 per-epoch (data loss, L0 sum, sum exp(log_weight)^2, lambda_l0)."""
        stats = torch.zeros(epochs, 4, dtype=torch.float64, device=self._y.device)
        if epochs and not self._primed:
            household_pass(self._matrix, self._yhat, self._params, tuple(self.adam.moments().values()), self._gate,
                           self._w_next, self._noise_state(), self._sums, self._options.gate_params, self._lambda, 0.0, None,
                           sample_next=True, use_gates=self._options.use_gates, households=self._options.households)
            self._advance_rng()
            self._target_sums()
            self._exchange(torch.zeros(2, dtype=torch.float64, device=self._yhat.device), True)
        for epoch in range(epochs):
            residual = (self._y - self._yhat) * self._inv_denom
            stats[epoch, 0] = (self._loss_weight * residual.square()).sum()
            stats[epoch, 3] = self._lambda[0]
            grad_y = (-2 * self._loss_weight * residual * self._inv_denom).to(self._dtype)
            sample_next = not (finish and epoch == epochs - 1)
            self.adam.step += 1
            household_pass(self._matrix, grad_y, self._params, tuple(self.adam.moments().values()), self._gate,
                           self._w_next, self._noise_state(), self._sums, self._options.gate_params,
                           self._lambda, self._options.lambda_l2, self._adam_step(),
                           sample_next=sample_next, use_gates=self._options.use_gates, households=self._options.households)
            if sample_next:
                self._advance_rng()
                self._target_sums()
            stats[epoch, 1:3] = self._exchange(self._sums.view(-1, 2).sum(0), sample_next)
            self._lambda = next_lambda(self._lambda, stats[epoch, 1], self._options)
        if epochs:
            self._primed = not finish
        stats = stats.cpu()  # the one host read of the call
        raise_if_diverged(stats, (*self._params, *self.adam.second_moments()), self.adam.step,
                          exchange=None if self._shard is None else self._shard.exchange)
        return stats
