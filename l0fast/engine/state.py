"""What a calibration fit carries between epochs and between ``fit`` calls.

- :class:`AdamState`: ``torch.optim.Adam``'s state for ``log_weight`` and
  ``log_alpha`` (step count and both moments), kept on the model as
  ``model.optimizer_state`` so a later ``fit(reset_optimizer=False)`` or a
  checkpoint continues it exactly;
- :class:`FitTargets`: the per-target data of the loss
  ``sum_i loss_weight_i * ((y_i - yhat_i) * inv_denom_i)^2``;
- :class:`FitOptions`: the optimizer and penalty settings of one ``fit``;
- :class:`FitShard`: this process's part of a fit split by household
  (:mod:`l0fast.distributed`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor


@dataclass
class AdamState:
    """Adam's step count and moments: ``exp_avg_*`` / ``exp_avg_sq_*`` (N,) like the parameters."""

    step: int
    exp_avg_lw: Tensor
    exp_avg_sq_lw: Tensor
    exp_avg_la: Tensor
    exp_avg_sq_la: Tensor

    @classmethod
    def zeros_like(cls, log_weight: Tensor, log_alpha: Tensor) -> AdamState:
        """A fresh optimizer (step 0, zero moments), as ``torch.optim.Adam`` starts."""
        z = lambda t: torch.zeros_like(t, memory_format=torch.contiguous_format)  # noqa: E731
        return cls(0, z(log_weight), z(log_weight), z(log_alpha), z(log_alpha))

    def moments(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in ("exp_avg_lw", "exp_avg_sq_lw", "exp_avg_la", "exp_avg_sq_la")}

    def second_moments(self) -> tuple[Tensor, Tensor]:
        return self.exp_avg_sq_lw, self.exp_avg_sq_la

    def state_dict(self) -> dict:
        """Plain-tensor copy for checkpoints."""
        return {"step": self.step, **{k: v.detach().clone().cpu() for k, v in self.moments().items()}}

    @classmethod
    def from_state_dict(cls, state: dict, like: Tensor) -> AdamState:
        """Moments moved to ``like``'s device and dtype."""
        return cls(int(state["step"]), *(state[k].to(device=like.device, dtype=like.dtype).contiguous()
                                          for k in ("exp_avg_lw", "exp_avg_sq_lw", "exp_avg_la", "exp_avg_sq_la")))


@dataclass(frozen=True)
class FitTargets:
    """y, loss_weight, inv_denom: (Q,) fp64 on the model's device."""

    y: Tensor
    loss_weight: Tensor
    inv_denom: Tensor


@dataclass(frozen=True)
class HouseholdOptions:
    """Per-household options, each (N,) in the parameters' dtype and device.

    ``lambda_l0_h = lambda_l0 * lambda_scale_h``; ``keep_h = 1``: gate held
    open, ``log_alpha_h`` and its moments left still, not counted in ``sum p``
    (give it ``lambda_scale_h = 0``); ``log_weight_h`` projected onto
    ``[log_weight_min_h, log_weight_max_h]`` after every Adam step.
    """

    lambda_scale: Tensor
    keep: Tensor
    log_weight_min: Tensor
    log_weight_max: Tensor


@dataclass(frozen=True)
class FitOptions:
    """Adam (``torch.optim.Adam``'s defaults) and the penalties of one fit."""

    lr: float
    lambda_l0: float
    lambda_l2: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    gate_params: tuple[float, float, float] = field(default=(2 / 3, -0.1, 1.1))  # beta, gamma, zeta
    use_gates: bool = True
    target_count: int | None = None  # lambda_l0 becomes the starting Lagrange multiplier (see next_lambda)
    dual_step: float = 0.05
    households: HouseholdOptions | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FitShard:
    """Households ``[offset, offset + N)`` of ``total``, fitted by one process of several.

    Household ``h`` draws gate noise ``offset + h`` of each epoch's ``total``
    draws, so the gates do not depend on the split.  After each household pass
    ``exchange(totals)`` replaces the (Q + 3,) fp64 ``totals`` (this process's
    target sums, then ``sum p``, ``sum e^2`` and a NaN flag) in place by their
    sums over the processes, the same on each (``csrc/calibration_fit.h``).
    """

    offset: int
    total: int
    exchange: Callable[[Tensor], None]


