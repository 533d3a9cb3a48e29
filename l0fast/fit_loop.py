"""The epochs of one ``fit``/``refit`` call: the engine run in chunks, with history, progress and checkpoints.

The engine (:mod:`l0fast.engine`) runs whole chunks of epochs; a chunk ends
at every multiple of ``verbose_freq`` (a :attr:`history` row, l0's printout
when ``verbose``, the progress bar's update) and of ``checkpoint_every`` (an
atomic checkpoint), counted from the start of the fit, and at its end.
Where a fit is cut does not change its result (the engines' pending state
continues bit for bit); before a checkpoint the engine finishes its chunk
without drawing the next epoch's gates, so the saved noise position is the
one a resumed fit must start from.  With ``checkpoint_seconds`` a chunk that
ends at a history row also ends in a checkpoint when it starts that many
seconds or more after the last one (rank 0's clock decides for every rank).
Within a chunk the engine runs pieces of ~:data:`PIECE_SECONDS` (at least one
epoch) at the rate measured so far (rank 0's), so the bar moves and Ctrl-C
lands within about that time, or one epoch where an epoch takes longer.

In a fit sharded over processes (``run.group``) the history's estimates and
counts are summed over the shards, checkpoints are sharded
(:mod:`l0fast.distributed.checkpoint`) and only rank 0 prints and shows the bar.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .diagnostics import history_record, weight_histogram
from .engine import FitOptions
from .ops import gated_sparse_product


PIECE_SECONDS = 0.5  # the longest run of epochs (at the measured rate) between the engine's returns to Python
PROGRESS = (False, True, "always", "lines")


def show_progress(progress) -> bool:
    """Whether a bar is drawn; ``progress``: False (off), True (a bar when stderr is a terminal), ``"always"`` (a bar,
    e.g. in CI logs) or ``"lines"`` (one line on stderr per history row: no bar)."""
    if progress not in PROGRESS:
        raise ValueError(f"progress must be False, True, 'always' or 'lines', got {progress!r}")
    return progress == "always" or (progress is True and sys.stderr.isatty())


def _pieces(engine, epochs: int, finish: bool, pace: list, advanced, group=None) -> Tensor:
    """``engine.run(epochs, finish)`` in pieces of ~PIECE_SECONDS each at the rate in ``pace`` ([epochs per second],
    updated; 0: unknown, one epoch first), ``advanced(n)`` after each; the last piece's stats (n, 4).  In a sharded
    fit (``group``) every rank runs rank 0's pieces: an engine may run collectives per call (the Triton engine's
    divergence check)."""
    done = 0
    while True:
        piece = epochs - done if pace[0] == float("inf") else max(1, min(epochs - done, int(pace[0] * PIECE_SECONDS)))
        if group is not None:
            piece = group.objects(piece)[0]
        start = time.perf_counter()
        stats = engine.run(piece, finish=finish and done + piece == epochs)
        elapsed = time.perf_counter() - start
        pace[0] = piece / elapsed if elapsed > 0 else float("inf")
        done += piece
        advanced(piece)
        if done == epochs:
            return stats


@dataclass
class FitRun:
    """One fit call's schedule: ``epochs`` in all, ``done`` of them already (a resumed fit), and where to save."""

    epochs: int
    verbose_freq: int
    verbose: bool = False
    progress: bool | str = False
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None  # also at a history row whose chunk starts this long after the last checkpoint
    done: int = 0
    record: dict = field(default_factory=dict)  # options and data fingerprint, saved with each checkpoint
    group: object = None  # the ShardGroup of a fit sharded over processes (l0fast.distributed), or None
    before_end: dict | None = None  # a resumed finished fit's state before its end, carried to its next checkpoint
    resume: bool = False  # resume was asked for (a Progress says whether it found a checkpoint)
    progress_shown: Progress | None = None  # set by showing()
    phase: str = "fit"  # "fit" or "refit" (SparseCalibrationWeights.refit): its history rows' and progress's name

    @property
    def label(self) -> str:
        """What the progress puts before "epoch": "" for a fit, "refit " for a refit."""
        return "" if self.phase == "fit" else f"{self.phase} "

    @property
    def leads(self) -> bool:
        """Whether this process prints and shows the bar: rank 0 of a sharded fit, or the only one."""
        return self.group is None or self.group.rank == 0

    def boundaries(self) -> list[int]:
        """Epoch counts (from the fit's start) where a chunk ends."""
        stops = {self.epochs}
        for every in (self.verbose_freq, self.checkpoint_every):
            if every:
                stops.update(range(every, self.epochs, every))
        return sorted(s for s in stops if s > self.done)

    def saves_at(self, stop: int, last_save: float) -> bool:
        """Whether the chunk ending at ``stop`` ends in a checkpoint (``last_save``: time.monotonic() of the last)."""
        if self.checkpoint is None:
            return False
        if stop == self.epochs or (self.checkpoint_every and stop % self.checkpoint_every == 0):
            return True
        if self.checkpoint_seconds is None or stop % self.verbose_freq:
            return False
        due = time.monotonic() - last_save >= self.checkpoint_seconds
        return due if self.group is None else self.group.objects(due)[0]  # rank 0's clock, for every rank


