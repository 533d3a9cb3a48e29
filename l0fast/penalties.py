"""Model-wide L0 / L2 penalties, sparsity reports, temperature annealing and a metric log.

Every L0 penalty is the sum of the layers' ``get_l0_penalty()``, i.e. of
``sum(sigmoid(clamp(qz_logits) - beta * log(-gamma / zeta)))`` on the fused op.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .distributions import HardConcrete, check_module
from .ops.hard_concrete import check_number, refuse_gradient


def compute_l0_penalty(model: nn.Module) -> Tensor:
    """Sum of ``get_l0_penalty()`` over every submodule that has one (0-dim tensor)."""
    check_module(model)
    penalty = torch.tensor(0.0)
    for m in model.modules():
        if hasattr(m, "get_l0_penalty"):
            penalty = penalty + m.get_l0_penalty()
    return penalty


def compute_l2_penalty(model: nn.Module) -> Tensor:
    """``sum(p ** 2)`` over trainable parameters whose name contains ``"weight"``."""
    check_module(model)
    penalty = torch.tensor(0.0)
    for name, p in model.named_parameters():
        if "weight" in name and p.requires_grad:
            penalty = penalty + (p**2).sum()
    return penalty


def compute_l0l2_penalty(model: nn.Module, l0_lambda: float = 1e-3, l2_lambda: float = 1e-4) -> Tensor:
    """``l0_lambda * compute_l0_penalty(model) + l2_lambda * compute_l2_penalty(model)``; lambdas finite, >= 0."""
    check_number("l0_lambda", l0_lambda, 0)
    check_number("l2_lambda", l2_lambda, 0)
    return l0_lambda * compute_l0_penalty(model) + l2_lambda * compute_l2_penalty(model)


def get_sparsity_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{name: {"sparsity", "active_params", "total_params"}}`` for every L0 layer."""
    check_module(model)
    stats = {}
    for name, m in model.named_modules():
        if not (hasattr(m, "get_sparsity") and hasattr(m, "get_l0_penalty")):
            continue
        active = m.get_l0_penalty().item()
        if hasattr(m, "weight"):
            total = m.weight.numel()
        elif hasattr(m, "gates"):
            total = m.gates.gate_size
            if isinstance(total, tuple):
                total = np.prod(total)
        else:
            total = active / (1 - m.get_sparsity())
        stats[name] = {"sparsity": m.get_sparsity(), "active_params": active, "total_params": total}
    return stats


def get_active_parameter_count(model: nn.Module) -> int:
    """Sum over L0 layers of ``int(expected number of active gates)``."""
    check_module(model)
    return sum(int(m.get_l0_penalty().item()) for m in model.modules() if hasattr(m, "get_l0_penalty"))


class TemperatureScheduler:
    """Anneal the gate temperature from ``initial_temp`` to ``final_temp`` over ``anneal_epochs``.

    With ``p = epoch / anneal_epochs`` (``final_temp`` once ``p >= 1``):
    ``linear``: ``T0 - (T0 - T1) p``; ``exponential``: ``T0 (T1 / T0) ** p``;
    ``cosine``: ``T1 + (T0 - T1) (1 + cos(pi p)) / 2``.

    >>> TemperatureScheduler(2.0, 0.5, anneal_epochs=10, schedule="linear").get_temperature(5)
    1.25
    """

    SCHEDULES = ("linear", "exponential", "cosine")

    def __init__(
        self,
        initial_temp: float = 2.0,
        final_temp: float = 0.1,
        anneal_epochs: int = 100,
        schedule: str = "exponential",
    ):
        for value, name in ((initial_temp, "initial_temp"), (final_temp, "final_temp")):
            check_number(name, value, 0, open_lo=True)
        check_number("anneal_epochs", anneal_epochs, 0, hint=" (0: final_temp from the start)")
        if schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, self.SCHEDULES))}; got {schedule!r}")
        self.initial_temp = initial_temp
        self.final_temp = final_temp
        self.anneal_epochs = anneal_epochs
        self.schedule = schedule

    def get_temperature(self, epoch: int) -> float:
        """Temperature at ``epoch`` (a number >= 0), a float."""
        check_number("epoch", epoch, 0)
        if epoch >= self.anneal_epochs:
            return float(self.final_temp)
        p = epoch / self.anneal_epochs
        t0, t1 = self.initial_temp, self.final_temp
        if self.schedule == "linear":
            return float(t0 - (t0 - t1) * p)
        if self.schedule == "exponential":
            return float(math.exp(math.log(t0) - (math.log(t0) - math.log(t1)) * p))
        if self.schedule == "cosine":
            return float(t1 + (t0 - t1) * (1 + math.cos(math.pi * p)) / 2)
        raise ValueError(f"schedule must be one of {', '.join(map(repr, self.SCHEDULES))}; got {self.schedule!r}")


