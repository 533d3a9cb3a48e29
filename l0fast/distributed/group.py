"""The collectives of a sharded calibration fit, on a ``torch.distributed`` process group.

Every sum over the processes is an all-gather of the per-rank parts added in
rank order, so every rank gets the same bits whatever the order in which the
transport would reduce (an NCCL or gloo all-reduce need not be
deterministic).  A collective that fails (a rank crashed or exited, the
group's timeout passed) raises a ``RuntimeError`` naming this rank and the
likely cause instead of hanging; the timeout is the process group's
(``init_process_group(timeout=...)``).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor


class CollectiveFailed(RuntimeError):
    """A collective of the group failed: another rank probably failed first (its error says why)."""


class ShardGroup:
    """The processes of a sharded fit: ``rank`` of ``size``, and the sums and gathers they need."""

    def __init__(self, process_group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("process_group needs torch.distributed initialised: call torch.distributed.init_process_group "
                             "first (under torchrun, init_process_group() reads the environment), or drop process_group")
        self.group = dist.group.WORLD if process_group is None else process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)
        if self.rank < 0:
            raise ValueError(f"process_group does not hold this process (global rank {dist.get_rank()}): pass a group "
                             "of the processes that fit, on each of them only")

    @contextmanager
    def _collective(self, what: str):
        try:
            yield
        except RuntimeError as error:
            cause = str(error).splitlines()[0].split(". ")[0][:200]
            raise CollectiveFailed(f"rank {self.rank} of {self.size}: {what} failed ({cause}); "
                               "another rank has probably failed (see its error) or the process group's timeout "
                               "passed") from error

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum over the ranks of ``tensor`` (same shape on every rank), added in rank order."""
        parts = self.gather(tensor)
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total

    def exchange(self, totals: Tensor) -> None:
        """``totals`` replaced in place by its sum over the ranks (the fit engines' exchange)."""
        totals.copy_(self.sum(totals))

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (same shape everywhere), in rank order."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        with self._collective("an all-gather of the sharded fit"):
            dist.all_gather(parts, tensor, group=self.group)
        return parts

    def concatenate(self, vector: Tensor) -> Tensor:
        """The ranks' 1-D ``vector`` (lengths may differ) concatenated in rank order, on every rank."""
        lengths = [int(n) for n in self.gather(torch.tensor([vector.numel()], device=vector.device))]
        padded = torch.zeros(max(lengths), dtype=vector.dtype, device=vector.device)
        padded[: vector.numel()] = vector
        return torch.cat([part[:n] for part, n in zip(self.gather(padded), lengths)])

    def objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        out = [None] * self.size
        with self._collective("an exchange of the fit's settings"):
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self, wait: bool = True) -> None:
        """Leave the group once every rank is done (``wait=False``: at once, as a rank that failed must, or it
        would wait for ranks that wait for it), and drop it, before the process exits.

        ``destroy_process_group`` only forgets c10d's references: a group still
        referenced here would be torn down at interpreter exit, where gloo's
        threads abort the process (SIGABRT) now and then.
        """
        if wait:
            self.barrier()
        dist.destroy_process_group(None if self.group is dist.group.WORLD else self.group)
        self.group = None
        gc.collect()

    def barrier(self) -> None:
        with self._collective("a barrier"):
            dist.barrier(group=self.group)

    def check_same(self, facts: dict, what: str) -> None:
        """ValueError on every rank unless every rank passed the same ``facts`` (the first that differ named)."""
        every = self.objects(facts)
        for key in facts:
            values = [f.get(key) for f in every]
            if any(v != values[0] for v in values):
                shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                raise ValueError(f"the ranks of a sharded fit disagree on {what} {key!r} ({shown}); every rank must pass the same")

    def check_blocks(self, offset: int, n: int, total: int) -> None:
        """ValueError on every rank unless the ranks' blocks ``[offset, offset + n)`` tile ``[0, total)`` in rank order."""
        blocks = self.objects((int(offset), int(n), int(total)))
        start = 0
        for rank, (first, count, whole) in enumerate(blocks):
            if whole != blocks[0][2] or first != start:
                shown = ", ".join(f"rank {r}: [{o}, {o + k}) of {t}" for r, (o, k, t) in enumerate(blocks))
                raise ValueError(f"the ranks' household blocks must tile [0, n_features_total) in rank order, without gaps "
                                 f"or overlaps ({shown}); give rank r the block starting where rank r - 1's ends "
                                 "(l0fast.distributed.shard_bounds)")
            start += count
        if start != blocks[0][2]:
            raise ValueError(f"the ranks' blocks cover {start} households but n_features_total is {blocks[0][2]}")
