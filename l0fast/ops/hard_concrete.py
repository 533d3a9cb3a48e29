"""Hard-concrete gates (Louizos, Welling & Kingma 2017, arXiv:1712.01312).

With ``a = clamp(log_alpha, -20, 20)`` and ``u = rand(seed, offset + i)``
clamped to ``[1e-6, 1 - 1e-6]``:

- sample (train): ``g = clamp(sigmoid((log u - log(1 - u) + a) / beta) * (zeta - gamma) + gamma, 0, 1)``
- mean (eval):    ``g = clamp(sigmoid(a / beta) * (zeta - gamma) + gamma, 0, 1)``
- backward (both): ``dg/dlog_alpha = (zeta - gamma) / beta * s (1 - s)`` where
  ``0 < g < 1`` and ``|log_alpha| <= 20``, else 0, with the pre-stretch
  ``s = (g - gamma) / (zeta - gamma)`` recovered from the saved gate: the
  noise is never materialized nor regenerated.

Bytes moved per element (fp32): sample 4 read + 4 written, mean the same,
backward 12 read + 4 written.  fp16/bf16 compute in fp32.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .._capability import _C
from .philox import _philox_uniform_samples as _philox_samples
from .philox import philox_uniform
from .registry import define_op, empty_contiguous_like, in_functorch_transform, jit_tracing, refuse_per_sample_draws, use_references

LOG_ALPHA_BOUND = 20.0
UNIFORM_EPS = 1e-6


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False, hint: str = "") -> float:
    """``float(value)``; TypeError unless a real number (not bool) or a one-element real tensor (a learned or
    scheduled value, as l0-python takes; gate parameters that require grad are refused by :func:`refuse_gradient`),
    ValueError unless finite and in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""
    # type() first: a float (the usual case) skips the slower ABC test
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)) and not _real_scalar_tensor(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}{hint}")
    v = float(value.detach()) if isinstance(value, Tensor) else float(value)
    below = lo is not None and (v <= lo if open_lo else v < lo)
    # v - v == 0 holds for finite v only; unlike math.isfinite, torch.compile traces it on a traced float
    if not v - v == 0 or below or (hi is not None and v > hi):
        interval = "" if lo is None and hi is None else f" in {'(' if open_lo else '['}{lo}, {'inf)' if hi is None else f'{hi}]'}"
        raise ValueError(f"{name} must be a finite number{interval}, got {value!r}{hint}")
    return v


def _real_scalar_tensor(value) -> bool:
    return isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool


def refuse_gradient(name: str, value) -> None:
    """TypeError when ``value`` is a tensor that requires grad: the gate kernels take the gate parameters as
    numbers, so its gradient (which l0-python computes for a learned temperature) would be lost, silently."""
    if isinstance(value, Tensor) and value.requires_grad:
        raise TypeError(f"{name} is a tensor that requires grad, but l0fast's gates take it as a number: no gradient "
                        f"would reach it. Pass a number or a detached tensor ({name.split()[0]}.detach())")


def check_gate_params(beta, gamma, zeta) -> None:
    """TypeError/ValueError unless ``beta > 0``, ``gamma < 0`` and ``zeta > 1``, all finite, none a tensor that
    requires grad (:func:`refuse_gradient`)."""
    # the usual case, plain floats in range (a module's attributes): 0.2 us of the 2.5 the checks below take
    if (type(beta) is float and type(gamma) is float and type(zeta) is float
            and 0.0 < beta < math.inf and -math.inf < gamma < 0.0 and 1.0 < zeta < math.inf):
        return
    for name, value in (("beta (hard-concrete temperature)", beta), ("gamma", gamma), ("zeta", zeta)):
        refuse_gradient(name, value)
    check_number("beta (hard-concrete temperature)", beta, 0, open_lo=True, hint="; e.g. 2/3")
    if check_number("gamma (stretch lower bound)", gamma, hint="; e.g. -0.1") >= 0:
        raise ValueError(f"gamma (stretch lower bound) must be < 0, e.g. -0.1; got {gamma!r}")
    if check_number("zeta (stretch upper bound)", zeta, hint="; e.g. 1.1") <= 1:
        raise ValueError(f"zeta (stretch upper bound) must be > 1, e.g. 1.1; got {zeta!r}")


def check_gate_args(log_alpha, beta, gamma, zeta) -> None:
    """TypeError unless ``log_alpha`` is a floating-point tensor; the gate parameters as :func:`check_gate_params`."""
    if not isinstance(log_alpha, Tensor) or not log_alpha.is_floating_point():
        got = f"a {log_alpha.dtype} tensor" if isinstance(log_alpha, Tensor) else type(log_alpha).__name__
        raise TypeError(f"log_alpha must be a floating-point torch.Tensor, got {got}; convert it with torch.as_tensor(x, dtype=torch.float32)")
    check_gate_params(beta, gamma, zeta)


