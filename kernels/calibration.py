"""Fused backward of the survey-calibration objective (:mod:`l0fast.ops.calibration`) in Triton.

For each household ``h`` (M household-major, see :mod:`l0fast.kernels.gated_spmv`):

- ``gw_h = sum_{k in h} values_k * grad_y[row_k]``                      (segment sum)
- ``dL/dlog_weight_h = gw_h * e_h * g_h + 2 * lambda_l2 * gp * e_h^2``,  ``e_h = exp(log_weight_h)``
- ``dL/dlog_alpha_h  = gw_h * e_h * dg_h + lambda_l0 * gp * p_h (1 - p_h) [|log_alpha_h| <= 20]``

with ``p_h = sigmoid(clamp(log_alpha_h, +-20) - beta * log(-gamma / zeta))`` and
``dg_h`` from the saved gate as in ``hard_concrete_backward`` (``g = 1, dg = 0``
without gates), ``gp`` the upstream gradient of the penalty, read on the
device (no host sync; the penalty terms are skipped when their lambda is 0).
One program gathers a block of households (a
``(BLOCK_S, BLOCK_E)`` tile, fixed order: deterministic) and applies the chain
rule while ``gw`` is in registers: one pass over ``M^T`` per epoch.

Bytes moved (fp32): per non-zero 4 (row index) + 4 (value) read; per household
8 (col_ptr) + 4 (log_weight) + 4 (log_alpha) + 4 (gate) read and 8 written;
``grad_y`` (Q values) stays in L2.  Memory-bound: ~10^8 non-zeros and 5 x 10^6
households move ~0.94 GB, ~0.3 ms at 3.35 TB/s (H100), ~3 ms at 320 GB/s (T4).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import LAUNCH_OPTIONS, check_gate_params, compute_dtype, launch_device
from ._math import exp
from .gated_spmv import SPARSE_WARPS, TILE, household_block, layout, segment_sums
from .hard_concrete import through_gate
from .l0_penalty import active_prob, through_penalty

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _calibration_backward_kernel(
    col_ptr, row_ptr, val_ptr, grad_y_ptr, grad_penalty_ptr, lw_ptr, la_ptr, gate_ptr, grad_lw_ptr, grad_la_ptr, n,
    beta: tl.float64, gamma: tl.float64, zeta: tl.float64, shift: tl.float64,
    lambda_l0: tl.float64, lambda_l2: tl.float64,
    HAS_GATE: tl.constexpr, HAS_L0: tl.constexpr, HAS_L2: tl.constexpr, ACC: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):
    h = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = h < n
    gw = segment_sums(col_ptr, row_ptr, val_ptr, grad_y_ptr, h, mask, True, ACC, BLOCK_S, BLOCK_E)
    gw = gw.to(grad_lw_ptr.dtype.element_ty).to(COMPUTE)  # the C++ stores gw in the output first
    a = tl.load(la_ptr + h, mask=mask, other=0.0).to(COMPUTE)
    e = exp(tl.load(lw_ptr + h, mask=mask, other=0.0).to(COMPUTE))
    if HAS_GATE:
        g = tl.load(gate_ptr + h, mask=mask, other=0.0).to(COMPUTE)
        grad_la = through_gate(gw * e, g, a, beta, gamma, zeta, COMPUTE)
    else:
        g = tl.full([BLOCK_S], 1.0, COMPUTE)
        grad_la = tl.zeros([BLOCK_S], COMPUTE)
    grad_lw = gw * e * g
    upstream = tl.load(grad_penalty_ptr).to(tl.float64)
    if HAS_L0:  # scales rounded from fp64 products, as the C++ receives them
        grad_la += through_penalty((lambda_l0 * upstream).to(COMPUTE), active_prob(a, shift, COMPUTE), a)
    if HAS_L2:
        grad_lw += (2.0 * (lambda_l2 * upstream)).to(COMPUTE) * e * e
    tl.store(grad_la_ptr + h, grad_la.to(grad_la_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_lw_ptr + h, grad_lw.to(grad_lw_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def calibration_backward(
    col_ptr: torch.Tensor,
    row_idx: torch.Tensor,
    values: torch.Tensor,
    grad_y: torch.Tensor,
    grad_penalty: torch.Tensor,
    log_weight: torch.Tensor,
    log_alpha: torch.Tensor,
    gate: Optional[torch.Tensor],
    beta: float,
    gamma: float,
    zeta: float,
    lambda_l0: float,
    lambda_l2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dlog_weight, dL/dlog_alpha), each (N,) in values' dtype, for grad_y: (Q,), grad_penalty: () on any device."""
    check_gate_params(beta, gamma, zeta)
    if grad_penalty.numel() != 1:
        raise RuntimeError(f"grad_penalty must hold one value, got {grad_penalty.numel()}")
    tensors = dict(col_ptr=col_ptr, row_idx=row_idx, values=values, grad_y=grad_y, log_weight=log_weight, log_alpha=log_alpha)
    with launch_device(**tensors, gate=gate):
        layout(col_ptr, row_idx, values, grad_y.numel())
        n = col_ptr.numel() - 1
        for name, t in (("log_weight", log_weight), ("log_alpha", log_alpha), ("gate", gate)):
            if t is not None and (t.shape != (n,) or t.dtype != values.dtype):
                raise RuntimeError(f"{name} must have shape ({n},) and dtype {values.dtype}, got {t.dtype} {tuple(t.shape)}")
        if grad_y.dim() != 1:
            raise RuntimeError(f"grad_y must be 1-D, got shape {tuple(grad_y.shape)}")
        lw, la = log_weight.contiguous(), log_alpha.contiguous()
        grad_lw, grad_la = torch.empty_like(lw), torch.empty_like(la)
        if n == 0:
            return grad_lw, grad_la
        block_e = household_block(col_ptr, values.numel())
        block_s = max(1, TILE // block_e)
        _calibration_backward_kernel[(triton.cdiv(n, block_s),)](
            col_ptr.contiguous(), row_idx.contiguous(), values.contiguous(), grad_y.to(values.dtype).contiguous(),
            grad_penalty.reshape(1).to(lw.device), lw, la, lw if gate is None else gate.contiguous(), grad_lw, grad_la, n,
            beta, gamma, zeta, -beta * math.log(-gamma / zeta), lambda_l0, lambda_l2,
            HAS_GATE=gate is not None, HAS_L0=lambda_l0 != 0, HAS_L2=lambda_l2 != 0,
            ACC=tl.float64 if values.dtype == torch.float64 else tl.float32, COMPUTE=compute_dtype(values),
            BLOCK_S=block_s, BLOCK_E=block_e, num_warps=SPARSE_WARPS, **LAUNCH_OPTIONS,
        )
        return grad_lw, grad_la
