"""One registry of l0fast custom ops, enumerated by tests, benchmarks and
``l0fast.backend_info()``.

``define_op`` turns a pure-PyTorch reference into the op
``torch.ops.l0fast.<name>``: its schema is inferred from the reference's
signature and defined in the ``l0fast`` library, the reference is the kernel of
every device (``CompositeExplicitAutograd``), and :mod:`l0fast._capability`
(``L0FAST_BACKEND``) decides what overrides it: the C++ kernel, registered with
the dispatcher by ``l0fast._C.register_cpu_kernel`` (a CPU call then costs what
a native ATen op costs: no Python between the dispatcher and the kernel), or
the Triton launcher ``l0fast.kernels.<triton_name>`` on CUDA (and on CPU under
``TRITON_INTERPRET=1``).  Triton launchers are imported lazily, on the first
call that needs one.  ``fake`` gives ``torch.compile`` the output metadata.
Differentiation goes through the ``torch.autograd.Function`` wrappers of each
family (the ops themselves have no autograd kernel), and nothing here imports
``torch._dynamo``.  Inside ``torch.func`` transforms, under ``torch.export`` and
while ``torch.jit.trace`` records (:func:`use_references`) the wrappers compute
with the references instead, which compose with every transform and export or
trace to aten ops.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx import _symbolic_trace

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
_LIBRARY = torch.library.Library("l0fast", "DEF")
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


def empty_contiguous_like(t: torch.Tensor) -> torch.Tensor:
    """A fake kernel's output shaped as ``t``: contiguous whatever ``t``'s strides, as the C++ and Triton kernels
    give theirs (and the references, :func:`_contiguous_outputs`)."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _contiguous_outputs(ref: Callable) -> Callable:
    """``ref`` as an op kernel: its tensor outputs contiguous, as the C++ and Triton kernels give them and the
    fake kernels say (an elementwise reference would keep the strides of a transposed input)."""

    @functools.wraps(ref)
    def kernel(*args):
        out = ref(*args)
        return tuple(t.contiguous() for t in out) if isinstance(out, tuple) else out.contiguous()

    return kernel


def define_op(
    ref: Callable,
    fake: Callable,
    sample_inputs: Callable,
    cpp_name: str | None = None,
    triton_name: str | None = None,
) -> object:
    """Register ``torch.ops.l0fast.<ref name minus _ref>`` from its reference.

    ``sample_inputs(numel, dtype, generator)`` builds example arguments for the
    tests and benchmarks that enumerate :data:`REGISTRY`.  ``cpp_name`` names the
    op's C++ kernel in ``l0fast._C`` (``csrc/op_registration.cpp``; it takes the
    op's arguments), ``triton_name`` the launcher in ``l0fast.kernels`` (e.g.
    ``"hard_concrete.hard_concrete_sample"``); by default the op defined in
    ``l0fast/ops/<family>.py`` is served by ``l0fast.kernels.<family>.<name>``
    when that module exists (importing it is deferred to the first call).
    """
    global _warned_no_triton
    name = ref.__name__.removesuffix("_ref")
    if triton_name is None:
        triton_name = _default_triton_name(ref, name)
    schema = torch.library.infer_schema(ref, mutates_args=()).replace("SymInt", "int")
    _LIBRARY.define(name + schema, tags=(torch.Tag.pt2_compliant_tag,))
    _LIBRARY.impl(name, _contiguous_outputs(ref), "CompositeExplicitAutograd")
    torch.library.register_fake(f"l0fast::{name}", fake, lib=_LIBRARY)
    op = getattr(torch.ops.l0fast, name)
    entry = OpEntry(name=name, ref=ref, op=op, sample_inputs=sample_inputs, cpp_name=cpp_name, triton_name=triton_name)
    for device, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        choice = _capability.choose(device, cpp_name is not None, triton_name is not None)
        entry.backends[device] = choice
        if choice == "cpp":
            _capability._C.register_cpu_kernel(cpp_name)
        elif choice == "triton":
            _LIBRARY.impl(name, _lazy_triton(triton_name), key)
        elif choice.startswith("unavailable"):
            _LIBRARY.impl(name, _raiser(name, device, choice.removeprefix("unavailable: ")), key)
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


