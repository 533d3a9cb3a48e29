"""Expected L0 norm of hard-concrete gates (Louizos et al. 2017, eq. 12).

``penalty = sum_i sigmoid(clamp(log_alpha_i, -20, 20) - beta * log(-gamma / zeta))``
and ``d penalty / d log_alpha_i = p_i (1 - p_i)`` where ``|log_alpha_i| <= 20``.
The C++ kernel sums in fp64 over fixed blocks, independent of thread count.
Bytes per element (fp32): forward 4 read; backward 4 read + 4 written.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .hard_concrete import GATE_PARAMS, LOG_ALPHA_BOUND, check_gate_args, check_not_nan, example_log_alpha
from .registry import define_op, empty_contiguous_like, use_references


def active_prob(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    dtype = torch.float64 if log_alpha.dtype == torch.float64 else torch.float32
    a = log_alpha.to(dtype).clamp(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    return torch.sigmoid(a - beta * math.log(-gamma / zeta))


def l0_penalty_ref(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Scalar ``sum(P(gate != 0))`` in ``log_alpha``'s dtype.  log_alpha: (*) -> ()."""
    check_not_nan(log_alpha, "l0_penalty")
    return active_prob(log_alpha, beta, gamma, zeta).to(torch.float64).sum().to(log_alpha.dtype)


def l0_penalty_backward_ref(grad_penalty: Tensor, log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """``grad_penalty * p (1 - p)`` where ``|log_alpha| <= 20``, exactly 0 elsewhere (whatever grad_penalty, as
    torch's clamp gives).  grad_penalty: () -> (*)."""
    p = active_prob(log_alpha, beta, gamma, zeta)
    d = grad_penalty.to(p.dtype) * (p * (1 - p))
    return torch.where(log_alpha.abs() <= LOG_ALPHA_BOUND, d, torch.zeros_like(d)).to(log_alpha.dtype)


def _penalty_fake(log_alpha: Tensor, *_args) -> Tensor:
    return log_alpha.new_empty(())


def _penalty_backward_fake(grad_penalty: Tensor, log_alpha: Tensor, *_args) -> Tensor:
    return empty_contiguous_like(log_alpha)


def _penalty_inputs(numel, dtype, generator):
    return (example_log_alpha(numel, dtype, generator), *GATE_PARAMS)


def _penalty_backward_inputs(numel, dtype, generator):
    return (torch.randn((), generator=generator, dtype=torch.float64).to(dtype), *_penalty_inputs(numel, dtype, generator))


penalty_op = define_op(l0_penalty_ref, _penalty_fake, _penalty_inputs, cpp_name="l0_penalty")
penalty_backward_op = define_op(
    l0_penalty_backward_ref, _penalty_backward_fake, _penalty_backward_inputs, cpp_name="l0_penalty_backward"
)


class L0Penalty(torch.autograd.Function):
    @staticmethod
    def forward(log_alpha, beta, gamma, zeta):
        return torch.ops.l0fast.l0_penalty(log_alpha, beta, gamma, zeta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_alpha, *params = inputs
        ctx.params = tuple(params)
        ctx.save_for_backward(log_alpha)

    @staticmethod
    def backward(ctx, grad_penalty):
        (log_alpha,) = ctx.saved_tensors
        # create_graph=True: the reference, differentiable again (second derivatives exact)
        backward = l0_penalty_backward_ref if torch.is_grad_enabled() else torch.ops.l0fast.l0_penalty_backward
        return backward(grad_penalty.reshape(()), log_alpha, *ctx.params), None, None, None


def l0_penalty(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Differentiable expected number of non-zero gates.  log_alpha: (*) -> ()."""
    check_gate_args(log_alpha, beta, gamma, zeta)
    penalty = l0_penalty_ref if use_references() else L0Penalty.apply
    return penalty(log_alpha, float(beta), float(gamma), float(zeta))
