"""Joining the process group that ``torchrun`` describes in the environment.

``torchrun --nproc-per-node P [--nnodes K --rdzv-endpoint HOST:PORT ...]``
starts each process with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`join_from_environment` then
initialises the default group with NCCL for CUDA devices (one GPU per process:
``cuda:LOCAL_RANK``) and gloo otherwise.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .group import ShardGroup

DEFAULT_TIMEOUT = timedelta(minutes=10)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_from_environment(device: str, timeout: timedelta = DEFAULT_TIMEOUT) -> tuple[ShardGroup, str]:
    """``(group, device)``: the default group joined (NCCL for ``cuda``, else gloo), and this rank's device;
    ValueError where the environment lacks what torchrun sets besides ``WORLD_SIZE``."""
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for a run over several processes, but "
                         f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start it with torchrun "
                         "(which sets them), or unset WORLD_SIZE to run one process")
    device_type = torch.device(device).type
    if device_type == "cuda":
        local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= count:
            raise ValueError(f"LOCAL_RANK={local}, and this machine has {count} CUDA devices: run at most {count} processes "
                             f"per machine on --device cuda (torchrun --nproc-per-node {count})")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    return ShardGroup(), device