def update_temperatures(model: nn.Module, temperature: float) -> None:
    """Set ``temperature`` (finite, > 0) on every Hard Concrete in ``model`` (layer gates, gate modules, bare ones)."""
    check_module(model)
    refuse_gradient("temperature", temperature)
    temperature = check_number("temperature", temperature, 0, open_lo=True, hint=" (gates harden as it approaches 0; try 0.1-2.0)")
    for m in model.modules():
        for attr in ("weight_gates", "channel_gates"):
            if hasattr(m, attr):
                getattr(m, attr).temperature = temperature
        if hasattr(m, "gates") and hasattr(m.gates, "temperature"):
            m.gates.temperature = temperature
        if isinstance(m, HardConcrete):
            m.temperature = temperature


class PenaltyTracker:
    """Named lists of logged values, with summary stats, CSV export and plots."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = defaultdict(list)

    def log(self, name: str, value: float) -> None:
        """Append ``value`` (a real number or a one-element tensor) to metric ``name``."""
        try:
            _as_float(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"PenaltyTracker.log: value for {name!r} must be a number, got {type(value).__name__} {value!r:.60}") from err
        self.history[name].append(value)

    def get_history(self, name: str) -> list[float]:
        """All values logged under ``name``."""
        return self.history[name]

    def get_stats(self, name: str) -> dict[str, float]:
        """``{"mean", "std", "min", "max", "last"}`` of ``name``; ``{}`` if nothing was logged."""
        values = self.history[name]
        if not values:
            return {}
        v = np.array([_as_float(x) for x in values])
        return {
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
            "last": values[-1],
        }

    def clear(self) -> None:
        """Forget every metric."""
        self.history.clear()

    def save_to_csv(self, filepath: str) -> None:
        """Write the history to ``filepath``, one column per metric (needs pandas)."""
        import pandas as pd

        pd.DataFrame(self.history).to_csv(filepath, index=False)

    def plot_history(self, metrics: list[str] | None = None, save_path: str | None = None) -> None:
        """One subplot per metric (default: all); save to ``save_path`` or show (needs matplotlib)."""
        import matplotlib.pyplot as plt

        metrics = metrics or list(self.history)
        _, axes = plt.subplots(len(metrics), 1, figsize=(10, 4 * len(metrics)), squeeze=False)
        for ax, metric in zip(axes[:, 0], metrics):
            ax.plot(self.history[metric])
            ax.set_title(metric)
            ax.set_xlabel("Step")
            ax.set_ylabel("Value")
            ax.grid(True)
        plt.tight_layout()
        if save_path:
            plt.savefig(save_path)
        else:
            plt.show()


def _as_float(value) -> float:
    """``value`` (a real number or a one-element tensor, detached first: no requires_grad warning) as a float;
    TypeError for text, which ``float`` would parse."""
    if isinstance(value, (str, bytes)):
        raise TypeError("a string")
    return float(value.detach() if isinstance(value, Tensor) else value)
