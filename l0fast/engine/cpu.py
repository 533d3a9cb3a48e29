"""The fused C++ fit loop (``csrc/calibration_fit.cpp``): whole epochs in one call, one pass over M per epoch."""

from __future__ import annotations

from torch import Tensor

from .._capability import _C
from ..ops import HouseholdMajorMatrix
from .state import AdamState, FitOptions, FitShard, FitTargets, raise_if_diverged


class CppFit:
    """Runs epochs of one fit on CPU tensors; the pending epoch's gates and target sums stay between calls."""

    def __init__(self, matrix: HouseholdMajorMatrix, targets: FitTargets, log_weight: Tensor, log_alpha: Tensor,
                 rng_state: Tensor, adam: AdamState, options: FitOptions, shard: FitShard | None = None):
        self.adam = adam
        self._exchange = None if shard is None else shard.exchange
        self._matrix = _C.FitMatrix(matrix.col_ptr, matrix.row_idx, matrix.values, matrix.num_rows)
        self._targets = _C.FitTargets(targets.y, targets.loss_weight, targets.inv_denom)
        state = _C.FitState()
        state.log_weight, state.log_alpha, state.rng_state = log_weight.data, log_alpha.data, rng_state
        for name, tensor in adam.moments().items():
            setattr(state, name, tensor)
        state.step = adam.step
        state.lambda_l0 = options.lambda_l0
        self._state = state
        config = _C.FitConfig()
        config.lr, (config.beta1, config.beta2), config.eps = options.lr, options.betas, options.eps
        config.lambda_l2 = options.lambda_l2
        config.target_count = -1 if options.target_count is None else options.target_count
        config.dual_step = options.dual_step
        if options.households is not None:
            for name, tensor in vars(options.households).items():
                setattr(config, name, tensor.contiguous())
        config.beta, config.gamma, config.zeta = options.gate_params
        config.use_gates = options.use_gates
        if shard is not None:
            config.household_offset, config.households_total = shard.offset, shard.total
        self._config = config

    def run(self, epochs: int, finish: bool) -> Tensor:
        """``epochs`` epochs; returns (epochs, 4) fp64 per-epoch (data loss, L0 sum, sum exp(log_weight)^2, lambda_l0)."""
        stats = _C.calibration_fit(self._matrix, self._targets, self._state, self._config, epochs, finish, self._exchange)
        self.adam.step = self._state.step
        if finish and epochs:  # each epoch checks the parameters it starts from: the last update's NaN shows only here
            raise_if_diverged(stats[:0], (self._state.log_weight, self._state.log_alpha, *self.adam.second_moments()),
                              self.adam.step, exchange=self._exchange)
        return stats

    @property
    def lambda_l0(self) -> float:
        """The multiplier the next epoch would use."""
        return self._state.lambda_l0
