"""One registry of l0fast custom ops, enumerated by tests, benchmarks and
``l0fast.backend_info()``.

``define_op`` turns a pure-PyTorch reference into the custom op
``torch.ops.l0fast.<name>``: the reference is the default implementation on
every device, the C++ kernel (when ``l0fast._C`` is built) overrides it on CPU,
and ``fake`` gives ``torch.compile`` the output metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import _capability


@dataclass
class OpEntry:
    """A registered op: its reference and the backend serving each device."""

    name: str
    ref: Callable
    op: object
    sample_inputs: Callable  # (numel, dtype, generator) -> positional args of the op
    backends: dict[str, str] = field(default_factory=lambda: {"cpu": "reference", "cuda": "reference"})


REGISTRY: dict[str, OpEntry] = {}


def define_op(ref: Callable, fake: Callable, sample_inputs: Callable, cpp_name: str | None = None) -> object:
    """Register ``torch.ops.l0fast.<ref name minus _ref>`` from its reference.

    ``sample_inputs(numel, dtype, generator)`` builds example arguments for the
    tests and benchmarks that enumerate :data:`REGISTRY`.
    """
    name = ref.__name__.removesuffix("_ref")
    op = torch.library.custom_op(f"l0fast::{name}", ref, mutates_args=())
    op.register_fake(fake)
    entry = OpEntry(name=name, ref=ref, op=op, sample_inputs=sample_inputs)
    if cpp_name is not None and _capability.cpp_available():
        op.register_kernel("cpu", getattr(_capability._C, cpp_name))
        entry.backends["cpu"] = "cpp"
    REGISTRY[name] = entry
    return op


def backend_info() -> dict[str, dict[str, str]]:
    """Map each op to ``{device: "cpp" | "triton" | "reference"}``.

    >>> import l0fast
    >>> l0fast.backend_info()["hard_concrete_sample"]["cpu"]
    'cpp'
    """
    return {name: dict(entry.backends) for name, entry in REGISTRY.items()}
