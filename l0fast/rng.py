"""Gate noise positions: every gated module carries an int64 buffer ``[seed, offset]``.

Noise element ``offset + i`` of seed ``seed`` feeds gate ``i`` of the next draw
(see :mod:`l0fast.ops.philox`); each draw advances ``offset`` by the number of
gates, in place, so ``torch.compile`` sees a tensor, not a changing Python int.
The buffer is not in ``state_dict`` (keys stay l0-python's); save and restore
the stream position explicitly with :func:`rng_state_dict` and
:func:`load_rng_state_dict`.
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Callable

import torch
from torch import Tensor, nn

from .ops import hard_concrete_gated, hard_concrete_sample
from .ops.hard_concrete import advance_rng_state, check_rng_state
from .recompute import before_draw

RNG_BUFFER = "rng_state"


def new_rng_state(seed: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """``[seed, 0]`` as an int64 tensor of shape (2,).

    With ``seed=None`` the seed is drawn from torch's default generator, so
    ``torch.manual_seed(s)`` before building a model makes its gates reproducible;
    under ``with torch.device("meta")``, whose tensors hold no value, from the CPU one.
    """
    if seed is None:
        draw_on = "cpu" if torch.get_default_device().type == "meta" else None
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=draw_on).item())
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    seed = int(seed)
    return torch.tensor([seed, 0], dtype=torch.int64, device=device)


def seed_after_init(seed: int | None, device: torch.device) -> Callable[[], int | None]:
    """Call before a module's random init on ``device`` (a layer's weights, a sparse model's jitter); the
    function it returns, called after that init, gives the seed of the module's gates: ``seed`` when given;
    else one read from the state the init left torch's default generator in, without advancing it.  So the
    module leaves the generator where l0-python's leaves it, and the same ``torch.manual_seed`` gives
    l0-python's initial values, module after module; each init moves the generator, so each module gets a
    seed of its own.  When the init drew nothing from it (a meta device, an init without randomness, a private
    generator) it gives None, for :func:`new_rng_state` to draw a seed, so that modules never share a stream."""
    if seed is not None:
        return lambda: seed
    generator = _default_generator(device)
    before = None if generator is None else generator.get_state()

    def after() -> int | None:
        state = None if generator is None else generator.get_state()
        if state is None or torch.equal(state, before):
            return None
        return int.from_bytes(hashlib.blake2b(state.numpy().tobytes(), digest_size=8).digest(), "little") >> 2

    return after


def _default_generator(device: torch.device) -> torch.Generator | None:
    """torch's default generator for ``device`` (cpu or cuda), which ``nn.init`` draws from; None for others."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return None


def reseed(module: "HasRngState", seed: int | None) -> None:
    """Restart ``module``'s stream at ``[seed, 0]`` (``seed=None``: drawn as :func:`new_rng_state` draws it)."""
    with torch.no_grad():
        module.rng_state.copy_(new_rng_state(seed))


def register_rng_state(module: "HasRngState", seed: int | None = None, device=None) -> None:
    """Give ``module`` its non-persistent ``rng_state`` buffer."""
    module.register_buffer(RNG_BUFFER, new_rng_state(seed, device), persistent=False)


class HasRngState(nn.Module):
    """A module with an ``rng_state`` buffer (:func:`register_rng_state`), kept int64 by every conversion:
    ``module.type(torch.float64)`` converts every buffer, and a stream position in floating point would lose
    its low bits (and the kernels refuse it).  Devices move it as any buffer."""

    def _apply(self, fn, recurse=True):
        state = self._buffers.get(RNG_BUFFER)
        module = super()._apply(fn, recurse)
        converted = self._buffers.get(RNG_BUFFER)
        if state is not None and converted is not None and converted.dtype != state.dtype:
            self._buffers[RNG_BUFFER] = state.to(converted.device)
        return module


def sample_gates(log_alpha: Tensor, rng_state: Tensor, beta: float, gamma: float, zeta: float, *,
                 first: int = 0, total: int | None = None) -> Tensor:
    """Differentiable hard-concrete sample that advances ``rng_state`` by ``log_alpha.numel()``.

    A shard of a larger set of gates (:mod:`l0fast.distributed`) passes its
    ``first`` gate's index and the ``total``: gate ``i`` then draws noise
    element ``offset + first + i`` and the stream advances by ``total``.
    """
    before_draw(rng_state)
    state = rng_state if first == 0 else rng_state + torch.tensor([0, first], dtype=rng_state.dtype, device=rng_state.device)
    gates = hard_concrete_sample(log_alpha, state, beta, gamma, zeta)
    advance_rng_state(rng_state, log_alpha.numel() if total is None else total)
    return gates


def sample_gated(log_alpha: Tensor, rng_state: Tensor, beta: float, gamma: float, zeta: float, *,
                 weight: Tensor | None = None, on_backward=None) -> tuple[Tensor, Tensor]:
    """``(gates or weight * gates, penalty)`` from one pass (:func:`~l0fast.ops.hard_concrete_gated`);
    advances ``rng_state`` by ``log_alpha.numel()`` like :func:`sample_gates`, whose gates these are."""
    before_draw(rng_state)
    out = hard_concrete_gated(log_alpha, rng_state, beta, gamma, zeta, weight=weight, on_backward=on_backward)
    advance_rng_state(rng_state, log_alpha.numel())
    return out


def _streams(model: nn.Module) -> dict[str, Tensor]:
    """Every ``rng_state`` buffer in ``model``, keyed by qualified name."""
    return {name: buf for name, buf in model.named_buffers() if name.split(".")[-1] == RNG_BUFFER}


def rng_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every ``rng_state`` buffer in ``model``, keyed by qualified name."""
    return {name: buf.detach().clone().cpu() for name, buf in _streams(model).items()}


def reseed_rng_state(model: nn.Module) -> None:
    """Give every ``rng_state`` stream in ``model`` a new seed from torch's default generator, at offset 0:
    copies of a model (``copy.deepcopy``, pickling) hold their original's streams and draw its gates, and a
    model materialized from the meta device holds none.  ``torch.manual_seed`` before it reproduces the seeds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with torch.no_grad():
        for buf in _streams(model).values():
            buf.copy_(new_rng_state())


def load_rng_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Restore positions saved by :func:`rng_state_dict`; names must match exactly."""
    buffers = _streams(model)
    if set(buffers) != set(state):
        raise KeyError(
            f"rng state names differ: missing {sorted(set(buffers) - set(state))}, "
            f"unexpected {sorted(set(state) - set(buffers))}"
        )
    for name in buffers:
        check_rng_state(state[name], f"rng state {name!r}")
        seed, offset = (int(v) for v in state[name])
        if seed < 0 or offset < 0:
            raise ValueError(f"rng state {name!r} has a negative {'seed' if seed < 0 else 'offset'} ({[seed, offset]}); "
                             "pass what rng_state_dict returned")
    with torch.no_grad():
        for name, buf in buffers.items():
            buf.copy_(state[name])
