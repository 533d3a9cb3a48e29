"""The training step of a gated module in one pass: sampled gates, the gated weight and the L0 penalty.

With ``g = hard_concrete_sample(log_alpha, rng_state)`` and
``p_i = sigmoid(clamp(log_alpha_i, -20, 20) - beta log(-gamma / zeta))``:

- forward:  ``(g, w * g, sum_i p_i)`` (``w * g`` empty without a weight)
- backward: ``dL/dlog_alpha = c * dg/dlog_alpha + dL/dpenalty * p (1 - p)`` (masked as the
  gate and penalty backwards), ``c = dL/d(w g) * w`` with a weight, else ``dL/dg``;
  ``dL/dw = dL/d(w g) * g``

The gates equal :func:`~l0fast.ops.hard_concrete_sample`'s (same noise) and the
penalty :func:`~l0fast.ops.l0_penalty`'s, so a module that samples its gates
this way can answer ``get_penalty()`` from the same pass.  Bytes per element
(fp32, with a weight): forward 8 read and 8 written (three passes: sample, the
product, the penalty, read 12 and wrote 8); backward 16 read and 8 written.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .hard_concrete import (
    _opmath,
    _sample_inputs,
    check_gate_args,
    check_rng_state,
    hard_concrete_backward_ref,
    hard_concrete_sample_ref,
    sampled_gate_of,
)
from .l0_penalty import l0_penalty_backward_ref, l0_penalty_ref
from .registry import define_op, empty_contiguous_like, refuse_per_sample_draws, use_references


def hard_concrete_gated_ref(
    log_alpha: Tensor, rng_state: Tensor, weight: Optional[Tensor], beta: float, gamma: float, zeta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(gate like log_alpha, weight * gate like weight or (0,) without one, penalty ())."""
    gate = hard_concrete_sample_ref(log_alpha, rng_state, beta, gamma, zeta)
    if weight is None:
        gated = log_alpha.new_empty(0)
    else:
        gated = (weight.to(_opmath(weight)) * gate.to(_opmath(weight)).view(weight.shape)).to(weight.dtype)
    return gate, gated, l0_penalty_ref(log_alpha, beta, gamma, zeta)


def hard_concrete_gated_backward_ref(
    grad: Optional[Tensor],
    grad_penalty: Optional[Tensor],
    gate: Tensor,
    log_alpha: Tensor,
    weight: Optional[Tensor],
    beta: float,
    gamma: float,
    zeta: float,
) -> tuple[Tensor, Tensor]:
    """(dL/dlog_alpha like log_alpha, dL/dweight like weight or (0,)); grad is dL/d(weight * gate), or dL/dgate
    without a weight; a missing gradient counts as zero."""
    dtype = _opmath(log_alpha)
    up = torch.zeros_like(log_alpha, dtype=dtype) if grad is None else grad.to(dtype).reshape(log_alpha.shape)
    through_gate = up if weight is None else up * weight.to(dtype).reshape(log_alpha.shape)
    grad_la = hard_concrete_backward_ref(through_gate, gate, log_alpha, beta, gamma, zeta).to(dtype)
    if grad_penalty is not None:
        grad_la = grad_la + l0_penalty_backward_ref(grad_penalty.reshape(()), log_alpha.to(dtype), beta, gamma, zeta)
    if weight is None:
        grad_w = log_alpha.new_empty(0)
    else:
        grad_w = (up * gate.to(dtype).reshape(log_alpha.shape)).to(weight.dtype).view(weight.shape)
    return grad_la.to(log_alpha.dtype), grad_w


def _gated_fake(log_alpha, rng_state, weight, *_params):
    gated = log_alpha.new_empty(0) if weight is None else empty_contiguous_like(weight)
    return empty_contiguous_like(log_alpha), gated, log_alpha.new_empty(())


def _gated_backward_fake(grad, grad_penalty, gate, log_alpha, weight, *_params):
    grad_w = log_alpha.new_empty(0) if weight is None else empty_contiguous_like(weight)
    return empty_contiguous_like(log_alpha), grad_w


def _gated_inputs(numel, dtype, generator):
    log_alpha, rng_state, *params = _sample_inputs(numel, dtype, generator)
    weight = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)
    return (log_alpha, rng_state, weight, *params)


def _gated_backward_inputs(numel, dtype, generator):
    log_alpha, rng_state, weight, *params = _gated_inputs(numel, dtype, generator)
    gate = hard_concrete_sample_ref(log_alpha, rng_state, *params)
    grad = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)
    return (grad, torch.tensor(0.7, dtype=dtype), gate, log_alpha, weight, *params)


gated_op = define_op(hard_concrete_gated_ref, _gated_fake, _gated_inputs, cpp_name="hard_concrete_gated")
gated_backward_op = define_op(
    hard_concrete_gated_backward_ref, _gated_backward_fake, _gated_backward_inputs, cpp_name="hard_concrete_gated_backward"
)


