"""NaN/inf check of a layer's input, cheap enough to run on every call.

On CPU the check is immediate: one pass over the exponent bits
(``l0fast._C.input_finite``; without the extension, one sum read back).  On other
devices a host read per layer would stall the stream, so each check ORs
``not isfinite(x).all()`` into a per-device flag on the device, and the flag is
read back every :data:`DEFERRED_EVERY` checks (never while a CUDA graph is
being captured); the error may then name a later call than the one that met
the NaN, as the gate kernels' NaN flag does (``l0fast.kernels._nan``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._capability import _C
from .device_flags import DeviceFlags
from .ops.registry import fx_tracing, in_functorch_transform

# checks between two host reads of a device's flag, per device type; absent (CPU): immediate
DEFERRED_EVERY: dict[str, int] = {"cuda": 64}
NON_FINITE_FLAGS = DeviceFlags(DEFERRED_EVERY)


def check_finite(layer: str, x: Tensor, out: Tensor | None = None) -> Tensor | None:
    """ValueError if the input ``x`` holds NaN or inf; returns ``out``.  ``out``, when given, is the output of a
    linear layer: every element of an input row enters every element of its output row through a product
    (NaN * 0 and inf * 0 are NaN), so a NaN or inf in ``x`` makes ``out`` non-finite.  The smaller of the two
    is checked, and ``x`` itself only when ``out`` is not finite.  (A strided convolution may skip inputs:
    convolutions pass no ``out``.)  Not checked under torch.compile and torch.fx.symbolic_trace (whose Proxies
    hold no values), nor inside torch.func transforms, whose wrapped tensors have no storage to read and no
    value to read back under vmap, nor on fake tensors (``FakeTensorMode``)."""
    if torch.compiler.is_compiling() or fx_tracing():
        return out
    cpu = x.is_cpu
    every = DEFERRED_EVERY.get("cpu" if cpu else x.device.type)
    if every is None:
        try:  # l0fast._C.input_finite reads the bits of strided CPU tensors
            finite = _C.input_finite(x, out) if cpu and _C is not None else all_finite(x)
        except RuntimeError:
            if in_functorch_transform():
                return out
            if x.layout == torch.strided:
                raise
            finite = all_finite(x)  # sparse
        if not finite:
            raise ValueError(f"{layer}: input contains NaN or inf; check the data and the previous layer")
        return out
    if in_functorch_transform():
        return out
    NON_FINITE_FLAGS.flag(x.device).logical_or_(torch.isfinite(x).all().logical_not_())
    if NON_FINITE_FLAGS.take(x.device):
        raise ValueError(
            f"{layer}: an input of the last {every} gated-layer calls on {x.device} contained NaN or inf (the flag "
            "is read back every so many calls to keep host syncs out of the step); check the data and the previous layer"
        )
    return out


def all_finite(x: Tensor) -> bool:
    """True unless ``x`` holds NaN or inf, by one reduction: a NaN or inf makes the sum non-finite, and only a
    sum that overflows is checked element by element.  :func:`check_finite`'s way where ``l0fast._C.input_finite``
    (one pass over the bits, on one thread up to 2^18 elements) does not serve: off CPU, sparse (its stored
    values are checked), no extension.  A meta tensor holds no values: nothing to check."""
    if x.is_meta:
        return True
    if x.layout != torch.strided:
        x = x._values() if x.layout == torch.sparse_coo else x.values()
    return not x.is_floating_point() or math.isfinite(x.sum().item()) or bool(torch.isfinite(x).all())
