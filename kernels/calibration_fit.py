"""The calibration fit's household pass in Triton: gather, chain rule, Adam step and next gates in one kernel.

The GPU counterpart of ``csrc/calibration_fit.cpp`` (see there and
:mod:`l0fast.engine` for the objective).  For each household ``h`` of a tile
(M household-major, :mod:`l0fast.kernels.gated_spmv`):

- ``gw_h = sum_{k in h} values_k * grad_y[row_k]``                  (segment sum)
- ``dL/dlog_weight_h = gw_h e_h g_h + 2 lambda_l2 e_h^2``,  ``e_h = exp(log_weight_h)``
- ``dL/dlog_alpha_h  = gw_h e_h dg_h + lambda_l0 p_h (1 - p_h) [|log_alpha_h| <= 20]``
- one ``torch.optim.Adam`` step of both (``m <- m + (1 - beta1)(grad - m)``,
  ``v <- beta2 v + (1 - beta2) grad^2``, ``p <- p - step_size m / (sqrt(v) / sqrt(bc2) + eps)``);
- with ``SAMPLE_NEXT``, the next epoch's gate ``g'_h`` (draw element ``h`` of
  the Philox stream, :func:`~l0fast.kernels.philox.uniform_at`) and weight
  ``w'_h = exp(log_weight'_h) g'_h``, which the target-major product turns
  into the next epoch's target sums (a deterministic scatter has no cheap GPU
  form: the sums are gathered by target instead, a second read of M).

With ``OPTIONS`` the per-household options of :class:`l0fast.engine.HouseholdOptions`
apply (lambda scale, kept records, log_weight bounds), as in the C++ pass.
``UPDATE=False`` only draws the gates and weights of the current parameters
(the first epoch's).  Per tile it also writes the L0 sum ``sum s_h p_h``
(``s_h`` the household's lambda scale, 1 without options) and ``sum e_h^2`` at
the parameters it read (fixed-order sums).  An epoch is this kernel, the
target-major product and a few Q-length torch ops, none of which reads
anything back to the host.

Bytes moved per epoch (fp32): per non-zero 4 + 4 read here and 4 + 4 + 8 per
segment in the target-major product; per household 8 (col_ptr) + 28 read
(parameters, moments, gate) and 32 written (the same and ``w'``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import LAUNCH_OPTIONS, check_gate_params, compute_dtype, launch_device
from ._math import div_rn, exp, fixed_order_sum, sqrt_rn
from .gated_spmv import SPARSE_WARPS, TILE, household_block, layout, segment_sums
from .hard_concrete import sample_gate, through_gate
from .l0_penalty import active_prob, through_penalty
from .philox import uniform_at


@triton.jit
def _adam(param, grad, m_ptr, v_ptr, h, mask, frozen, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps,
          COMPUTE: tl.constexpr):
    """One Adam step of (BLOCK_S,) ``param``; the moments are read and written in place (not where ``frozen``,
    whose parameters come back unchanged)."""
    m = tl.load(m_ptr + h, mask=mask, other=0.0).to(COMPUTE)
    v = tl.load(v_ptr + h, mask=mask, other=0.0).to(COMPUTE)
    m = m + tl.full((), one_minus_beta1, COMPUTE) * (grad - m)
    v = v * tl.full((), beta2, COMPUTE) + tl.full((), one_minus_beta2, COMPUTE) * grad * grad
    tl.store(m_ptr + h, m.to(m_ptr.dtype.element_ty), mask=mask & ~frozen)
    tl.store(v_ptr + h, v.to(v_ptr.dtype.element_ty), mask=mask & ~frozen)
    denom = div_rn(sqrt_rn(v), tl.full((), bc2_sqrt, COMPUTE)) + tl.full((), eps, COMPUTE)
    return tl.where(frozen, param, param - div_rn(tl.full((), step_size, COMPUTE) * m, denom))


@triton.jit
def _household_pass_kernel(
    col_ptr, row_ptr, val_ptr, grad_y_ptr, lw_ptr, la_ptr, m_lw_ptr, v_lw_ptr, m_la_ptr, v_la_ptr,
    gate_ptr, w_next_ptr, state_ptr, sums_ptr, lambda_ptr, scale_ptr, keep_ptr, lo_ptr, hi_ptr, n,
    beta: tl.float64, gamma: tl.float64, zeta: tl.float64, shift: tl.float64,
    two_lambda_l2: tl.float64,
    one_minus_beta1: tl.float64, beta2: tl.float64, one_minus_beta2: tl.float64,
    step_size: tl.float64, bc2_sqrt: tl.float64, eps: tl.float64,
    UPDATE: tl.constexpr, SAMPLE_NEXT: tl.constexpr, USE_GATES: tl.constexpr, OPTIONS: tl.constexpr,
    ACC: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0)
    h = pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = h < n
    a = tl.load(la_ptr + h, mask=mask, other=0.0).to(COMPUTE)
    log_w = tl.load(lw_ptr + h, mask=mask, other=0.0).to(COMPUTE)
    if OPTIONS:
        kept = tl.load(keep_ptr + h, mask=mask, other=0.0) != 0.0
    else:
        kept = tl.zeros([BLOCK_S], tl.int1)
    if UPDATE:
        gw = segment_sums(col_ptr, row_ptr, val_ptr, grad_y_ptr, h, mask, True, ACC, BLOCK_S, BLOCK_E)
        e = exp(log_w)
        gwe = gw.to(lw_ptr.dtype.element_ty).to(COMPUTE) * e  # gw rounded like the C++'s
        g = tl.load(gate_ptr + h, mask=mask, other=0.0).to(COMPUTE)
        p = active_prob(a, shift, COMPUTE)
        lambda_l0 = tl.load(lambda_ptr).to(COMPUTE)  # on the device: a target count moves it without a host read
        if OPTIONS:
            scale = tl.load(scale_ptr + h, mask=mask, other=0.0).to(COMPUTE)  # 0 for a kept household
        else:
            scale = tl.full([BLOCK_S], 1.0, COMPUTE)
        grad_la = through_gate(gwe, g, a, beta, gamma, zeta, COMPUTE) + through_penalty(lambda_l0 * scale, p, a)
        grad_lw = gwe * g + tl.full((), two_lambda_l2, COMPUTE) * e * e
        tl.store(sums_ptr + 2 * pid, fixed_order_sum(tl.where(mask, scale * p, 0.0).to(tl.float64), BLOCK_S))
        tl.store(sums_ptr + 2 * pid + 1, fixed_order_sum(tl.where(mask, e * e, 0.0).to(tl.float64), BLOCK_S))
        log_w = _adam(log_w, grad_lw, m_lw_ptr, v_lw_ptr, h, mask, tl.zeros([BLOCK_S], tl.int1), one_minus_beta1, beta2,
                      one_minus_beta2, step_size, bc2_sqrt, eps, COMPUTE)
        if OPTIONS:
            lo = tl.load(lo_ptr + h, mask=mask, other=0.0).to(COMPUTE)
            hi = tl.load(hi_ptr + h, mask=mask, other=0.0).to(COMPUTE)
            log_w = tl.minimum(tl.maximum(log_w, lo), hi)
        a = _adam(a, grad_la, m_la_ptr, v_la_ptr, h, mask, kept, one_minus_beta1, beta2, one_minus_beta2,
                  step_size, bc2_sqrt, eps, COMPUTE)
        log_w = log_w.to(lw_ptr.dtype.element_ty)
        a = a.to(la_ptr.dtype.element_ty)
        tl.store(lw_ptr + h, log_w, mask=mask)
        tl.store(la_ptr + h, a, mask=mask)
        log_w = log_w.to(COMPUTE)
        a = a.to(COMPUTE)
    if SAMPLE_NEXT:
        if USE_GATES:
            g_next = sample_gate(uniform_at(state_ptr, h), a, beta, gamma, zeta, COMPUTE)
            g_next = tl.where(kept, 1.0, g_next)
        else:
            g_next = tl.full([BLOCK_S], 1.0, COMPUTE)
        g_next = g_next.to(gate_ptr.dtype.element_ty)
        tl.store(gate_ptr + h, g_next, mask=mask)
        w_next = exp(log_w) * g_next.to(COMPUTE)
        tl.store(w_next_ptr + h, w_next.to(w_next_ptr.dtype.element_ty), mask=mask)


def household_pass(
    matrix, grad_y: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor], moments: tuple[torch.Tensor, ...],
    gate: torch.Tensor, w_next: torch.Tensor, rng_state: torch.Tensor, sums: torch.Tensor,
    gate_params: tuple[float, float, float], lambda_l0: torch.Tensor, lambda_l2: float,
    adam: tuple[float, float, float, float, float, float] | None, sample_next: bool, use_gates: bool,
    households=None,
) -> None:
    """One launch over every household (see the module docstring); every tensor is updated in place.

    matrix: household-major (col_ptr, row_idx, values, num_rows); grad_y: (Q,) values' dtype; params,
    moments (exp_avg_lw, exp_avg_sq_lw, exp_avg_la, exp_avg_sq_la), gate, w_next: (N,) contiguous;
    rng_state: (2,) int64 on the device; sums: (2 * tiles,) fp64 (see :func:`tiles`); lambda_l0: (1,) fp64 on the device;
    adam: (1 - beta1, beta2, 1 - beta2, lr / bc1, sqrt(bc2), eps) of this step, None to only draw gates;
    households: :class:`l0fast.engine.HouseholdOptions` or None.
    """
    col_ptr, row_idx, values, num_rows = matrix
    beta, gamma, zeta = gate_params
    check_gate_params(beta, gamma, zeta)
    log_weight, log_alpha = params
    with launch_device(col_ptr=col_ptr, row_idx=row_idx, values=values, grad_y=grad_y, log_weight=log_weight,
                       log_alpha=log_alpha, gate=gate, w_next=w_next, rng_state=rng_state, sums=sums, lambda_l0=lambda_l0):
        layout(col_ptr, row_idx, values, num_rows)
        n = col_ptr.numel() - 1
        if n == 0:
            return
        block_e, block_s, grid = _tiling(col_ptr, values.numel())
        _household_pass_kernel[grid](
            col_ptr, row_idx, values, grad_y, log_weight, log_alpha, *moments, gate, w_next, rng_state, sums, lambda_l0,
            *((households.lambda_scale, households.keep, households.log_weight_min, households.log_weight_max)
              if households is not None else (log_weight,) * 4), n,
            beta, gamma, zeta, -beta * math.log(-gamma / zeta), 2.0 * lambda_l2,
            *(adam or (0.0, 0.0, 0.0, 0.0, 1.0, 1.0)),
            UPDATE=adam is not None, SAMPLE_NEXT=sample_next, USE_GATES=use_gates, OPTIONS=households is not None,
            ACC=tl.float64 if values.dtype == torch.float64 else tl.float32, COMPUTE=compute_dtype(values),
            BLOCK_S=block_s, BLOCK_E=block_e, num_warps=SPARSE_WARPS, **LAUNCH_OPTIONS,
        )


def _tiling(col_ptr: torch.Tensor, nnz: int) -> tuple[int, int, tuple[int]]:
    block_e = household_block(col_ptr, nnz)
    block_s = max(1, TILE // block_e)
    return block_e, block_s, (triton.cdiv(col_ptr.numel() - 1, block_s),)


def tiles(col_ptr: torch.Tensor, nnz: int) -> int:
    """Number of household tiles of a launch (the length of ``sums`` is twice this)."""
    return _tiling(col_ptr, nnz)[2][0]
