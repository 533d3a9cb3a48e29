"""Exact checkpoints of a calibration fit: everything needed to continue it bit for bit.

A checkpoint (one ``torch.save`` file, written atomically: temp file + rename,
so a crash mid-write leaves the previous one intact) holds the model's
constructor arguments, ``log_weight`` and ``log_alpha``, the initial weights,
the gate-noise stream position (``rng_state``), Adam's step and moments, the
epochs trained and the history, and the running fit's record: its options,
how many of its epochs are done, and fingerprints of the matrix and targets
(SHA-256 of the converted arrays), so that resuming against other data is
an error naming what differs.  Continuing from a checkpoint, in this or a
new process, gives the same weights as a fit that never stopped.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile

import numpy as np
import torch

from .atomic import atomic_open
from .engine import AdamState, FitTargets
from .engine.state import kept_if_diverged

FORMAT = "l0fast.calibration-checkpoint/1"
_CHUNK = 1 << 22  # elements hashed at a time


def digest(*tensors, dtype=torch.float64) -> str:
    """SHA-256 of the tensors' elements, as ``dtype``, in order."""
    sha = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            sha.update(flat[start : start + _CHUNK].to("cpu", dtype).numpy().tobytes())
    return sha.hexdigest()


def data_fingerprint(matrix, targets: FitTargets) -> dict:
    """What a resumed fit must find unchanged: the matrix (shape, non-zeros, content) and the targets."""
    return {
        "matrix shape": (matrix.num_rows, matrix.col_ptr.numel() - 1),
        "matrix non-zeros": matrix.values.numel(),
        "matrix content": digest(matrix.col_ptr, matrix.row_idx, dtype=torch.int64) + digest(matrix.values, dtype=torch.float64),
        "targets": digest(targets.y, dtype=torch.float64),
        "target loss weights and denominators (the loss, its relative floor, the groups)":
            digest(targets.loss_weight, targets.inv_denom, dtype=torch.float64),
    }


def data_as_given(targets: FitTargets, loss_type: str, relative_floor, target_groups, normalize_groups, group_multipliers) -> dict:
    """What :func:`data_fingerprint` digests for the targets and the loss, as given: the record of a fit holds it, so a
    resume that finds them changed names which (:func:`data_parts`)."""
    if target_groups is not None:
        labels, index = np.unique(np.asarray(target_groups.cpu() if torch.is_tensor(target_groups) else target_groups),
                                  return_inverse=True)
        groups = f"{labels.size} groups, sha256 {digest(torch.as_tensor(index))[:16]}"
    else:
        groups = None
    return {"target values": targets.y.detach().cpu().numpy().copy(),
            "loss": {"loss_type": loss_type, "relative_floor": relative_floor, "target_groups": groups,
                     "normalize_groups": bool(normalize_groups),
                     "group_multipliers": None if group_multipliers is None else sorted(group_multipliers.items())}}


def data_parts(saved: dict | None, current: dict) -> dict:
    """check_same's ``parts`` for the data fingerprint, from two :func:`data_as_given` (``saved`` None for a checkpoint
    written before it was recorded): the loss's settings, and the first target whose value differs."""
    if saved is None:
        return {}
    old, new = saved["target values"], current["target values"]
    differ = np.flatnonzero(old != new) if old.shape == new.shape else None
    if differ is None:
        values = ({"count": old.size}, {"count": new.size})
    elif differ.size:
        row = f"row {differ[0]} (first of {differ.size} that differ)"
        values = ({row: float(old[differ[0]])}, {row: float(new[differ[0]])})
    else:
        values = ({}, {})  # the values alike: the digest shows
    return {"targets": values, "target loss weights and denominators (the loss, its relative floor, the groups)":
            (saved["loss"], current["loss"])}


def loss_fingerprint(loss_type: str, relative_floor, targets: FitTargets, weight_bounds) -> dict:
    """What every rank of a sharded fit or refit must pass alike, besides the options: the loss, the targets as
    it weighs them (groups and multipliers included) and the weight bounds."""
    return {"loss_type": loss_type, "relative_floor": relative_floor, "number of targets (rows of M, y)": targets.y.numel(),
            "target values (y)": digest(targets.y)[:16],
            "target loss weights (target_groups, normalize_groups, group_multipliers)": digest(targets.loss_weight)[:16],
            "weight_bounds": None if weight_bounds is None else tuple(map(float, weight_bounds))}


def model_fingerprint(config: dict, initial_weights) -> dict:
    """What a resumed fit's model must repeat: its constructor settings (seed included) and initial weights."""
    return {**config, "initial weights": digest(initial_weights)}


def options_fingerprint(options, dtype) -> dict:
    """The fit options a resumed fit must repeat (the per-household arrays by one digest; the record of a fit
    also holds :func:`l0fast.household_options.as_given`, which names the one that differs)."""
    plain = {k: v for k, v in vars(options).items() if k != "households"}
    households = options.households
    per_household = None if households is None else digest(*vars(households).values(), dtype=torch.float64)
    return {**plain, "household options": per_household, "dtype": str(dtype)}