def next_lambda(lam: Tensor, sum_p: Tensor, options: FitOptions) -> Tensor:
    """The multiplier after an epoch with expected active count ``sum_p`` (0-dim fp64 tensors, no host read).

    ``lam * exp(dual_step * clamp((sum_p - K) / max(K, 1), -1, 1))`` clamped to [1e-12, 1e12]
    (dual ascent in log lambda; ``csrc/calibration_fit.cpp``'s ``next_lambda``); ``lam`` when no target count.
    """
    if options.target_count is None:
        return lam
    k = float(options.target_count)
    excess = ((sum_p - k) / max(k, 1.0)).clamp(-1.0, 1.0)
    return (lam * torch.exp(options.dual_step * excess)).clamp(1e-12, 1e12)


class FitDiverged(ValueError):
    """A fit's parameters became NaN, or their gradients overflowed (too large a learning rate, or targets on too
    large a scale: with ``loss_type='mse'`` in float32, survey totals of ~1e10 are enough).  The engine
    that raises it has stopped with NaNs in its state; ``SparseCalibrationWeights.fit`` and ``refit`` put the model
    back as it was before the call, as ``SparseL0Linear.fit`` does (:func:`kept_if_diverged`)."""


@contextmanager
def kept_if_diverged(call: str, save: Callable[[], object], load: Callable[[object], None]):
    """Runs the body; when it raises :class:`FitDiverged`, gives ``load`` what ``save`` returned before it (the model's
    state) and raises it again, naming ``call`` (e.g. ``"SparseL0Linear.fit"``): a diverging fit loses nothing."""
    saved = save()
    try:
        yield
    except FitDiverged as error:
        load(saved)
        raise FitDiverged(f"{call}: {error}; the model is left as it was before this call") from None


# what to do about a calibration fit that diverged (csrc/calibration_fit.cpp says the same)
CALIBRATION_ADVICE = ("lower lr (the learning rate), rescale the targets (loss_type='relative' divides each by its value), "
                      "or fit in float64 (model.double())")


def raise_if_diverged(stats: Tensor, tensors: Iterable[Tensor], step: int, names: str = "log_weight or log_alpha",
                      advice: str = CALIBRATION_ADVICE, exchange: Callable[[Tensor], None] | None = None) -> None:
    """The engines' :class:`FitDiverged` when ``stats`` (epochs, 4) or ``tensors`` hold NaN or inf (by default the
    text of ``csrc/calibration_fit.cpp``).  ``tensors`` (one or more): the parameters, and Adam's second moments,
    whose overflow to inf stops a parameter dead (a zero step, as ``torch.optim.Adam``'s) where the C++ engine's
    arithmetic makes NaN.
    ``step``: Adam's steps after the last row of ``stats``; the message names the first row that is not finite.
    ``exchange``: a sharded fit's (:class:`FitShard`), which sums the count of ranks whose ``tensors`` are not
    finite, so that every rank raises when one does, as the C++ engine's exchanged NaN flag makes them."""
    bad_rows = torch.nonzero(~torch.isfinite(stats).all(1)).flatten()
    flag = torch.stack([~torch.isfinite(t).all() for t in tensors]).any().double().reshape(1)
    if exchange is not None:
        exchange(flag)
    if len(bad_rows) or bool(flag):  # one read
        step = step - len(stats) + int(bad_rows[0]) if len(bad_rows) else step
        raise FitDiverged(f"{names} became NaN (or their gradients overflowed) after {step} Adam steps; {advice}")
