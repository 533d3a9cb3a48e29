"""Activation checkpointing (``torch.utils.checkpoint``) of regions that sample gates.

A checkpointed region runs its forward again during the backward pass, and
the gradients are right only if the rerun computes what the forward did.
l0-python's gates draw from torch's generator, which checkpoint rewinds for the
rerun.  l0fast's draw from each gate module's own stream (its ``rng_state``),
which has moved on by then: the rerun would sample other gates.  Pass
:func:`checkpoint_context` to rewind those streams for the rerun::

    torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, context_fn=l0fast.checkpoint_context)

The rerun then draws the forward's gates and leaves every stream where it
was; the gradients equal those of the same step without checkpointing.
(``checkpoint_sequential`` passes no ``context_fn``: checkpoint its segments
one by one.)
Sampling gates during a backward pass otherwise raises (eval-mode gates draw
no noise and need nothing).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor


class _ThreadState(threading.local):
    """Per thread (a forward and its draws run in one thread, a rerun and its draws in the backward's):
    ``recording``, one dict per checkpointed forward now running (rng_state tensor -> its value before the
    region's first draw); ``replaying``, the reruns now running under checkpoint_context."""

    def __init__(self):
        self.recording: list[dict[Tensor, Tensor]] = []
        self.replaying = 0


_state = _ThreadState()


def checkpoint_context() -> tuple[_Record, _Replay]:
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the forward records
    where each gate stream it draws from started; each rerun (one per backward through a retained graph)
    starts them there and puts them back afterwards."""
    started: dict[Tensor, Tensor] = {}
    return _Record(started), _Replay(started)


class _Record:
    """Context of a checkpointed forward: :func:`before_draw` notes each stream's position into ``started``."""

    def __init__(self, started: dict[Tensor, Tensor]):
        self.started = started

    def __enter__(self):
        _state.recording.append(self.started)

    def __exit__(self, *_exc):
        _state.recording.pop()


class _Replay:
    """Context of a rerun, entered once per backward: streams at their recorded start, then back."""

    def __init__(self, started: dict[Tensor, Tensor]):
        self.started, self.after = started, {}

    def __enter__(self):
        self.after = {state: state.clone() for state in self.started}
        for state, start in self.started.items():
            state.copy_(start)
        _state.replaying += 1

    def __exit__(self, *_exc):
        _state.replaying -= 1
        for state, position in self.after.items():
            state.copy_(position)


def replaying() -> bool:
    """True while a checkpointed forward reruns under :func:`checkpoint_context` (its penalty is not one for
    ``get_penalty()`` to reuse: the rerun only refills what the forward's graph saved)."""
    return _state.replaying > 0


def before_draw(rng_state: Tensor) -> None:
    """Called before gates are sampled from ``rng_state``: records its position for each checkpointed forward
    now running, and raises when a backward pass reruns a forward without :func:`checkpoint_context`.
    Nothing while compiling: the compiled graph holds no Python state to record."""
    if torch.compiler.is_compiling():
        return
    for started in _state.recording:
        if rng_state not in started:
            started[rng_state] = rng_state.clone()
    if not _state.replaying and torch._C._current_graph_task_id() != -1:
        raise RuntimeError(
            "l0fast: gates sampled during a backward pass, as torch.utils.checkpoint reruns a checkpointed forward. "
            "The gates' noise streams have moved on since the forward, so the rerun would sample other gates and "
            "the gradients would be wrong. Pass context_fn=l0fast.checkpoint_context (with use_reentrant=False) "
            "to rerun the forward's gates (torch.utils.checkpoint.checkpoint_sequential takes no context_fn: "
            "checkpoint each segment with checkpoint(...) instead), or checkpoint the gated layers in eval mode only."
        )
