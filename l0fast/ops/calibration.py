"""The survey-calibration objective with a fused backward.

Forward, for ``M: (Q, N)`` household-major (see :mod:`l0fast.ops.gated_spmv`):

- ``y = M @ (exp(log_weight) * g)`` with ``g`` the sampled (train) or mean
  (eval) hard-concrete gate of ``log_alpha``, or ``g = 1`` without gates;
- ``penalty = lambda_l0 * sum(p) + lambda_l2 * sum(exp(log_weight)^2)`` with
  ``p = sigmoid(clamp(log_alpha, -20, 20) - beta * log(-gamma / zeta))``.

Backward is one pass of ``calibration_backward`` over ``M^T``: the product's
gradient, the chain rule through ``exp`` and the gate (from the saved gate,
no noise regenerated) and both penalty gradients, for every household at once.
The penalty's upstream gradient stays a tensor (read on the device: no host
sync, so the step can be captured in a CUDA graph), and terms whose lambda is
0 are skipped, forward and backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .gated_spmv import HouseholdMajorMatrix, check_vector, household_entries, example_matrix
from .hard_concrete import (
    GATE_PARAMS,
    LOG_ALPHA_BOUND,
    advance_rng_state,
    check_gate_params,
    check_number,
    check_rng_state,
    hard_concrete_backward_ref,
)
from .l0_penalty import l0_penalty_backward_ref
from .registry import define_op, empty_contiguous_like

GATE_MODES = ("sample", "mean", "none")


def calibration_backward_ref(
    col_ptr: Tensor,
    row_idx: Tensor,
    values: Tensor,
    grad_y: Tensor,
    grad_penalty: Tensor,
    log_weight: Tensor,
    log_alpha: Tensor,
    gate: Optional[Tensor],
    beta: float,
    gamma: float,
    zeta: float,
    lambda_l0: float,
    lambda_l2: float,
) -> tuple[Tensor, Tensor]:
    """(dL/dlog_weight, dL/dlog_alpha), each (N,), for upstream grad_y (Q,) and grad_penalty () of the penalty."""
    n = col_ptr.numel() - 1
    h, rows, vals = household_entries(col_ptr, row_idx, values)
    gw = torch.zeros(n, dtype=torch.float64, device=values.device)
    gw.index_add_(0, h, vals.double() * grad_y.double()[rows])
    e = log_weight.double().exp()
    g = torch.ones_like(e) if gate is None else gate.double()
    grad_la = torch.zeros_like(e) if gate is None else hard_concrete_backward_ref(gw * e, gate.double(), log_alpha.double(), beta, gamma, zeta)
    grad_lw = gw * e * g
    upstream = grad_penalty.to(device=values.device, dtype=torch.float64).reshape(())
    if lambda_l0:
        grad_la = grad_la + l0_penalty_backward_ref(lambda_l0 * upstream, log_alpha.double(), beta, gamma, zeta)
    if lambda_l2:
        grad_lw = grad_lw + 2 * lambda_l2 * upstream * e * e
    return grad_lw.to(values.dtype), grad_la.to(values.dtype)


def _backward_fake(col_ptr, row_idx, values, grad_y, grad_penalty, log_weight, log_alpha, gate, *_params):
    torch._check(log_weight.shape == (col_ptr.shape[0] - 1,), lambda: "log_weight must have shape (N,)")
    torch._check(log_alpha.shape == log_weight.shape, lambda: "log_alpha must have log_weight's shape")
    torch._check(grad_penalty.numel() == 1, lambda: "grad_penalty must hold one value")
    return empty_contiguous_like(log_weight), empty_contiguous_like(log_alpha)


def _backward_inputs(numel, dtype, generator):
    col_ptr, row_idx, values, q = example_matrix(numel, dtype, generator)
    log_weight = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)
    log_alpha = (3 * torch.randn(numel, generator=generator, dtype=torch.float64)).to(dtype)
    log_alpha[: min(numel, 2)] = LOG_ALPHA_BOUND + 5
    gate = torch.rand(numel, generator=generator, dtype=torch.float64)
    gate[::5], gate[1::7] = 0.0, 1.0
    grad_y = torch.randn(q, generator=generator, dtype=torch.float64).to(dtype)
    grad_penalty = torch.tensor(0.75, dtype=dtype)
    return (col_ptr, row_idx, values, grad_y, grad_penalty, log_weight, log_alpha, gate.to(dtype), *GATE_PARAMS, 1e-2, 1e-3)


backward_op = define_op(calibration_backward_ref, _backward_fake, _backward_inputs, cpp_name="calibration_backward")


class CalibrationObjective(torch.autograd.Function):
    """(y, penalty) of the calibration objective; see the module docstring."""

    @staticmethod
    def forward(log_weight, log_alpha, rng_state, col_ptr, row_idx, values, num_rows, params, mode):
        beta, gamma, zeta, lambda_l0, lambda_l2 = params
        ops = torch.ops.l0fast
        if mode == "sample":
            gate = ops.hard_concrete_sample(log_alpha, rng_state, beta, gamma, zeta)
        elif mode == "mean":
            gate = ops.hard_concrete_mean(log_alpha, beta, gamma, zeta)
        else:
            gate = None
        weight = log_weight.exp()
        y = ops.gated_spmv(col_ptr, row_idx, values, weight if gate is None else weight * gate, num_rows)
        penalty = lambda_l0 * ops.l0_penalty(log_alpha, beta, gamma, zeta) if lambda_l0 else log_alpha.new_zeros(())
        if lambda_l2:
            penalty = penalty + lambda_l2 * weight.square().sum()
        return y, penalty, gate

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_weight, log_alpha, _state, col_ptr, row_idx, values, _q, params, _mode = inputs
        ctx.params = params
        ctx.save_for_backward(col_ptr, row_idx, values, log_weight, log_alpha, output[2])
        if output[2] is not None:
            ctx.mark_non_differentiable(output[2])

    @staticmethod
    @once_differentiable  # a second derivative raises instead of treating this backward as constant
    def backward(ctx, grad_y, grad_penalty, _grad_gate):
        col_ptr, row_idx, values, log_weight, log_alpha, gate = ctx.saved_tensors
        beta, gamma, zeta, lambda_l0, lambda_l2 = ctx.params
        grad_lw, grad_la = torch.ops.l0fast.calibration_backward(
            col_ptr, row_idx, values, grad_y.contiguous(), grad_penalty.reshape(()), log_weight, log_alpha, gate,
            beta, gamma, zeta, lambda_l0, lambda_l2,
        )
        return grad_lw, grad_la, None, None, None, None, None, None, None


def calibration_objective(
    matrix: HouseholdMajorMatrix,
    log_weight: Tensor,
    log_alpha: Tensor,
    rng_state: Tensor,
    params: tuple[float, float, float],
    lambda_l0: float = 0.0,
    lambda_l2: float = 0.0,
    gates: str = "sample",
) -> tuple[Tensor, Tensor]:
    """Differentiable ``(M @ (exp(log_weight) * gate), penalty)``.  (N,) params -> ((Q,), ()).

    ``params`` is ``(beta, gamma, zeta)``; ``gates`` is ``"sample"`` (advances
    ``rng_state`` by N), ``"mean"`` or ``"none"``.
    """
    if gates not in GATE_MODES:
        raise ValueError(f"gates must be one of {GATE_MODES}, got {gates!r}")
    if len(params) != 3:
        raise ValueError(f"params must be (beta, gamma, zeta), got {params!r}")
    check_gate_params(*params)
    for name, value in (("lambda_l0", lambda_l0), ("lambda_l2", lambda_l2)):
        check_number(name, value, 0)
    for name, t in (("log_weight", log_weight), ("log_alpha", log_alpha)):
        check_vector(t, name, matrix.shape[1], matrix.values.dtype)
    check_rng_state(rng_state)
    full = tuple(float(v) for v in (*params, lambda_l0, lambda_l2))
    y, penalty, _gate = CalibrationObjective.apply(
        log_weight, log_alpha, rng_state, matrix.col_ptr, matrix.row_idx, matrix.values, matrix.num_rows, full, gates
    )
    if gates == "sample":
        advance_rng_state(rng_state, log_alpha.numel())
    return y, penalty
