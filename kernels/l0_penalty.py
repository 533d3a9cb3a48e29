"""Expected L0 norm of hard-concrete gates (Louizos et al. 2017, eq. 12) in Triton.

``penalty = sum_i p_i``, ``p_i = sigmoid(clamp(log_alpha_i, -20, 20) - beta * log(-gamma / zeta))``;
``d penalty / d log_alpha_i = p_i (1 - p_i)`` where ``|log_alpha_i| <= 20``, else 0.

The forward is deterministic without atomics: each program sums its block of
``BLOCK`` elements in fp64 (``p`` itself in fp32, or fp64 for fp64 inputs, as the
C++ kernel) into ``partials[pid]``, and torch adds the partials in fixed order.
``BLOCK`` and the warp count are fixed (not autotuned): an autotuner picking by
timing would change the summation order from run to run.

Bytes moved per element (fp32): forward 4 read (+ 8 per BLOCK elements of
partials); backward 4 read + 4 written (the upstream gradient is read on the
device, no host sync).  Both are memory-bound.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, check_gate_params, compute_dtype, elementwise_configs, new_nan_flag, raise_if_nan

# Fixed reduction block (elements per partial sum) and warps: see the module docstring.
PENALTY_BLOCK = 16384 if INTERPRET else 4096
PENALTY_WARPS = 8

# ----------------------------------------------------------------------------- kernels


@triton.jit
def active_prob(a, shift, COMPUTE: tl.constexpr):
    """P(gate != 0) = sigmoid(clamp(a, +-20) + shift), as 1 / (1 + exp(-x)) like the C++."""
    ac = tl.where(a < -20.0, -20.0, tl.where(a > 20.0, 20.0, a))
    x = ac + tl.full((), shift, COMPUTE)
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _penalty_partials_kernel(la_ptr, partial_ptr, nan_ptr, n, shift: tl.float64, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    has_nan = tl.max(((a != a) & mask).to(tl.int32), axis=0)
    if has_nan > 0:
        tl.atomic_max(nan_ptr, 1)
    p = tl.where(mask, active_prob(a, shift, COMPUTE), 0.0)
    tl.store(partial_ptr + pid, tl.sum(p.to(tl.float64), axis=0))


@triton.autotune(configs=elementwise_configs("BLOCK", (1024, 2048, 4096), 16384), key=["n"])
@triton.jit
def _penalty_backward_kernel(grad_ptr, la_ptr, out_ptr, n, shift: tl.float64, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    go = tl.load(grad_ptr).to(COMPUTE)
    p = active_prob(a, shift, COMPUTE)
    d = tl.where((a >= -20.0) & (a <= 20.0), go * p * (1.0 - p), 0.0)
    tl.store(out_ptr + i, d.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _shift(beta: float, gamma: float, zeta: float) -> float:
    return -beta * math.log(-gamma / zeta)


def l0_penalty(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """Scalar ``sum(P(gate != 0))`` in log_alpha's dtype.  log_alpha: (*) -> ()."""
    check_gate_params(beta, gamma, zeta)
    la = log_alpha.contiguous()
    n = la.numel()
    if n == 0:
        return torch.zeros((), dtype=la.dtype, device=la.device)
    n_blocks = triton.cdiv(n, PENALTY_BLOCK)
    partials = torch.empty(n_blocks, dtype=torch.float64, device=la.device)
    flag = new_nan_flag(la.device)
    _penalty_partials_kernel[(n_blocks,)](
        la, partials, flag, n, _shift(beta, gamma, zeta), COMPUTE=compute_dtype(la), BLOCK=PENALTY_BLOCK, num_warps=PENALTY_WARPS
    )
    raise_if_nan(flag, "l0_penalty")
    return partials.sum().to(la.dtype)


def l0_penalty_backward(grad_penalty: torch.Tensor, log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """``grad_penalty * p (1 - p)`` masked to ``|log_alpha| <= 20``.  grad_penalty: () -> (*)."""
    check_gate_params(beta, gamma, zeta)
    if grad_penalty.numel() != 1:
        raise RuntimeError(f"grad_penalty must hold one value, got {grad_penalty.numel()}")
    la = log_alpha.contiguous()
    grad = grad_penalty.reshape(1).to(la.device)
    out = torch.empty_like(la)
    n = la.numel()
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _penalty_backward_kernel[grid](grad, la, out, n, _shift(beta, gamma, zeta), COMPUTE=compute_dtype(la))
    return out
