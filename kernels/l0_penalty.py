"""Expected L0 norm of hard-concrete gates (Louizos et al. 2017, eq. 12) in Triton.

``penalty = sum_i p_i``, ``p_i = sigmoid(clamp(log_alpha_i, -20, 20) - beta * log(-gamma / zeta))``;
``d penalty / d log_alpha_i = p_i (1 - p_i)`` where ``|log_alpha_i| <= 20``, else 0.

The forward is deterministic without atomics, in an order fixed by the size
alone: each program owns ``PENALTY_LANES * PENALTY_ROUNDS`` consecutive
elements; lane ``j`` adds ``p`` (fp32, or fp64 for fp64 inputs, as the C++
kernel) of elements ``j, j + LANES, j + 2 LANES, ...`` in fp64, one round at a
time; the lane totals are added as a pairwise tree
(:func:`~l0fast.kernels._math.fixed_order_sum`) into ``partials[pid]``, and
torch adds the partials.  ``tl.sum`` would not do: its order follows the
vector width, which the compiler picks from the pointer's alignment.

Bytes moved per element (fp32): forward 4 read (+ 8 per program of
partials); backward 4 read + 4 written (the upstream gradient is read on the
device, no host sync).  Both are memory-bound.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, LAUNCH_OPTIONS, block_launch, check_gate_params, compute_dtype, launch_device
from ._math import div_rn, exp, fixed_order_sum
from ._nan import check_nan, flag_nan, nan_flag

# Fixed reduction shape (part of the summation order) and warps: see the module docstring.
PENALTY_LANES, PENALTY_ROUNDS = (2048, 8) if INTERPRET else (1024, 4)
PENALTY_WARPS = 8

# ----------------------------------------------------------------------------- kernels


@triton.jit
def active_prob(a, shift, COMPUTE: tl.constexpr):
    """P(gate != 0) = sigmoid(clamp(a, +-20) + shift), as 1 / (1 + exp(-x)) like the C++."""
    ac = tl.where(a < -20.0, -20.0, tl.where(a > 20.0, 20.0, a))
    x = ac + tl.full((), shift, COMPUTE)
    one = tl.full((), 1.0, COMPUTE)
    return div_rn(one, one + exp(-x))


@triton.jit
def through_penalty(c, p, a):
    """``c * dp/da`` with ``p = active_prob(a)``: ``c p (1 - p)`` where ``|a| <= 20``, exactly 0 elsewhere, whatever
    ``c`` (NaN and inf too: a select, not a product with 0), as the C++ kernels and torch's clamp give."""
    return tl.where((a >= -20.0) & (a <= 20.0), c * (p * (1.0 - p)), 0.0)


@triton.jit
def _penalty_partials_kernel(
    la_ptr, partial_ptr, nan_ptr, n, shift: tl.float64,
    COMPUTE: tl.constexpr, LANES: tl.constexpr, ROUNDS: tl.constexpr,
):
    base = tl.program_id(0).to(tl.int64) * (LANES * ROUNDS)
    lanes = tl.zeros([LANES], tl.float64)
    for r in range(ROUNDS):
        i = base + r * LANES + tl.arange(0, LANES)
        mask = i < n
        a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
        flag_nan(a, mask, nan_ptr)
        lanes += tl.where(mask, active_prob(a, shift, COMPUTE), 0.0).to(tl.float64)
    tl.store(partial_ptr + tl.program_id(0), fixed_order_sum(lanes, LANES))


@triton.jit
def _penalty_backward_kernel(grad_ptr, la_ptr, out_ptr, n, shift: tl.float64, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    go = tl.load(grad_ptr).to(COMPUTE)
    p = active_prob(a, shift, COMPUTE)
    tl.store(out_ptr + i, through_penalty(go, p, a).to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _shift(beta: float, gamma: float, zeta: float) -> float:
    return -beta * math.log(-gamma / zeta)


def l0_penalty(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """Scalar ``sum(P(gate != 0))`` in log_alpha's dtype.  log_alpha: (*) -> ()."""
    check_gate_params(beta, gamma, zeta)
    with launch_device(log_alpha=log_alpha):
        la = log_alpha.contiguous()
        n = la.numel()
        if n == 0:
            return torch.zeros((), dtype=la.dtype, device=la.device)
        n_blocks = triton.cdiv(n, PENALTY_LANES * PENALTY_ROUNDS)
        partials = torch.empty(n_blocks, dtype=torch.float64, device=la.device)
        _penalty_partials_kernel[(n_blocks,)](
            la, partials, nan_flag(la.device), n, _shift(beta, gamma, zeta), COMPUTE=compute_dtype(la),
            LANES=PENALTY_LANES, ROUNDS=PENALTY_ROUNDS, num_warps=PENALTY_WARPS, **LAUNCH_OPTIONS,
        )
        check_nan(la.device, "l0_penalty")
        return partials.sum().to(la.dtype)


def l0_penalty_backward(grad_penalty: torch.Tensor, log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """``grad_penalty * p (1 - p)`` masked to ``|log_alpha| <= 20``.  grad_penalty: () on any device -> (*)."""
    check_gate_params(beta, gamma, zeta)
    if grad_penalty.numel() != 1:
        raise RuntimeError(f"grad_penalty must hold one value, got {grad_penalty.numel()}")
    with launch_device(log_alpha=log_alpha):
        la = log_alpha.contiguous()
        grad = grad_penalty.reshape(1).to(la.device)
        out = torch.empty_like(la)
        n = la.numel()
        if n:
            grid, block, warps = block_launch(n)
            _penalty_backward_kernel[grid](
                grad, la, out, n, _shift(beta, gamma, zeta), COMPUTE=compute_dtype(la), BLOCK=block, num_warps=warps,
                **LAUNCH_OPTIONS,
            )
    return out
