"""Each rank's column block of the calibration matrix (its households), without loading the others.

Households are split into contiguous blocks in rank order.  Two sources:

- a directory of per-shard files ``shard-00000-of-00008.npz``, ... (index
  and count: :func:`write_shards`, which replaces the set a folder held; a
  folder whose ``shard-*-of-*`` files are not one complete set, or hold
  other ``*.npz`` besides, is refused) or of ``*.npz`` of other names (taken
  in natural order: numbers by value, so ``part-5`` before ``part-10``), each a scipy sparse matrix with every target as a row
  and its block of households as columns: a rank reads only its own files
  (with more files than ranks, contiguous runs of files balanced by
  household count), so memory splits;
- one ``.npz`` holding the whole matrix: every rank reads it and keeps its
  columns (:func:`shard_bounds`) — convenient, but each rank briefly holds
  the whole matrix.
"""

from __future__ import annotations

import glob
import os
import re
import zipfile

import numpy as np
from scipy import sparse as sp

SHARD_PATTERN = "shard-{:05d}-of-{:05d}.npz"  # index, count
_NUMBERED = re.compile(r"shard-(\d+)-of-(\d+)\.npz")
_WRITTEN = re.compile(r"shard-\d+(-of-\d+)?\.npz")  # write_shards' names, now and before they held the count


class ShardError(ValueError):
    """Shards that do not fit the ranks (a folder's files, or a block left empty), named with the fix."""


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s block of ``n`` households split into ``size`` near-equal blocks."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, size={size}), got {rank}")
    return n * rank // size, n * (rank + 1) // size


def write_shards(M, directory: str, count: int) -> list[str]:
    """Write M (targets x households) as ``count`` column blocks ``directory/shard-00000-of-<count>.npz``, ...
    in place of the shard files written there before; returns the paths."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive int (the number of shard files), got {count!r}")
    csc = sp.csc_matrix(M)
    os.makedirs(directory, exist_ok=True)
    for old in os.listdir(directory):  # first: a write cut short leaves an incomplete set, which readers refuse
        if _WRITTEN.fullmatch(old):
            os.remove(os.path.join(directory, old))
    paths = []
    for i in range(count):
        start, stop = shard_bounds(csc.shape[1], i, count)
        paths.append(os.path.join(directory, SHARD_PATTERN.format(i, count)))
        sp.save_npz(paths[-1], csc[:, start:stop])  # CSC: what the fit converts from without a copy
    return paths


def _columns(path: str) -> tuple[int, int]:
    """(rows, columns) of a scipy .npz, read from its header without loading the data; ShardError naming the file
    for one that is not a scipy sparse .npz."""
    try:
        with np.load(path) as f:
            rows, cols = (int(x) for x in f["shape"])
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise ShardError(f"{path}: not a scipy sparse .npz ({type(error).__name__}); save each shard with scipy.sparse.save_npz "
                         "(or write the set with l0fast.distributed.write_shards)") from error
    return rows, cols


def load_shard(path: str, rank: int, size: int) -> tuple[sp.csr_matrix, int, int]:
    """``(M_shard, household_offset, n_households_total)`` of rank ``rank`` of ``size`` (see the module docstring).

    The block is CSC (one rank's whole matrix: as stored), the household-major
    layout the fit builds from it without another copy."""
    if os.path.isdir(path):
        return _from_directory(path, rank, size)
    if size == 1:
        M = sp.load_npz(path)
        return M, 0, M.shape[1]
    M = sp.load_npz(path).tocsc()
    start, stop = shard_bounds(M.shape[1], rank, size)
    if start == stop:
        raise ShardError(f"{path}: rank {rank} of {size} gets none of the {M.shape[1]} households; run at most {M.shape[1]} processes")
    return M[:, start:stop], start, M.shape[1]


def _shard_files(directory: str) -> list[str]:
    """The ``*.npz`` of ``directory`` in household order: write_shards' set by index, other names in natural order
    (:func:`_natural_key`); ValueError for numbered files that are not one complete set (stale files of an earlier
    write) or not alone."""
    files = sorted(glob.glob(os.path.join(glob.escape(directory), "*.npz")), key=_natural_key)
    numbered = [(m, f) for f in files if (m := _NUMBERED.fullmatch(os.path.basename(f)))]
    if not numbered:
        return files
    by_index = sorted((int(m[1]), int(m[2]), f) for m, f in numbered)  # (index, count, path)
    count = by_index[0][1]
    if len(numbered) != len(files) or [(i, n) for i, n, _ in by_index] != [(i, count) for i in range(count)]:
        names = ", ".join(os.path.basename(f) for f in files[:8]) + (", ..." if len(files) > 8 else "")
        raise ShardError(f"{directory} does not hold one complete set of shard files ({names}): files of another write or "
                         f"another matrix are mixed in or missing; write the shards again (l0fast.distributed.write_shards("
                         f"M, {directory!r}, count) replaces the old set) or remove the files that do not belong")
    return [f for _, _, f in by_index]


def _natural_key(path: str) -> list:
    """Sort key of a file name whose runs of digits compare as numbers: ``part-5`` before ``part-10`` (in plain
    sorted order, ``part-10`` came first and its households were read as the earlier ones)."""
    name = os.path.basename(path)
    runs = [(0, int(run), "") if run.isdigit() else (1, 0, run) for run in re.split(r"(\d+)", name)]
    return [*runs, (2, 0, name)]  # ties (part-1, part-01) in text order, not the file system's


def _from_directory(directory: str, rank: int, size: int) -> tuple[sp.csr_matrix, int, int]:
    files = _shard_files(directory)
    if not files:
        raise ShardError(f"{directory}: a folder without shard files (*.npz); pass the matrix saved with "
                         "scipy.sparse.save_npz, or a folder written by l0fast.distributed.write_shards")
    if len(files) < size:
        raise ShardError(f"{directory} holds {len(files)} shard files (*.npz) but there are {size} ranks; write at least "
                         f"{size} (l0fast.distributed.write_shards) or run fewer processes")
    shapes = [_columns(f) for f in files]
    rows = {r for r, _ in shapes}
    if len(rows) != 1:
        raise ShardError(f"{directory}: the shard files differ in their number of rows (targets): {sorted(rows)}; "
                         "every shard holds all the targets and a block of households")
    starts = np.concatenate([[0], np.cumsum([c for _, c in shapes])])
    total = int(starts[-1])
    # file i goes to the rank whose even block holds the file's middle household
    owner = [min(size - 1, int((starts[i] + starts[i + 1]) / 2 * size // max(total, 1))) for i in range(len(files))]
    mine = [i for i, o in enumerate(owner) if o == rank]
    if not mine:
        raise ShardError(f"{directory}: no shard file falls to rank {rank} of {size} (the files' sizes are too uneven); "
                         f"write {size} shards of similar size (l0fast.distributed.write_shards)")
    if starts[mine[-1] + 1] == starts[mine[0]]:
        raise ShardError(f"{directory}: rank {rank} of {size} gets none of the {total} households (its files are empty); run at "
                         f"most {total} processes, or write shards that each hold households")
    blocks = [sp.load_npz(files[i]).tocsc() for i in mine]
    return (blocks[0] if len(blocks) == 1 else sp.hstack(blocks, format="csc")), int(starts[mine[0]]), total