def check_same(saved: dict, current: dict, what: str, path, parts: dict | None = None) -> None:
    """ValueError naming every entry of ``current`` that differs from ``saved``.  ``parts`` maps an entry that is
    one digest of several things to ``(saved, current)`` dicts of those things by name: the ones that differ are
    named in its place (a checkpoint written before they were recorded has None: the digests are shown)."""
    differ = [k for k in current if saved.get(k) != current[k]]
    # an entry whose parts are all alike changed with another one (the loss's denominators with the targets)
    explained = [k for k in differ if k in (parts or {}) and not _parts_differ(*parts[k])]
    differ = [k for k in differ if k not in explained] or differ
    if differ:
        detail = "; ".join(_difference(k, saved.get(k), current[k], *(parts or {}).get(k, (None, None))) for k in differ)
        raise ValueError(f"cannot resume from {path}: the {what} differ ({detail}). Resume with the data and options "
                         f"the checkpoint was written with, or start a new fit (resume=False, another checkpoint path).")


def _parts_differ(saved_parts: dict | None, current_parts: dict | None) -> bool:
    """Whether any part differs (True where the checkpoint did not record them)."""
    return saved_parts is None or any(saved_parts.get(p) != current_parts[p] for p in current_parts)


def _difference(name: str, saved, current, saved_parts: dict | None, current_parts: dict | None) -> str:
    """``name: checkpoint <saved>, now <current>``, or the same for each of its parts that differs."""
    named = [] if saved_parts is None else [p for p in current_parts if saved_parts.get(p) != current_parts[p]]
    if not named:
        return f"{name}: checkpoint {saved!r}, now {current!r}"
    return "; ".join(f"{name}: {p}: checkpoint {saved_parts.get(p)!r}, now {current_parts[p]!r}" for p in named)


def write_atomic(state: dict, path) -> None:
    """``torch.save`` to ``path`` through a temp file in the same folder and an atomic rename."""
    with atomic_open(path) as f:
        torch.save(state, f)


def model_state(model, fit_record: dict | None) -> dict:
    """The checkpoint dict of ``model`` (a SparseCalibrationWeights) and its running fit."""
    return {
        "format": FORMAT,
        "config": model.config(),
        "log_weight": model.log_weight.detach().cpu().clone(),
        "log_alpha": model.log_alpha.detach().cpu().clone(),
        "initial_weights": model.initial_weights.detach().cpu().clone(),
        "rng_state": model.rng_state.detach().cpu().clone(),
        "optimizer": None if model.optimizer_state is None else model.optimizer_state.state_dict(),
        "epochs_trained": model.epochs_trained,
        "lambda_l0": model.lambda_l0_,
        "keep": None if model._keep_mask is None else model._keep_mask.cpu().clone(),
        "history": list(model.history),
        "fit": fit_record,
    }


def load(path) -> dict:
    """The dict saved at ``path``, whatever its format (FileNotFoundError if there is none, IsADirectoryError for a
    folder).  ValueError for a file that is not a torch file, is cut short, or whose content fails the checksums
    ``torch.save`` writes into its zip records, which ``torch.load`` does not check (a flipped bit loaded as another
    weight, silently)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file; pass the file (a fit's checkpoint= path, "
                                "or a sharded fit's manifest)")
    try:
        damaged = _damaged_record(path)
        if damaged is not None:
            raise ValueError(f"its record {damaged} fails its checksum")
        state = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise
    except (ValueError, EOFError, OSError, RuntimeError, pickle.UnpicklingError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:80]}); delete it to "
                         "start afresh, or pass another checkpoint path") from error
    return state if isinstance(state, dict) else {}


def _damaged_record(path) -> str | None:
    """The name of the first record of the zip archive at ``path`` whose content does not match its CRC-32, or
    None (also for a file that is not a zip archive: torch.load then says what it is).  Reads the file once
    (about 1 GB/s)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile:
        return None


def read(path) -> dict:
    """A checkpoint dict, checked for its format."""
    return check_format(load(path), path)


def check_format(state: dict, path) -> dict:
    """``state``, if it is a (single-process) calibration checkpoint; ValueError otherwise."""
    if state.get("format") != FORMAT:
        if str(state.get("format", "")).startswith("l0fast.sharded"):
            ranks = state.get("ranks")
            raise ValueError(f"{path} was written by a fit sharded over {ranks} processes; resume it with as many (torchrun "
                             f"--nproc-per-node {ranks}, or process_group= in Python), or load it with load_checkpoint")
        raise ValueError(f"{path} is not an l0fast calibration checkpoint (format {FORMAT})")
    return state


def restore(model, state: dict, path) -> None:
    """Load a checkpoint's parameters, noise position, optimizer, epochs and history into ``model``."""
    n = model.n_features
    if state["log_weight"].shape != (n,):
        raise ValueError(f"{path} holds {state['log_weight'].numel()} weights but the model has n_features={n}")
    with torch.no_grad():
        model.log_weight.copy_(state["log_weight"])
        model.log_alpha.copy_(state["log_alpha"])
        model.initial_weights.copy_(state["initial_weights"])
        model.rng_state.copy_(state["rng_state"])
    optimizer = state["optimizer"]
    model.optimizer_state = None if optimizer is None else AdamState.from_state_dict(optimizer, model.log_weight)
    model.epochs_trained = int(state["epochs_trained"])
    model.lambda_l0_ = state["lambda_l0"]
    model._keep_mask = None if state["keep"] is None else state["keep"].to(model.log_weight.device)
    model.history = list(state["history"])


def restored_if_diverged(model, call: str):
    """:func:`l0fast.engine.state.kept_if_diverged` for a SparseCalibrationWeights ``call`` ("fit", "refit"):
    everything a checkpoint holds (:func:`model_state`) is put back.  Holds a copy of that state on CPU while the
    body runs (7 values per household: parameters, initial weights, Adam's moments)."""
    return kept_if_diverged(f"SparseCalibrationWeights.{call}", lambda: model_state(model, None),
                            lambda before: restore(model, before, "the state before this call"))
