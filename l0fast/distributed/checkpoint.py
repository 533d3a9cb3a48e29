"""Checkpoints of a sharded fit: one file per rank, and a manifest rank 0 writes last.

At ``path`` the manifest: the number of ranks, each rank's household block
and shard file, and the epochs done.  Rank ``r`` of ``P`` writes its
:mod:`l0fast.checkpoint` state to ``<path>.e<done>.rank<r>-of-<P>``.  Order:
every rank writes its shard (atomically), a barrier, rank 0 writes the
manifest (atomically: the commit point) and deletes the other files of this
checkpoint (earlier shards, of any number of ranks, the temp files of
killed writes, the probe files of killed starts) while the other ranks
wait, a barrier; a crash at any point leaves the last manifest and the
shards it names intact.  Resuming needs
the same number of ranks and the same household blocks — there is no
re-sharding: a different split is a ValueError naming both.  :func:`combine`
joins the shards of a manifest into the state of one unsharded model
(``SparseCalibrationWeights.load_checkpoint`` of a manifest).
"""

from __future__ import annotations

import os
import re

import torch

from .. import checkpoint as ckpt

FORMAT = "l0fast.sharded-calibration-checkpoint/1"
# per-household entries of a shard's state, joined in rank order by combine()
_PER_HOUSEHOLD = ("log_weight", "log_alpha", "initial_weights")
_PER_HOUSEHOLD_OPTIMIZER = ("exp_avg_lw", "exp_avg_sq_lw", "exp_avg_la", "exp_avg_sq_la")


def _shard_path(path, done: int, rank: int, size: int) -> str:
    return f"{os.fspath(path)}.e{done}.rank{rank}-of-{size}"


def write(group, state: dict, path, done: int, block: tuple[int, int]) -> None:
    """Save this rank's ``state`` (``checkpoint.model_state``) as part of the sharded checkpoint at ``path``."""
    shard = _shard_path(path, done, group.rank, group.size)
    ckpt.write_atomic(state, shard)
    blocks = group.objects((block, os.path.basename(shard)))
    files = [f for _, f in blocks]
    _raise_unless_rank_0_sees(group, path, files, "shard files")  # before the manifest: it could never be resumed
    if group.rank == 0:
        ckpt.write_atomic({"format": FORMAT, "ranks": group.size, "done": done, "blocks": [b for b, _ in blocks], "files": files}, path)
        for stale in _stale_files(path, current=[os.path.basename(os.fspath(path)), *files]):
            os.remove(stale)
    group.barrier()


def check_shared(group, path) -> None:
    """ValueError on every rank unless rank 0 sees a file each rank writes beside ``path`` (then removed): run
    before a sharded fit's first epoch, so that a checkpoint on disks the ranks do not share fails at once, not
    at the first checkpoint (which :func:`write` refuses), perhaps the last."""
    probe = f"{os.fspath(path)}.probe.rank{group.rank}-of-{group.size}"
    with open(probe, "w"):
        pass
    try:
        _raise_unless_rank_0_sees(group, path, group.objects(os.path.basename(probe)), "files")
    finally:
        os.remove(probe)  # every rank past the collective in _raise_unless_rank_0_sees: rank 0 has looked


def _raise_unless_rank_0_sees(group, path, files: list[str], what: str) -> None:
    """ValueError on every rank (one collective) naming the ``files`` (names, beside ``path``) rank 0 does not see."""
    folder = os.path.dirname(os.path.abspath(path))
    unseen = group.objects([f for f in files if not os.path.exists(os.path.join(folder, f))] if group.rank == 0 else None)[0]
    if unseen:
        raise ValueError(f"checkpoint {os.fspath(path)}: rank 0 does not see the {what} other ranks wrote ({', '.join(unseen)}); "
                         "put the checkpoint on a file system every rank sees (with several machines, a shared one)")


def _stale_files(path, current: list[str]) -> list[str]:
    """The files of the checkpoint at ``path`` whose names are not in ``current``: shard files of any epoch and
    rank count (``<path>.e<done>.rank<r>-of-<P>``), temp files of killed writes (``<file>.tmp-<pid>``) and
    :func:`check_shared`'s probe files of ranks killed before they removed theirs (``<path>.probe.rank<r>-of-<P>``)."""
    folder, name = os.path.split(os.path.abspath(path))
    own = re.compile(re.escape(name) + r"(\.e\d+\.rank\d+-of-\d+|\.probe\.rank\d+-of-\d+)?(\.tmp-\d+)?")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if own.fullmatch(f) and f not in current]


def read_manifest(path) -> dict:
    state = ckpt.load(path)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not the manifest of a sharded checkpoint (format {FORMAT}); a checkpoint of a fit in "
                         "one process resumes in one process (without torchrun, or without process_group in Python)")
    return state


def read(group, path, block: tuple[int, int]) -> dict:
    """This rank's state from the sharded checkpoint at ``path``; ValueError if it was written by another split."""
    manifest = read_manifest(path)
    if manifest["ranks"] != group.size:
        raise ValueError(f"{path} was written by {manifest['ranks']} ranks, this fit has {group.size}: resume with "
                         f"{manifest['ranks']} processes (torchrun --nproc-per-node {manifest['ranks']}); "
                         "sharded checkpoints are not re-sharded")
    saved = tuple(manifest["blocks"][group.rank])
    if saved != tuple(block):
        raise ValueError(f"{path}: rank {group.rank} held households {saved} (offset, count) when it was written, "
                         f"now {tuple(block)}; resume with the same shards")
    return _read_shard(path, manifest, group.rank)


def _read_shard(path, manifest: dict, rank: int) -> dict:
    """Rank ``rank``'s state, from the shard file the manifest at ``path`` names; ValueError if it is missing."""
    shard = os.path.join(os.path.dirname(os.path.abspath(path)), manifest["files"][rank])
    if not os.path.exists(shard):
        raise ValueError(f"{os.fspath(path)} names {shard} (rank {rank}'s shard), which is missing: keep a sharded "
                         "checkpoint's files together, on a file system every rank sees")
    return ckpt.read(shard)


def combine(manifest: dict, path) -> dict:
    """The single-model checkpoint state of the whole fit whose ``manifest`` is at ``path`` (shards joined in rank order;
    the keep mask None when no shard keeps a record, as a single-process fit's)."""
    shards = [_read_shard(path, manifest, rank) for rank in range(len(manifest["files"]))]
    state = dict(shards[0])
    for key in _PER_HOUSEHOLD:
        state[key] = torch.cat([s[key] for s in shards])
    if any(s["keep"] is not None for s in shards):  # a shard keeping none of its records saved None
        state["keep"] = torch.cat([torch.zeros_like(s["log_weight"], dtype=torch.bool) if s["keep"] is None else s["keep"]
                                   for s in shards])
    if state["optimizer"] is not None:
        state["optimizer"] = {**state["optimizer"], **{k: torch.cat([s["optimizer"][k] for s in shards]) for k in _PER_HOUSEHOLD_OPTIMIZER}}
    total = state["config"]["n_features_total"]
    state["config"] = {**state["config"], "n_features": total, "household_offset": 0}
    state["fit"] = None  # a running fit's record is per shard (its matrix): the combined model starts new fits
    return state
