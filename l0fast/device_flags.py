"""Error flags set on a device and read back by the host only every so many uses.

Each device has one persistent int32 flag of shape (1,), which kernels (an
atomic max) or tensor ops (an in-place OR) set without a host sync.
:meth:`DeviceFlags.take` counts one use on a device and, every
``every[device type]`` uses (1 for a type not listed; never while a CUDA graph
is being captured), reads the flag back: a set flag is cleared and reported.
Used by the gate kernels' NaN check (``l0fast.kernels._nan``) and by the
layers' input check off the CPU (:mod:`l0fast.finite_check`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class DeviceFlags:
    """One flag per device, read back every ``every[device.type]`` uses (``every`` is kept by reference)."""

    def __init__(self, every: dict[str, int]):
        self.every = every
        self._flags: dict[torch.device, Tensor] = {}
        self._uses: dict[torch.device, int] = {}

    def flag(self, device: torch.device) -> Tensor:
        """The persistent (1,) int32 flag of ``device``."""
        flag = self._flags.get(device)
        if flag is None:
            flag = self._flags[device] = torch.zeros(1, dtype=torch.int32, device=device)
        return flag

    def take(self, device: torch.device) -> bool:
        """Count a use on ``device``; True when this use reads the flag back and finds it set (it is then cleared)."""
        every = self.every.get(device.type, 1)
        count = self._uses[device] = self._uses.get(device, 0) + 1
        if count % every or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return False
        flag = self.flag(device)
        if not flag.item():
            return False
        flag.zero_()
        return True
