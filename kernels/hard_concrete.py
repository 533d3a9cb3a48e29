"""Hard-concrete gates (Louizos, Welling & Kingma 2017, arXiv:1712.01312) in Triton.

With ``a = clamp(log_alpha, -20, 20)`` and ``u = rand(seed, offset + i)``
(:mod:`l0fast.kernels.philox`, the C++ stream bit for bit) clamped to
``[1e-6, 1 - 1e-6]``:

- sample: ``g = clamp(sigmoid((log(u / (1 - u)) + a) / beta) * (zeta - gamma) + gamma, 0, 1)``
- mean:   ``g = clamp(sigmoid(a / beta) * (zeta - gamma) + gamma, 0, 1)``
- backward (both): ``dL/dlog_alpha = dL/dg * (zeta - gamma) / beta * s (1 - s)`` where
  ``0 < g < 1`` and ``|log_alpha| <= 20``, else exactly 0 (whatever dL/dg, NaN and inf too), with
  ``s = (g - gamma) / (zeta - gamma)`` recovered from the saved gate: the noise is never stored nor regenerated.

The sample and backward kernels also serve :mod:`l0fast.kernels.hard_concrete_gated`
(``w * g``, dL/dw and the penalty's gradient behind constexpr flags, off here).

The arithmetic follows the C++ kernels operation for operation (fp32 for
fp32/fp16/bf16, fp64 for fp64), so gates agree with ``l0fast._C`` to float
rounding, with the same exact zeros and ones except at rounding ties.
A NaN in ``log_alpha`` sets a flag that :mod:`l0fast.kernels._nan` turns into
the same ``ValueError`` as the C++ path (at once on CPU; on CUDA the flag is
read every 64 launches, so no call syncs the host).

Bytes moved per element (fp32): sample 4 read + 4 written (no noise tensor),
mean 4 + 4, backward 12 read + 4 written (4 + 8 + 4 with a broadcast
``dL/dg``, e.g. of ``gates.sum()``).  All three are elementwise and
memory-bound: at ~85% of peak, 10^7 gates take ~24 us (sample) on an H100
(3.35 TB/s) and ~0.3 ms on a T4 (320 GB/s).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    LAUNCH_OPTIONS,
    block_launch,
    check_gate_params,
    compute_dtype,
    launch_device,
    state_on,
)
from ._math import div_rn, exp, log
from ._nan import check_nan, flag_nan, nan_flag
from .l0_penalty import active_prob, through_penalty
from .philox import uniform_block, uniform_launch

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _stretched_gate(x, g0, z0):
    """clamp(sigmoid(x) * (zeta - gamma) + gamma, 0, 1), sigmoid as 1 / (1 + exp(-x)) like the C++."""
    one = tl.full((), 1.0, x.dtype)
    s = div_rn(one, one + exp(-x))
    g = s * (z0 - g0) + g0
    return tl.where(g < 0.0, 0.0, tl.where(g > 1.0, 1.0, g))


@triton.jit
def _clamp_log_alpha(a):
    return tl.where(a < -20.0, -20.0, tl.where(a > 20.0, 20.0, a))


@triton.jit
def sample_gate(u, a, beta, gamma, zeta, COMPUTE: tl.constexpr):
    """The gate of uniform ``u`` (fp32) and ``a = log_alpha`` (COMPUTE), see the module docstring."""
    one = tl.full((), 1.0, COMPUTE)
    inv_beta = div_rn(one, tl.full((), beta, COMPUTE))
    u = tl.where(u < 1e-6, 1e-6, tl.where(u > 1.0 - 1e-6, 1.0 - 1e-6, u)).to(COMPUTE)
    logit = log(div_rn(u, one - u))
    x = (logit + _clamp_log_alpha(a)) * inv_beta
    return _stretched_gate(x, tl.full((), gamma, COMPUTE), tl.full((), zeta, COMPUTE))


@triton.jit
def _sample_kernel(
    la_ptr, state_ptr, w_ptr, gate_ptr, gated_ptr, nan_ptr, n,
    beta: tl.float64, gamma: tl.float64, zeta: tl.float64,
    HAS_WEIGHT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Gates into gate_ptr; with HAS_WEIGHT also ``w * g`` (of the stored gate) into gated_ptr."""
    u, i = uniform_block(state_ptr, tl.program_id(0), BLOCK_C)
    mask = (i >= 0) & (i < n)
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    flag_nan(a, mask, nan_ptr)
    g = sample_gate(u, a, beta, gamma, zeta, COMPUTE)
    tl.store(gate_ptr + i, g.to(gate_ptr.dtype.element_ty), mask=mask)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + i, mask=mask, other=0.0).to(COMPUTE)
        g_stored = g.to(gate_ptr.dtype.element_ty).to(COMPUTE)
        tl.store(gated_ptr + i, (w * g_stored).to(gated_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mean_kernel(
    la_ptr, gate_ptr, nan_ptr, n,
    beta: tl.float64, gamma: tl.float64, zeta: tl.float64,
    COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    flag_nan(a, mask, nan_ptr)
    inv_beta = div_rn(tl.full((), 1.0, COMPUTE), tl.full((), beta, COMPUTE))
    g = _stretched_gate(_clamp_log_alpha(a) * inv_beta, tl.full((), gamma, COMPUTE), tl.full((), zeta, COMPUTE))
    tl.store(gate_ptr + i, g.to(gate_ptr.dtype.element_ty), mask=mask)


@triton.jit
def through_gate(c, g, a, beta, gamma, zeta, COMPUTE: tl.constexpr):
    """``c * dg/dlog_alpha``, from the saved gate ``g`` and ``a = log_alpha`` (all COMPUTE); exactly 0 where the
    gate is not live, whatever ``c`` (NaN and inf too: a select, not a product with 0), as the C++'s."""
    g0 = tl.full((), gamma, COMPUTE)
    z0 = tl.full((), zeta, COMPUTE)
    inv_range = div_rn(tl.full((), 1.0, COMPUTE), z0 - g0)
    scale = div_rn(z0 - g0, tl.full((), beta, COMPUTE))
    s = (g - g0) * inv_range
    live = (g > 0.0) & (g < 1.0) & (a >= -20.0) & (a <= 20.0)
    return tl.where(live, c * (scale * s * (1.0 - s)), 0.0)


@triton.jit
def _backward_kernel(
    grad_ptr, grad_stride, penalty_grad_ptr, gate_ptr, la_ptr, w_ptr, out_ptr, grad_w_ptr, n, shift: tl.float64,
    beta: tl.float64, gamma: tl.float64, zeta: tl.float64,
    HAS_GRAD: tl.constexpr, HAS_PENALTY_GRAD: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    """dL/dlog_alpha (see the module docstring): upstream dL/dg (HAS_GRAD; a stride 0 reads one value), or
    dL/d(w g) with HAS_WEIGHT (then dL/dw into grad_w_ptr too), plus dL/dpenalty * p (1 - p) with
    HAS_PENALTY_GRAD (penalty_grad_ptr, one value; shift as l0_penalty's)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    g = tl.load(gate_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    a = tl.load(la_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    if HAS_GRAD:
        up = tl.load(grad_ptr + i * grad_stride, mask=mask, other=0.0).to(COMPUTE)
    else:
        up = tl.zeros([BLOCK], COMPUTE)
    through_gate_c = up
    if HAS_WEIGHT:
        w = tl.load(w_ptr + i, mask=mask, other=0.0).to(COMPUTE)
        through_gate_c = up * w  # in COMPUTE: a half's dL/d(w g) * w may overflow where the fp32 reference's does not
        tl.store(grad_w_ptr + i, (up * g).to(grad_w_ptr.dtype.element_ty), mask=mask)
    d = through_gate(through_gate_c, g, a, beta, gamma, zeta, COMPUTE)
    if HAS_PENALTY_GRAD:
        scale = tl.load(penalty_grad_ptr).to(COMPUTE)
        d += through_penalty(scale, active_prob(a, shift, COMPUTE), a)
    tl.store(out_ptr + i, d.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _check_log_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    if not log_alpha.is_floating_point():
        raise RuntimeError(f"log_alpha must be a floating-point tensor, got {log_alpha.dtype}")
    return log_alpha.contiguous()


def hard_concrete_sample(log_alpha: torch.Tensor, rng_state: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """Sampled gates.  log_alpha: (*) -> (*) same dtype; rng_state: (2,) int64 [seed, offset] on any device."""
    check_gate_params(beta, gamma, zeta)
    with launch_device(log_alpha=log_alpha):
        la = _check_log_alpha(log_alpha)
        gate = torch.empty_like(la)
        n = la.numel()
        if n:
            state = state_on(rng_state, la.device)
            grid, block_c, warps = uniform_launch(n)
            _sample_kernel[grid](
                la, state, gate, gate, gate, nan_flag(la.device), n, beta, gamma, zeta,
                HAS_WEIGHT=False, COMPUTE=compute_dtype(la), BLOCK_C=block_c, num_warps=warps, **LAUNCH_OPTIONS,
            )
            check_nan(la.device, "hard_concrete_sample")
    return gate


def hard_concrete_mean(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """Deterministic (eval) gates.  log_alpha: (*) -> (*) same dtype."""
    check_gate_params(beta, gamma, zeta)
    with launch_device(log_alpha=log_alpha):
        la = _check_log_alpha(log_alpha)
        gate = torch.empty_like(la)
        n = la.numel()
        if n:
            grid, block, warps = block_launch(n)
            _mean_kernel[grid](
                la, gate, nan_flag(la.device), n, beta, gamma, zeta,
                COMPUTE=compute_dtype(la), BLOCK=block, num_warps=warps, **LAUNCH_OPTIONS,
            )
            check_nan(la.device, "hard_concrete_mean")
    return gate


def broadcast_or_contiguous(grad: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """``(tensor, stride)``: a gradient broadcast from one value (all strides 0) is read as a scalar."""
    if grad.numel() > 0 and all(s == 0 for s in grad.stride()):
        return grad.as_strided((1,), (1,)).to(dtype), 0
    return grad.to(dtype).contiguous(), 1


def hard_concrete_backward(
    grad_gate: torch.Tensor, gate: torch.Tensor, log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float
) -> torch.Tensor:
    """dL/dlog_alpha from dL/dgate and the saved gate.  All (*) -> (*) in log_alpha's dtype."""
    check_gate_params(beta, gamma, zeta)
    if grad_gate.shape != log_alpha.shape or gate.shape != log_alpha.shape:
        raise RuntimeError(
            f"grad_gate, gate and log_alpha must have one shape, got {tuple(grad_gate.shape)}, "
            f"{tuple(gate.shape)}, {tuple(log_alpha.shape)}"
        )
    with launch_device(grad_gate=grad_gate, gate=gate, log_alpha=log_alpha):
        la = _check_log_alpha(log_alpha)
        g = gate.to(la.dtype).contiguous()
        grad, stride = broadcast_or_contiguous(grad_gate, la.dtype)
        out = torch.empty_like(la)
        n = la.numel()
        if n:
            grid, block, warps = block_launch(n)
            _backward_kernel[grid](
                grad, stride, la, g, la, la, out, out, n, 0.0, beta, gamma, zeta, HAS_GRAD=True,
                HAS_PENALTY_GRAD=False, HAS_WEIGHT=False, COMPUTE=compute_dtype(la), BLOCK=block,
                num_warps=warps, **LAUNCH_OPTIONS,
            )
    return out
