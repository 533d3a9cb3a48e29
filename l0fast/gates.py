"""Standalone L0 gates for choosing items: samples, features, or a mix with random picks.

Each gate wraps one :class:`~l0fast.distributions.HardConcrete` of shape ``(size,)``
named ``gates`` (``l0_gate.gates`` for :class:`HybridGate`), so ``state_dict``
keys are l0-python's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .distributions import HardConcrete, _check_fraction, _check_size
from .ops.hard_concrete import check_number


def _check_length(where: str, name: str, x, dim: int, size: int, numpy_ok: bool = False, broadcast_ok: bool = False) -> None:
    """TypeError unless ``x`` is a tensor (or, ``numpy_ok``, a numpy array); ValueError unless ``x.shape[dim] == size``
    (or 1, with ``broadcast_ok``)."""
    if not isinstance(x, (Tensor, np.ndarray) if numpy_ok else Tensor):
        kinds = "a torch.Tensor or a numpy array" if numpy_ok else "a torch.Tensor"
        raise TypeError(f"{where}: {name} must be {kinds}, got {type(x).__name__}; convert it with torch.as_tensor")
    allowed = (size, 1) if broadcast_ok else (size,)
    if not -x.ndim <= dim < x.ndim or x.shape[dim] not in allowed:
        got = f"shape {tuple(x.shape)}" if -x.ndim <= dim < x.ndim else f"a {x.ndim}-dim {type(x).__name__}"
        either = " or 1 (broadcast)" if broadcast_ok else ""
        raise ValueError(f"{where}: {name}.shape[{dim}] must equal {size} (one entry per gate){either}, got {got}")


def _indices_for(data, indices: Tensor):
    """``indices`` as ``data`` takes them: a numpy array indexes with numpy integers (as l0-python's selections
    return a numpy array's rows or columns), a tensor with the tensor."""
    return indices.cpu().numpy() if isinstance(data, np.ndarray) else indices


class L0Gate(nn.Module):
    """``size`` Hard Concrete gates with helpers to apply them and list the active ones.

    >>> g = L0Gate(5, init_mean=0.9, seed=0).eval()
    >>> g.apply_gates(torch.ones(5, 2), dim=0).shape
    torch.Size([5, 2])
    """

    def __init__(self, size: int, temperature: float = 0.5, init_mean: float = 0.5, *, seed: int | None = None):
        super().__init__()
        self.size = _check_size(size, "size")
        self.temperature = temperature
        self.init_mean = init_mean
        self.gates = HardConcrete(size, temperature=temperature, init_mean=init_mean, seed=seed)

    def get_gates(self) -> Tensor:
        """Gate values, shape ``(size,)``: sampled in training mode, the mean in eval."""
        return self.gates()

    def apply_gates(self, x: Tensor, dim: int = 0) -> Tensor:
        """``x`` multiplied by the gates along ``dim`` (``x.shape[dim]`` is ``size``, or 1 to broadcast, as l0-python's)."""
        _check_length("apply_gates", "x", x, dim, self.size, broadcast_ok=True)
        shape = [1] * x.dim()
        shape[dim] = -1
        return x * self.get_gates().view(shape)

    def get_penalty(self) -> Tensor:
        """Expected number of active gates (differentiable)."""
        return self.gates.get_penalty()

    @torch.no_grad()
    def get_active_indices(self, threshold: float = 0.5) -> Tensor:
        """1-D indices of the gates whose current value exceeds ``threshold`` (a finite number; below 0: every gate)."""
        check_number("threshold", threshold)
        return torch.nonzero(self.get_gates() > threshold).flatten()


class SampleGate(L0Gate):
    """Select about ``target_samples`` of ``n_samples`` rows (init mean ``target / n``)."""

    def __init__(self, n_samples: int, target_samples: int, temperature: float = 0.25, *, seed: int | None = None):
        _check_size(n_samples, "n_samples")
        check_number("target_samples", target_samples, 0, n_samples)
        super().__init__(size=n_samples, temperature=temperature, init_mean=target_samples / n_samples, seed=seed)
        self.n_samples = n_samples
        self.target_samples = target_samples

    def select_samples(self, data: Tensor | np.ndarray) -> tuple[Tensor | np.ndarray, Tensor]:
        """``(data[idx], idx)`` for the active gates.  data: (n_samples, ...), a tensor or a numpy array."""
        _check_length("select_samples", "data", data, 0, self.n_samples, numpy_ok=True)
        indices = self.get_active_indices()
        return data[_indices_for(data, indices)], indices

    def select_weighted_samples(self, data: Tensor | np.ndarray, weights: Tensor) -> tuple[Tensor | np.ndarray, Tensor, Tensor]:
        """``(data[idx], (weights * gates)[idx], idx)`` where ``weights * gates > 1e-8``.

        data: (n_samples, ...), a tensor or a numpy array; weights: (n_samples,).
        """
        _check_length("select_weighted_samples", "data", data, 0, self.n_samples, numpy_ok=True)
        _check_length("select_weighted_samples", "weights", weights, 0, self.n_samples)
        if weights.dim() != 1 or not torch.isfinite(weights).all():
            raise ValueError(f"select_weighted_samples: weights must be a finite 1-D tensor ({self.n_samples},), got shape {tuple(weights.shape)} with NaN/inf or extra dims")
        gated = weights * self.get_gates()
        indices = torch.nonzero(gated > 1e-8).flatten()
        return data[_indices_for(data, indices)], gated[indices], indices


class FeatureGate(L0Gate):
    """Select about ``max_features`` of ``n_features`` columns (init mean ``min(max / n, 0.99)``)."""

    def __init__(self, n_features: int, max_features: int, temperature: float = 0.1, *, seed: int | None = None):
        _check_size(n_features, "n_features")
        check_number("max_features", max_features, 0)
        super().__init__(
            size=n_features, temperature=temperature, init_mean=min(max_features / n_features, 0.99), seed=seed
        )
        self.n_features = n_features
        self.max_features = max_features

    def select_features(self, data: Tensor | np.ndarray) -> tuple[Tensor | np.ndarray, Tensor]:
        """``(data[..., idx], idx)`` for the active gates.  data: (..., n_features), a tensor or a numpy array."""
        _check_length("select_features", "data", data, -1, self.n_features, numpy_ok=True)
        indices = self.get_active_indices()
        return data[..., _indices_for(data, indices)], indices

    def select_features_with_names(self, data: Tensor | np.ndarray, feature_names: list[str]) -> tuple[Tensor | np.ndarray, list[str]]:
        """Like :meth:`select_features`, returning the chosen names instead of indices."""
        if len(feature_names) != self.n_features:
            raise ValueError(f"feature_names must have one name per feature ({self.n_features}), got {len(feature_names)}")
        selected, indices = self.select_features(data)
        return selected, [feature_names[i] for i in indices.tolist()]

    @torch.no_grad()
    def get_feature_importance(self) -> Tensor:
        """``P(gate != 0)`` per feature, shape ``(n_features,)``."""
        return self.gates.get_active_prob()


class HybridGate(nn.Module):
    """Pick ``target_items`` items: ``l0_fraction`` by an L0 gate, ``random_fraction`` uniformly at random.

    ``target_items`` defaults to ``int(0.2 * n_items)``.  It may exceed ``n_items`` (as in l0-python), as long
    as the L0 part ``int(target_items * l0_fraction)`` does not; the random part then takes every item left.
    """

    def __init__(
        self,
        n_items: int,
        l0_fraction: float = 0.25,
        random_fraction: float = 0.75,
        target_items: int | None = None,
        temperature: float = 0.25,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        _check_size(n_items, "n_items")
        _check_fraction(l0_fraction, "l0_fraction")
        _check_fraction(random_fraction, "random_fraction")
        if l0_fraction + random_fraction > 1.0:
            raise ValueError(
                f"l0_fraction + random_fraction must be <= 1, got {l0_fraction} + {random_fraction}; lower one of them"
            )
        if target_items is not None:
            check_number("target_items", target_items, 0, hint=" (0 or None: 20% of n_items)")
            if int(target_items * l0_fraction) > n_items:
                raise ValueError(
                    f"target_items * l0_fraction (the L0 gate's share, {target_items} * {l0_fraction}) must be <= "
                    f"n_items ({n_items}); lower target_items or l0_fraction"
                )
        self.n_items = n_items
        self.l0_fraction = l0_fraction
        self.random_fraction = random_fraction
        self.target_items = target_items or int(n_items * 0.2)
        self.n_l0 = int(self.target_items * l0_fraction)
        self.n_random = int(self.target_items * random_fraction)
        self.l0_gate = SampleGate(n_samples=n_items, target_samples=self.n_l0, temperature=temperature, seed=seed)

    def select(self, data: Tensor | np.ndarray, random_seed: int | None = None) -> tuple[Tensor | np.ndarray, Tensor, np.ndarray]:
        """``(data[idx], idx, kind)``: sorted indices and ``kind[i]`` in ``{"l0", "random"}``; data: (n_items, ...),
        a tensor or a numpy array.

        ``random_seed`` seeds torch's generator (as l0-python) and also restarts the
        L0 gate's noise stream at ``[random_seed, 0]``, so equal seeds give equal picks.
        """
        _check_length("select", "data", data, 0, self.n_items, numpy_ok=True)
        if random_seed is not None:
            if isinstance(random_seed, bool) or not isinstance(random_seed, (int, np.integer)):
                raise TypeError(f"random_seed must be an int or None, got {type(random_seed).__name__} {random_seed!r}")
            torch.manual_seed(random_seed)
            rng = self.l0_gate.gates.rng_state
            rng.copy_(torch.tensor([int(random_seed) % 2**63, 0], dtype=rng.dtype))
        l0_idx = self.l0_gate.get_active_indices()
        free = torch.ones(self.n_items, dtype=torch.bool)
        free[l0_idx.cpu()] = False
        available = torch.nonzero(free).flatten()
        n_random = min(self.n_random, len(available))
        random_idx = available[torch.randperm(len(available))[:n_random]].to(l0_idx.device)
        selected, order = torch.sort(torch.cat([l0_idx, random_idx]))
        kind = np.where(order.cpu().numpy() < len(l0_idx), "l0", "random").astype("<U6")
        return data[_indices_for(data, selected)], selected, kind

    def get_penalty(self) -> Tensor:
        """L0 penalty of the L0 part."""
        return self.l0_gate.get_penalty()