def check_rng_state(rng_state, name: str = "rng_state") -> None:
    """TypeError unless ``rng_state`` is an int64 tensor ``[seed, offset]`` of shape (2,).  (``shape.numel()``
    is an int under ``torch.jit.trace`` too, where a size compared with ``!=`` is a traced tensor.)"""
    if not isinstance(rng_state, Tensor) or rng_state.dtype != torch.int64 or rng_state.dim() != 1 or rng_state.shape.numel() != 2:
        got = f"{rng_state.dtype} of shape {tuple(rng_state.shape)}" if isinstance(rng_state, Tensor) else type(rng_state).__name__
        raise TypeError(f"{name} must be an int64 tensor [seed, offset] of shape (2,) (see l0fast.rng.new_rng_state), got {got}")


def advance_rng_state(rng_state: Tensor, count: int) -> None:
    """``offset += count`` in place: the next draw starts ``count`` noise elements further (an int64 tensor:
    autograd never records it).  Also inside torch.func transforms: a grad transform refuses in-place changes
    of the tensors it captured, and the guard that torch's own RNG-state setters use lets this one through.
    A plain CPU state moves in one C++ call (``l0fast._C.advance_offset``), where nothing would see these ops."""
    if _C is not None and not torch.compiler.is_compiling() and _C.advance_offset(rng_state, count):
        return
    offset = rng_state.select(0, 1)
    try:
        offset.add_(count)
    except RuntimeError:
        if not in_functorch_transform():
            raise
        with torch._C._DisableFuncTorch():
            offset.add_(count)


def check_not_nan(log_alpha: Tensor, where: str) -> None:
    """The reference twin of the kernels' NaN check on ``log_alpha``; skipped where no value can be read back:
    under vmap over ``log_alpha`` (a model ensemble) and in traced graphs (torch.export, torch.jit.trace)."""
    if torch.compiler.is_compiling() or jit_tracing():
        return
    try:
        found = log_alpha.numel() and bool(torch.isnan(log_alpha).any())
    except RuntimeError:
        if in_functorch_transform():
            return
        raise
    if found:
        raise ValueError(
            f"{where}: log_alpha contains NaN. A NaN loss or too large a learning rate "
            "usually causes this; reinitialise the gates (reset_parameters()) and lower lr."
        )