class Progress:
    """What a fit shows on stderr as it runs, on rank 0 only: a tqdm bar (``run.progress`` True on a terminal, or
    ``"always"``) or one line per history row (``"lines"``, for logs), and where a resume started."""

    def __init__(self, run: FitRun):
        self.run = run
        self.lines = run.leads and run.progress == "lines"
        self.bar = tqdm(total=run.epochs, initial=run.done, unit="epoch", desc=run.label.strip() or None,
                        disable=not (run.leads and show_progress(run.progress)), leave=True)
        if run.resume and run.done:
            self.say(f"resuming {run.checkpoint} at epoch {run.done:,} of {run.epochs:,}")
        elif run.resume:
            self.say(f"no checkpoint at {run.checkpoint} to resume: starting a new fit")

    def say(self, text: str) -> None:
        if self.lines or not self.bar.disable:
            tqdm.write(text, file=sys.stderr)

    def show(self, row: dict, stop: int, note: str = "") -> None:
        """``row`` (a :attr:`history` row, after ``stop`` of the run's epochs) on the bar, or as a line; ``note`` says
        what it follows."""
        error, loss = f"{row['mean_relative_error']:.3%}", f"{row['loss']:.4g}"
        self.bar.set_postfix(loss=loss, mean_rel_err=error, active=row["active"], refresh=note != "")
        if self.lines:
            print(f"{self.run.label}epoch {stop:,}/{self.run.epochs:,}{note}: loss {loss}, mean |relative error| {error}, "
                  f"active {row['active']:,}", file=sys.stderr, flush=True)


@contextmanager
def showing(run: FitRun):
    """``run.progress_shown``, a :class:`Progress`, for the block's epochs and what ends the fit; closed after."""
    run.progress_shown = Progress(run)
    try:
        yield
    finally:
        run.progress_shown.bar.close()


def run_epochs(model, engine, op, y: torch.Tensor, groups, options: FitOptions, run: FitRun, after_chunk=None) -> None:
    """Runs ``run.epochs - run.done`` epochs of ``engine`` on ``model`` (see the module docstring), under :func:`showing`."""
    done, pace, last_save = run.done, [0.0], time.monotonic()
    for stop in run.boundaries():
        saving = run.saves_at(stop, last_save)
        # finish before a checkpoint: no next gates drawn ahead, so the saved noise position is exact
        stats = _pieces(engine, stop - done, stop == run.epochs or saving, pace, run.progress_shown.bar.update, run.group)
        data_loss, sum_p, sum_e2, lambda_l0 = stats[-1].tolist()
        if after_chunk is not None:
            after_chunk()
        model.epochs_trained += stop - done
        done = stop
        loss = data_loss + lambda_l0 * sum_p + options.lambda_l2 * sum_e2
        if stop % run.verbose_freq == 0 or stop == run.epochs:
            _record(model, op, y, groups, lambda_l0, run, stop, loss)
        if saving:
            save_checkpoint(model, run, stop)
            last_save = time.monotonic()


def save_checkpoint(model, run: FitRun, stop: int, before_end: dict | None = None) -> None:
    """Write ``run``'s checkpoint of ``model`` after ``stop`` of its epochs (sharded under a process group);
    ``before_end``: a finished fit's state before its end (``SparseCalibrationWeights._before_end``)."""
    state = ckpt.model_state(model, {**run.record, "epochs": run.epochs, "done": stop, "before_end": before_end})
    if run.group is None:
        ckpt.write_atomic(state, run.checkpoint)
    else:
        from .distributed import checkpoint as sharded

        sharded.write(run.group, state, run.checkpoint, stop, (model.household_offset, model.n_features))


def _record(model, op, y, groups, lambda_l0: float, run: FitRun, stop: int, loss: float) -> None:
    row, estimate, counts = _history_row(model, op, y, run, loss, lambda_l0)
    model.history.append(row)
    run.progress_shown.show(row, stop)
    if run.verbose and stop % run.verbose_freq == 0 and run.leads:
        model._print_progress(stop, counts, estimate, y, groups, loss)


def _history_row(model, op, y, run: FitRun, loss: float, lambda_l0: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(history row, estimate (Q,), weight histogram) of ``model``'s deterministic weights now."""
    with torch.no_grad():
        weights = model.get_weights(deterministic=True)
        estimate = gated_sparse_product(op, weights).double()
        counts = weight_histogram(weights)
        if run.group is not None:
            estimate, counts = run.group.sum(estimate), run.group.sum(counts)
    return history_record(model.epochs_trained, loss, estimate, y, int(counts.sum()), lambda_l0, run.phase), estimate, counts


def refresh_last_record(model, op, y, run: FitRun, note: str) -> None:
    """After the end of a fit (snap, projection; ``note`` names it for the progress shown): its last history row
    describes the model the fit returns (same epoch, loss and multiplier; errors and active count of the final weights)."""
    last = model.history[-1] if model.history else None
    if last is not None and last["epoch"] == model.epochs_trained:
        model.history[-1] = _history_row(model, op, y, run, last["loss"], last["lambda_l0"])[0]
        run.progress_shown.show(model.history[-1], run.epochs, note)


def chunk_size(verbose_freq, epochs: int) -> int:
    """The history cadence: ``verbose_freq``, or the whole fit where l0 would ignore it (verbose=False)."""
    return int(verbose_freq) if isinstance(verbose_freq, (int, np.integer)) and verbose_freq > 0 else max(epochs, 1)

