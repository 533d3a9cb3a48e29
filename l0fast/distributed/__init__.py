"""Calibration split by household over processes, GPUs and machines, on ``torch.distributed``.

Each process (rank) holds a contiguous block of the households: its columns
of M (:func:`load_shard`) and a :class:`~l0fast.SparseCalibrationWeights`
built with ``household_offset`` and ``n_features_total``.  ``fit(...,
process_group=group)`` then runs the fused engine on every rank; after each
epoch's household pass the ranks exchange the Q target sums and three
scalars (all-gather, added in rank order: :class:`ShardGroup`), so the loss,
``lambda_l0`` (``target_count``'s multiplier included), the history and the
final snap agree on every rank.  Gate noise is keyed by the global
household index: the same seed gives the same gates for any number of
processes, and a sharded fit equals the single-process one to float
tolerance (the sums are added in another order), with the same active
households.  Checkpoints are per-rank shards plus a manifest
(:mod:`l0fast.distributed.checkpoint`).

Launch with torchrun (``l0fast calibrate`` joins the group itself,
:func:`join_from_environment`: gloo on CPU, NCCL on CUDA)::

    torchrun --standalone --nproc-per-node 2 -m l0fast calibrate --matrix shards/ ...
"""

from .gather import gather_model
from .group import ShardGroup
from .launch import join_from_environment, launched_by_torchrun
from .shards import load_shard, shard_bounds, write_shards

__all__ = ["ShardGroup", "gather_model", "join_from_environment", "launched_by_torchrun", "load_shard", "shard_bounds", "write_shards"]