def in_functorch_transform() -> bool:
    """True inside a ``torch.func`` transform (grad, vjp, jacrev, jacfwd, jvp, hessian, vmap).  The
    differentiable wrappers then run their pure-PyTorch references (:func:`use_references`): the kernels'
    autograd.Functions have no forward-mode or vmap rules.  What reads a tensor's storage or values (the
    penalty memo, the eval cache, the input NaN checks, the matrix cache) stands aside, as functorch's
    wrapped tensors have no storage.  0.02 us."""
    return torch._C._are_functorch_transforms_active()


def jit_tracing() -> bool:
    """True while ``torch.jit.trace`` records a graph (``torch.jit.is_tracing``, which torch.compile reads as
    False).  What reads values or keeps tensors between calls (the eval cache, the penalty memo, the logits'
    NaN check) stands aside: the graph would hold a cached tensor as a constant, or a branch taken once."""
    return torch.jit.is_tracing()


def fx_tracing() -> bool:
    """True while ``torch.fx.symbolic_trace`` records a graph (not torch.export, which also sets FX's flag).
    Inputs and parameters are then Proxies, holding no value, size or storage: the input checks, the eval
    cache and the penalty memo stand aside, and the gate functions are leaves of the graph (``torch.fx.wrap``
    in :mod:`l0fast.distributions`), so the traced module calls them, draws from the model's streams and runs
    the kernels.  (``_symbolic_trace.is_fx_symbolic_tracing`` without its call: 0.04 us.)"""
    return _symbolic_trace._is_fx_tracing_flag and not torch.compiler.is_compiling()


def use_references() -> bool:
    """True where the differentiable wrappers compute with the references instead of the kernels'
    autograd.Functions: inside torch.func transforms (:func:`in_functorch_transform`), under
    ``torch.export`` and while ``torch.jit.trace`` records (:func:`jit_tracing`), so that an exported program
    or a traced TorchScript module holds aten ops only (plus ``philox_uniform`` where gates are sampled) and
    saves and loads without l0fast, as l0-python's does (a Python autograd.Function cannot be saved)."""
    return in_functorch_transform() or torch.compiler.is_exporting() or jit_tracing()


def _batched_at_some_level(t: torch.Tensor) -> bool:
    """Whether ``t`` is vmap-batched under its functorch wrappers: ``vmap(grad(f))`` hands ``f`` vmap's batched
    tensor inside grad's wrapper."""
    functorch = torch._C._functorch
    while not functorch.is_batchedtensor(t):
        if not functorch.is_functorch_wrapped_tensor(t):
            return False
        t = functorch.get_unwrapped(t)
    return True


def refuse_per_sample_draws(rng_state: torch.Tensor) -> None:
    """RuntimeError when gates would be drawn from one noise stream under ``vmap(..., randomness="different")``:
    one forward draws one set of gates for the whole batch (vmap's ``"same"``), and a set per batch element
    cannot come from one stream.  A stacked ensemble's streams (a batched ``rng_state``) draw per member."""
    if not in_functorch_transform() or _batched_at_some_level(rng_state):
        return
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters  # only inside a transform

    if any(getattr(i, "randomness", lambda: "same")() == "different" for i in retrieve_all_functorch_interpreters()):
        raise RuntimeError(
            'l0fast gates under vmap(..., randomness="different"): one forward draws one set of gates for the '
            'whole batch, from the module\'s noise stream; pass randomness="same" (or vmap a stacked ensemble, '
            "whose members draw from their own streams)"
        )


def backend_info() -> dict[str, dict[str, str]]:
    """Map each op to ``{device: "cpp" | "triton" | "reference" | "unavailable: <why>"}``.

    The choice follows ``L0FAST_BACKEND`` (auto | cpp | triton | reference).

    >>> import l0fast
    >>> l0fast.backend_info()["hard_concrete_sample"]["cpu"]
    'cpp'
    """
    return {name: dict(entry.backends) for name, entry in REGISTRY.items()}