def _opmath(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _stretch(s: Tensor, gamma: float, zeta: float) -> Tensor:
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_sample_ref(log_alpha: Tensor, rng_state: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Sampled gates, same shape and dtype as ``log_alpha``; noise from ``rng_state`` = [seed, offset]."""
    check_not_nan(log_alpha, "hard_concrete_sample")
    u = philox_uniform(rng_state, log_alpha.numel()).to(log_alpha.device)
    u = u.clamp(UNIFORM_EPS, 1.0 - UNIFORM_EPS).to(_opmath(log_alpha)).view(log_alpha.shape)
    a = log_alpha.to(_opmath(log_alpha)).clamp(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + a) / beta)
    return _stretch(s, gamma, zeta).to(log_alpha.dtype)


def hard_concrete_mean_ref(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Deterministic (eval) gates, same shape and dtype as ``log_alpha``."""
    check_not_nan(log_alpha, "hard_concrete_mean")
    a = log_alpha.to(_opmath(log_alpha)).clamp(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    return _stretch(torch.sigmoid(a / beta), gamma, zeta).to(log_alpha.dtype)


def hard_concrete_backward_ref(
    grad_gate: Tensor, gate: Tensor, log_alpha: Tensor, beta: float, gamma: float, zeta: float
) -> Tensor:
    """d loss / d log_alpha from the saved gate, for both sampled and mean gates."""
    dtype = _opmath(log_alpha)
    g = gate.to(dtype)
    s = (g - gamma) / (zeta - gamma)
    live = (g > 0) & (g < 1) & (log_alpha.abs() <= LOG_ALPHA_BOUND)
    d = (zeta - gamma) / beta * s * (1 - s)
    return torch.where(live, grad_gate.to(dtype) * d, torch.zeros_like(d)).to(log_alpha.dtype)


def sampled_gate_of(log_alpha: Tensor, gate: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """A sampled ``gate`` as a differentiable function of ``log_alpha``, for backward passes that autograd
    differentiates again (``create_graph=True``): ``stretch(sigmoid((L + a) / beta))`` with the noise logit
    ``L = beta logit(s) - a``, ``s = (g - gamma) / (zeta - gamma)``, recovered from the gate where
    ``0 < g < 1``; a clamped gate (0 or 1) is constant in ``log_alpha``.  ``gate``'s values up to rounding."""
    dtype = _opmath(log_alpha)
    g = gate.detach().to(dtype)
    live = (g > 0) & (g < 1)
    s = torch.where(live, (g - gamma) / (zeta - gamma), 0.5)  # 0.5 off the live set: no inf to mask in backward
    a = log_alpha.to(dtype).clamp(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    noise_logit = beta * (torch.log(s) - torch.log1p(-s)) - a.detach()
    return torch.where(live, _stretch(torch.sigmoid((noise_logit + a) / beta), gamma, zeta), g).to(log_alpha.dtype)


def _same_as_log_alpha(log_alpha: Tensor, *_args) -> Tensor:
    return empty_contiguous_like(log_alpha)


def _backward_fake(grad_gate: Tensor, gate: Tensor, log_alpha: Tensor, *_args) -> Tensor:
    torch._check(grad_gate.shape == log_alpha.shape, lambda: "grad_gate must match log_alpha's shape")
    return empty_contiguous_like(log_alpha)


def example_log_alpha(numel: int, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """log_alpha ~ 3 N(0, 1), with the clamp bounds hit at both ends when numel >= 4."""
    log_alpha = 3 * torch.randn(numel, generator=generator, dtype=torch.float64)
    log_alpha[:2] = torch.tensor([25.0, -25.0])[: min(numel, 2)]
    return log_alpha.to(dtype)


GATE_PARAMS = (2.0 / 3.0, -0.1, 1.1)  # beta, gamma, zeta of l0's calibration defaults


def _sample_inputs(numel, dtype, generator):
    _rng_state, _ = _philox_samples(numel, dtype, generator)
    return (example_log_alpha(numel, dtype, generator), _rng_state, *GATE_PARAMS)


def _mean_inputs(numel, dtype, generator):
    return (example_log_alpha(numel, dtype, generator), *GATE_PARAMS)


def _backward_inputs(numel, dtype, generator):
    log_alpha, rng_state, *params = _sample_inputs(numel, dtype, generator)
    gate = hard_concrete_sample_ref(log_alpha, rng_state, *params)
    return (torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype), gate, log_alpha, *params)


sample_op = define_op(hard_concrete_sample_ref, _same_as_log_alpha, _sample_inputs, cpp_name="hard_concrete_sample")
mean_op = define_op(hard_concrete_mean_ref, _same_as_log_alpha, _mean_inputs, cpp_name="hard_concrete_mean")
backward_op = define_op(hard_concrete_backward_ref, _backward_fake, _backward_inputs, cpp_name="hard_concrete_backward")


def _mean_gate_of(log_alpha: Tensor, _gate: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    return hard_concrete_mean_ref(log_alpha, beta, gamma, zeta)


def _gate_backward(ctx, grad_gate: Tensor, gate_of) -> tuple:
    """dL/dlog_alpha from the saved gate.  With ``create_graph=True`` it is computed by the reference from the
    gate as a differentiable function of log_alpha (``gate_of(log_alpha, gate, beta, gamma, zeta)``), so that
    second derivatives (Hessian-vector products, gradient penalties) are exact too."""
    gate, log_alpha = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a backward that autograd differentiates again
        grad = hard_concrete_backward_ref(grad_gate, gate_of(log_alpha, gate, *ctx.params), log_alpha, *ctx.params)
    else:
        grad = torch.ops.l0fast.hard_concrete_backward(grad_gate, gate, log_alpha, *ctx.params)
    return (grad,) + (None,) * (len(ctx.needs_input_grad) - 1)


class _GateFunction(torch.autograd.Function):
    """Both gates save their output and log_alpha for the chain rule (:func:`_gate_backward`)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_alpha, *rest = inputs
        ctx.params = tuple(rest[-3:])  # beta, gamma, zeta
        ctx.save_for_backward(output, log_alpha)


class HardConcreteSample(_GateFunction):
    @staticmethod
    def forward(log_alpha, rng_state, beta, gamma, zeta):
        return torch.ops.l0fast.hard_concrete_sample(log_alpha, rng_state, beta, gamma, zeta)

    @staticmethod
    def backward(ctx, grad_gate):
        return _gate_backward(ctx, grad_gate, sampled_gate_of)


class HardConcreteMean(_GateFunction):
    @staticmethod
    def forward(log_alpha, beta, gamma, zeta):
        return torch.ops.l0fast.hard_concrete_mean(log_alpha, beta, gamma, zeta)

    @staticmethod
    def backward(ctx, grad_gate):
        return _gate_backward(ctx, grad_gate, _mean_gate_of)


def hard_concrete_sample(log_alpha: Tensor, rng_state: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Differentiable sampled gates.  log_alpha: (*) -> (*); rng_state: (2,) int64 [seed, offset].

    The caller advances ``rng_state[1]`` by ``log_alpha.numel()`` after each draw.
    """
    check_gate_args(log_alpha, beta, gamma, zeta)
    check_rng_state(rng_state)
    if use_references():
        refuse_per_sample_draws(rng_state)
        return hard_concrete_sample_ref(log_alpha, rng_state, float(beta), float(gamma), float(zeta))
    return HardConcreteSample.apply(log_alpha, rng_state, float(beta), float(gamma), float(zeta))


def hard_concrete_mean(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """Differentiable deterministic gates.  log_alpha: (*) -> (*)."""
    check_gate_args(log_alpha, beta, gamma, zeta)
    mean = hard_concrete_mean_ref if use_references() else HardConcreteMean.apply
    return mean(log_alpha, float(beta), float(gamma), float(zeta))