class _KeptPastRelease:
    """What the backward through one output of :class:`HardConcreteGated` keeps for a later backward through the
    other: autograd frees the saved tensors after the first backward through a node, and a penalty taken before
    the task loss's backward (``pen = get_penalty(); loss.backward(); pen.backward()``, separate graphs in
    l0-python) needs the node again.  The penalty's backward needs only ``log_alpha``, so a backward through the
    gates first keeps no more memory than the parameter; one through the penalty first keeps the gate (detached:
    the output itself would make a reference cycle through the node) and the weight, until the gates' backward.
    In-place changes since the forward raise as autograd's saved tensors do, and so does a third backward."""

    __slots__ = ("tensors", "versions", "served")

    def __init__(self, saved: tuple, served: int):
        gate, log_alpha, weight = saved
        self.tensors = (None, log_alpha, None) if served == 0 else (gate.detach(), log_alpha, weight)
        self.versions = tuple(None if t is None else t._version for t in self.tensors)
        self.served = served  # 0: the gated output's backward ran, 1: the penalty's

    def unpack(self, output: int) -> tuple:
        """(gate, log_alpha, weight) for the backward through ``output`` (0 or 1), once."""
        if output == self.served or self.tensors is None:
            raise RuntimeError("Trying to backward through the graph a second time (or directly access saved tensors after "
                               "they have already been freed): specify retain_graph=True if you need to backward twice")
        for t, version in zip(self.tensors, self.versions):
            if t is not None and t._version != version:
                raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                                   "operation (a gate, gate logits or weight of a HardConcreteGated pass) since its "
                                   "forward; backward before changing them")
        tensors, self.tensors = self.tensors, None
        return tensors


class HardConcreteGated(torch.autograd.Function):
    """``(gate or weight * gate, penalty)`` from one pass; one backward pass for both outputs.  A backward
    through one output at a time (two graphs, as l0-python's) works too: see :class:`_KeptPastRelease`.

    ``on_backward`` (or None) is called when the backward runs: a cached penalty
    is then spent.  The graph holds it, so it must not refer to what holds the
    penalty (a reference cycle would keep the graph alive until a garbage collection).
    """

    @staticmethod
    def forward(ctx, log_alpha, rng_state, weight, beta, gamma, zeta, on_backward):
        gate, gated, penalty = torch.ops.l0fast.hard_concrete_gated(log_alpha, rng_state, weight, beta, gamma, zeta)
        ctx.params, ctx.on_backward, ctx.kept = (beta, gamma, zeta), on_backward, None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gate, log_alpha, weight)
        return (gate if weight is None else gated), penalty

    @staticmethod
    def backward(ctx, grad, grad_penalty):
        gate, log_alpha, weight = _saved(ctx, grad, grad_penalty)
        if ctx.on_backward is not None:
            ctx.on_backward()
        differentiable = torch.is_grad_enabled()  # create_graph=True: the references, differentiable again
        if grad is None:  # the penalty's backward alone (or neither): nothing reaches the weight
            if grad_penalty is None:
                return None, None, None, None, None, None, None
            backward = l0_penalty_backward_ref if differentiable else torch.ops.l0fast.l0_penalty_backward
            return backward(grad_penalty.reshape(()), log_alpha, *ctx.params), None, None, None, None, None, None
        if differentiable:  # the gate as a function of log_alpha
            gate = sampled_gate_of(log_alpha, gate, *ctx.params)
            grad_la, grad_w = hard_concrete_gated_backward_ref(grad, grad_penalty, gate, log_alpha, weight, *ctx.params)
        else:
            grad_la, grad_w = torch.ops.l0fast.hard_concrete_gated_backward(grad, grad_penalty, gate, log_alpha, weight, *ctx.params)
        return grad_la, None, (grad_w if weight is not None and ctx.needs_input_grad[2] else None), None, None, None, None


def _saved(ctx, grad: Optional[Tensor], grad_penalty: Optional[Tensor]) -> tuple:
    """HardConcreteGated's (gate, log_alpha, weight) for a backward with these output gradients (None: that
    output is not reached); a backward through one of the two keeps what the other's needs (:class:`_KeptPastRelease`)."""
    try:
        saved = ctx.saved_tensors
    except RuntimeError:  # freed by a backward through the other output, or changed in place
        if ctx.kept is None:
            raise
        return ctx.kept.unpack(0 if grad is not None else 1)
    if (grad is None) != (grad_penalty is None) and ctx.kept is None:
        ctx.kept = _KeptPastRelease(saved, 0 if grad is not None else 1)
    return saved


def hard_concrete_gated(
    log_alpha: Tensor, rng_state: Tensor, beta: float, gamma: float, zeta: float, weight: Tensor | None = None, on_backward=None
) -> tuple[Tensor, Tensor]:
    """Differentiable ``(gates, penalty)``, or ``(weight * gates, penalty)`` with a weight of log_alpha's size and dtype.

    log_alpha: (*); weight: any shape with log_alpha's number of elements; rng_state: (2,) int64, not advanced
    here (the caller advances ``rng_state[1]`` by ``log_alpha.numel()``).
    """
    check_gate_args(log_alpha, beta, gamma, zeta)
    check_rng_state(rng_state)
    if weight is not None and (weight.shape.numel() != log_alpha.shape.numel() or weight.dtype != log_alpha.dtype):
        raise ValueError(f"weight must have log_alpha's number of elements and dtype, got {tuple(weight.shape)} {weight.dtype} "
                         f"and {tuple(log_alpha.shape)} {log_alpha.dtype}")
    if use_references():  # plain torch ops: they compose with torch.func transforms and export to aten
        refuse_per_sample_draws(rng_state)
        gate, gated, penalty = hard_concrete_gated_ref(log_alpha, rng_state, weight, float(beta), float(gamma), float(zeta))
        return (gate if weight is None else gated), penalty
    return HardConcreteGated.apply(log_alpha, rng_state, weight, float(beta), float(gamma), float(zeta), on_backward)

