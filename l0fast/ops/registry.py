"""One registry of l0fast custom ops, enumerated by tests, benchmarks and
``l0fast.backend_info()``.

``define_op`` turns a pure-PyTorch reference into the custom op
``torch.ops.l0fast.<name>``.  The reference is the default implementation on
every device; :mod:`l0fast._capability` (``L0FAST_BACKEND``) decides what
overrides it: the C++ kernel ``l0fast._C.<cpp_name>`` on CPU, the Triton
launcher ``l0fast.kernels.<triton_name>`` on CUDA (and on CPU when Triton is
forced under ``TRITON_INTERPRET=1``).  Triton launchers are imported lazily, on
the first call that needs one.  ``fake`` gives ``torch.compile`` the output
metadata and is the same whatever the backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
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
    cpp_name: str | None = None
    triton_name: str | None = None  # "<module>.<launcher>" inside l0fast.kernels


REGISTRY: dict[str, OpEntry] = {}
_warned_no_triton = False


def triton_launcher(triton_name: str) -> Callable:
    """Import ``l0fast.kernels.<module>`` and return its launcher ``<name>``."""
    module, _, func = triton_name.rpartition(".")
    return getattr(importlib.import_module(f"l0fast.kernels.{module}"), func)


def _default_triton_name(ref: Callable, name: str) -> str | None:
    """``"<family>.<name>"`` when ``l0fast.kernels.<family>`` exists, the op being defined in ``l0fast.ops.<family>``."""
    family = ref.__module__.rpartition(".")[2]
    try:
        found = importlib.util.find_spec(f"l0fast.kernels.{family}") is not None
    except ImportError:  # l0fast.kernels itself is missing
        found = False
    return f"{family}.{name}" if found else None


def _lazy_triton(triton_name: str) -> Callable:
    launcher = None

    def call_triton(*args):
        nonlocal launcher
        if launcher is None:
            launcher = triton_launcher(triton_name)
        return launcher(*args)

    call_triton.__name__ = f"triton_{triton_name.replace('.', '_')}"
    return call_triton


def _raiser(name: str, device: str, why: str) -> Callable:
    def unavailable(*_args):
        raise _capability.unavailable_error(name, device, why)

    return unavailable


def define_op(
    ref: Callable,
    fake: Callable,
    sample_inputs: Callable,
    cpp_name: str | None = None,
    triton_name: str | None = None,
    cpp_adapter: Callable[[Callable], Callable] | None = None,
) -> object:
    """Register ``torch.ops.l0fast.<ref name minus _ref>`` from its reference.

    ``sample_inputs(numel, dtype, generator)`` builds example arguments for the
    tests and benchmarks that enumerate :data:`REGISTRY`.  ``cpp_name`` names the
    function of ``l0fast._C``, ``triton_name`` the launcher in ``l0fast.kernels``
    (e.g. ``"hard_concrete.hard_concrete_sample"``); by default the op defined in
    ``l0fast/ops/<family>.py`` is served by ``l0fast.kernels.<family>.<name>``
    when that module exists (importing it is deferred to the first call).
    ``cpp_adapter(cpp_function)`` returns the CPU kernel when the C++ function's
    arguments differ from the op's schema.
    """
    global _warned_no_triton
    name = ref.__name__.removesuffix("_ref")
    if triton_name is None:
        triton_name = _default_triton_name(ref, name)
    op = torch.library.custom_op(f"l0fast::{name}", ref, mutates_args=())
    op.register_fake(fake)
    entry = OpEntry(name=name, ref=ref, op=op, sample_inputs=sample_inputs, cpp_name=cpp_name, triton_name=triton_name)
    for device in ("cpu", "cuda"):
        choice = _capability.choose(device, cpp_name is not None, triton_name is not None)
        entry.backends[device] = choice
        if choice == "cpp":
            cpp = getattr(_capability._C, cpp_name)
            op.register_kernel(device, cpp if cpp_adapter is None else cpp_adapter(cpp))
        elif choice == "triton":
            op.register_kernel(device, _lazy_triton(triton_name))
        elif choice.startswith("unavailable"):
            op.register_kernel(device, _raiser(name, device, choice.removeprefix("unavailable: ")))
    if (
        entry.backends["cuda"] == "reference"
        and _capability.backend() == "auto"
        and triton_name is not None
        and not _warned_no_triton
        and torch.cuda.is_available()
    ):
        _warned_no_triton = True
        warnings.warn(
            "l0fast: `triton` is not installed; CUDA tensors run the slower PyTorch references. "
            "Install it with `pip install 'triton>=3.8'`.",
            RuntimeWarning,
            stacklevel=2,
        )
    REGISTRY[name] = entry
    return op


def backend_info() -> dict[str, dict[str, str]]:
    """Map each op to ``{device: "cpp" | "triton" | "reference" | "unavailable: <why>"}``.

    The choice follows ``L0FAST_BACKEND`` (auto | cpp | triton | reference).

    >>> import l0fast
    >>> l0fast.backend_info()["hard_concrete_sample"]["cpu"]
    'cpp'
    """
    return {name: dict(entry.backends) for name, entry in REGISTRY.items()}
