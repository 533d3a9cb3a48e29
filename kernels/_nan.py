"""NaN check of ``log_alpha`` in the gate and penalty kernels, without a host sync per call on CUDA.

Each kernel raises a persistent per-device int32 flag (relaxed atomic max)
when it meets a NaN.  The launcher then calls :func:`check_nan`, which reads
the flag back every ``CHECK_EVERY[device type]`` launches on that device: at
every launch on CPU (the interpreter: a read there is free, so bad input
raises at once, like the C++ path), every 64 on CUDA (one sync per 64
launches; never while a CUDA graph is being captured).  On CUDA the error may
therefore surface a few calls after the one that met the NaN; the flag is
cleared when it raises.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device_flags import DeviceFlags

CHECK_EVERY = {"cpu": 1, "cuda": 64}
NAN_MESSAGE = (
    ": log_alpha contains NaN. A NaN loss or too large a learning rate usually causes this; "
    "reinitialise the gates (reset_parameters()) and lower lr."
)
NAN_FLAGS = DeviceFlags(CHECK_EVERY)


@triton.jit
def flag_nan(a, mask, nan_ptr):
    """Set ``*nan_ptr`` to 1 when a masked-in element of ``a`` is NaN."""
    has_nan = tl.max(((a != a) & mask).to(tl.int32), axis=0)
    if has_nan > 0:
        tl.atomic_max(nan_ptr, 1, sem="relaxed")


def nan_flag(device: torch.device) -> torch.Tensor:
    """The persistent (1,) int32 flag of ``device``."""
    return NAN_FLAGS.flag(device)


def check_nan(device: torch.device, where: str) -> None:
    """Count a launch on ``device``; every ``CHECK_EVERY`` launches read the flag and raise ValueError if set."""
    if NAN_FLAGS.take(device):
        every = CHECK_EVERY.get(device.type, 1)
        late = "" if every == 1 else f" (flag read every {every} launches: the NaN may come from an earlier call)"
        raise ValueError(where + late + NAN_MESSAGE)
