"""The training step of a gated module in Triton: gates, the gated weight and the L0 penalty, and one backward.

- forward: ``g`` by :func:`~l0fast.kernels.hard_concrete.hard_concrete_sample`'s kernel
  (the same math and noise), which also writes ``w * g`` when a weight is given,
  and the penalty by :func:`~l0fast.kernels.l0_penalty.l0_penalty`'s fixed-order
  reduction (a second, read-only pass over ``log_alpha``; its sum is then the
  penalty op's bit for bit);
- backward, :func:`~l0fast.kernels.hard_concrete.hard_concrete_backward`'s kernel with the
  weight and penalty terms on: ``dL/dlog_alpha = c * dg/dlog_alpha + dL/dpenalty * p (1 - p)``,
  ``c = dL/d(w g) * w`` (or ``dL/dg``), ``dL/dw = dL/d(w g) * g``; the upstream
  gradients are read on the device (no host sync), a broadcast one as a scalar.

Bytes moved per element (fp32, with a weight): forward 12 read (log_alpha
twice, the weight) and 8 written; backward 16 read and 8 written.
"""

from __future__ import annotations

import torch

from ._common import LAUNCH_OPTIONS, block_launch, check_gate_params, compute_dtype, launch_device, state_on
from ._nan import check_nan, nan_flag
from .hard_concrete import _backward_kernel, _check_log_alpha, _sample_kernel, broadcast_or_contiguous
from .l0_penalty import _shift, l0_penalty
from .philox import uniform_launch


def _check_weight(weight: torch.Tensor | None, la: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    if weight.numel() != la.numel() or weight.dtype != la.dtype:
        raise RuntimeError(f"weight must have log_alpha's number of elements and dtype, got {tuple(weight.shape)} {weight.dtype}")
    return weight.contiguous()


def hard_concrete_gated(
    log_alpha: torch.Tensor, rng_state: torch.Tensor, weight: torch.Tensor | None, beta: float, gamma: float, zeta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate like log_alpha, weight * gate like weight or (0,), penalty ()); rng_state: (2,) int64 on any device."""
    check_gate_params(beta, gamma, zeta)
    with launch_device(log_alpha=log_alpha, weight=weight):
        la = _check_log_alpha(log_alpha)
        w = _check_weight(weight, la)
        gate = torch.empty_like(la)
        gated = la.new_empty(0) if w is None else torch.empty_like(w)
        n = la.numel()
        if n:
            state = state_on(rng_state, la.device)
            grid, block_c, warps = uniform_launch(n)
            _sample_kernel[grid](
                la, state, gate if w is None else w, gate, gate if w is None else gated, nan_flag(la.device), n,
                beta, gamma, zeta, HAS_WEIGHT=w is not None, COMPUTE=compute_dtype(la), BLOCK_C=block_c,
                num_warps=warps, **LAUNCH_OPTIONS,
            )
            check_nan(la.device, "hard_concrete_gated")
        return gate, gated, l0_penalty(la, beta, gamma, zeta)


def hard_concrete_gated_backward(
    grad: torch.Tensor | None,
    grad_penalty: torch.Tensor | None,
    gate: torch.Tensor,
    log_alpha: torch.Tensor,
    weight: torch.Tensor | None,
    beta: float,
    gamma: float,
    zeta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dlog_alpha like log_alpha, dL/dweight like weight or (0,)); a missing gradient counts as zero."""
    check_gate_params(beta, gamma, zeta)
    if gate.numel() != log_alpha.numel() or (grad is not None and grad.numel() != log_alpha.numel()):
        raise RuntimeError(f"grad and gate must have log_alpha's number of elements, got {tuple(gate.shape)} and {tuple(log_alpha.shape)}")
    if grad_penalty is not None and grad_penalty.numel() != 1:
        raise RuntimeError(f"grad_penalty must hold one value, got {grad_penalty.numel()}")
    with launch_device(grad=grad, gate=gate, log_alpha=log_alpha, weight=weight):
        la = _check_log_alpha(log_alpha)
        w = _check_weight(weight, la)
        g = gate.to(la.dtype).contiguous()
        up, stride = (la, 0) if grad is None else broadcast_or_contiguous(grad.reshape(la.shape), la.dtype)
        penalty_grad = la if grad_penalty is None else grad_penalty.reshape(1).to(device=la.device, dtype=la.dtype)
        out = torch.empty_like(la)
        grad_w = la.new_empty(0) if w is None else torch.empty_like(w)
        n = la.numel()
        if n:
            grid, block, warps = block_launch(n)
            _backward_kernel[grid](
                up, stride, penalty_grad, g, la, la if w is None else w, out, out if w is None else grad_w, n,
                _shift(beta, gamma, zeta), beta, gamma, zeta, HAS_GRAD=grad is not None,
                HAS_PENALTY_GRAD=grad_penalty is not None, HAS_WEIGHT=w is not None, COMPUTE=compute_dtype(la),
                BLOCK=block, num_warps=warps, **LAUNCH_OPTIONS,
            )
    return out, grad_w
