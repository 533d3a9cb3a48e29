"""The epochs of one ``fit``/``refit`` call: the engine run in chunks, with history, progress and checkpoints.

The engine (:mod:`l0fast.engine`) runs whole chunks of epochs; a chunk ends
at every multiple of ``verbose_freq`` (a :attr:`history` row, l0's printout
when ``verbose``, the progress bar's update) and of ``checkpoint_every`` (an
atomic checkpoint), counted from the start of the fit, and at its end.
Where a fit is cut does not change its result (the engines' pending state
continues bit for bit); before a checkpoint the engine finishes its chunk
without drawing the next epoch's gates, so the saved noise position is the
one a resumed fit must start from.  In a fit sharded over processes
(``run.group``) the history's estimates and counts are summed over the
shards, checkpoints are sharded (:mod:`l0fast.distributed.checkpoint`) and
only rank 0 prints and shows the bar.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .diagnostics import history_record, weight_histogram
from .engine import FitOptions
from .ops import gated_sparse_product


def show_progress(progress) -> bool:
    """``progress``: False (off), True (on when stderr is a terminal) or ``"always"`` (forced on, e.g. in logs)."""
    if progress not in (False, True, "always"):
        raise ValueError(f"progress must be False, True or 'always', got {progress!r}")
    return progress == "always" or (progress is True and sys.stderr.isatty())


@dataclass
class FitRun:
    """One fit call's schedule: ``epochs`` in all, ``done`` of them already (a resumed fit), and where to save."""

    epochs: int
    verbose_freq: int
    verbose: bool = False
    progress: bool | str = False
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    done: int = 0
    record: dict = field(default_factory=dict)  # options and data fingerprint, saved with each checkpoint
    group: object = None  # the ShardGroup of a fit sharded over processes (l0fast.distributed), or None
    before_end: dict | None = None  # a resumed finished fit's state before its end, carried to its next checkpoint

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


def run_epochs(model, engine, op, y: torch.Tensor, groups, options: FitOptions, run: FitRun, after_chunk=None) -> None:
    """Runs ``run.epochs - run.done`` epochs of ``engine`` on ``model`` (see the module docstring)."""
    bar = tqdm(total=run.epochs, initial=run.done, unit="epoch", disable=not (run.leads and show_progress(run.progress)), leave=True)
    done = run.done
    try:
        for stop in run.boundaries():
            saving = run.checkpoint is not None and (stop == run.epochs or (run.checkpoint_every and stop % run.checkpoint_every == 0))
            # finish before a checkpoint: no next gates drawn ahead, so the saved noise position is exact
            data_loss, sum_p, sum_e2, lambda_l0 = engine.run(stop - done, finish=stop == run.epochs or saving)[-1].tolist()
            if after_chunk is not None:
                after_chunk()
            model.epochs_trained += stop - done
            bar.update(stop - done)
            done = stop
            loss = data_loss + lambda_l0 * sum_p + options.lambda_l2 * sum_e2
            if stop % run.verbose_freq == 0 or stop == run.epochs:
                _record(model, op, y, groups, lambda_l0, run, stop, loss, bar)
            if saving:
                save_checkpoint(model, run, stop)
    finally:
        bar.close()


def save_checkpoint(model, run: FitRun, stop: int, before_end: dict | None = None) -> None:
    """Write ``run``'s checkpoint of ``model`` after ``stop`` of its epochs (sharded under a process group);
    ``before_end``: a finished fit's state before its end (``SparseCalibrationWeights._before_end``)."""
    state = ckpt.model_state(model, {**run.record, "epochs": run.epochs, "done": stop, "before_end": before_end})
    if run.group is None:
        ckpt.write_atomic(state, run.checkpoint)
    else:
        from .distributed import checkpoint as sharded

        sharded.write(run.group, state, run.checkpoint, stop, (model.household_offset, model.n_features))


def _record(model, op, y, groups, lambda_l0: float, run: FitRun, stop: int, loss: float, bar) -> None:
    row, estimate, counts = _history_row(model, op, y, run, loss, lambda_l0)
    model.history.append(row)
    bar.set_postfix(loss=f"{loss:.4g}", mean_rel_err=f"{row['mean_relative_error']:.3%}", active=row["active"], refresh=False)
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
    return history_record(model.epochs_trained, loss, estimate, y, int(counts.sum()), lambda_l0), estimate, counts


def refresh_last_record(model, op, y, run: FitRun) -> None:
    """After the end of a fit (snap, projection): its last history row describes the model the fit returns (same
    epoch, loss and multiplier; errors and active count of the final weights)."""
    last = model.history[-1] if model.history else None
    if last is not None and last["epoch"] == model.epochs_trained:
        model.history[-1] = _history_row(model, op, y, run, last["loss"], last["lambda_l0"])[0]


def chunk_size(verbose_freq, epochs: int) -> int:
    """The history cadence: ``verbose_freq``, or the whole fit where l0 would ignore it (verbose=False)."""
    return int(verbose_freq) if isinstance(verbose_freq, (int, np.integer)) and verbose_freq > 0 else max(epochs, 1)

