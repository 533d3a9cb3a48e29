"""Which implementation can serve the l0fast ops: the one place that decides.

``_C`` is the C++ CPU extension built by ``setup.py``; Triton (``l0fast.kernels``)
serves CUDA tensors, and CPU tensors too when ``TRITON_INTERPRET=1`` is set
before ``triton`` is imported.  The environment variable ``L0FAST_BACKEND``,
read once at import, picks the implementation:

- ``auto`` (default): C++ on CPU, Triton on CUDA, each falling back to the
  pure-PyTorch reference (with one warning) when it is not installed;
- ``cpp``: the C++ kernels on CPU; CUDA tensors raise (C++ is CPU-only);
- ``triton``: the Triton kernels on CUDA, and on CPU under ``TRITON_INTERPRET=1``
  (otherwise CPU tensors raise);
- ``reference``: the pure-PyTorch references everywhere.

Forcing an implementation that cannot run raises :class:`BackendError` at
import (``cpp`` without ``_C``, ``triton`` without ``triton``) or at the first
call on a device it cannot serve: never a silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch  # noqa: F401  (must precede the extension import: libc10.so)

BACKEND_ENV = "L0FAST_BACKEND"
BACKENDS = ("auto", "cpp", "triton", "reference")


class BackendError(RuntimeError):
    """A forced ``L0FAST_BACKEND`` cannot serve the call."""


def _read_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise BackendError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(BACKENDS)}; unset it or pick one of those.")
    return value


BACKEND = _read_backend()

try:
    from . import _C
except ImportError as error:  # no compiler at install time, or L0FAST_BUILD_CPP=0
    _C = None
    if BACKEND == "cpp":
        raise BackendError(
            f"{BACKEND_ENV}=cpp but the C++ extension l0fast._C is not available ({error}). "
            "Build it with `pip install --no-build-isolation -e .` (needs g++ and torch installed first, "
            "L0FAST_BUILD_CPP not 0), or unset " + BACKEND_ENV + "."
        ) from error
    if BACKEND == "auto":
        warnings.warn(
            f"l0fast: the C++ extension l0fast._C is not available ({error}); "
            "CPU ops run their slower PyTorch references. Build it with "
            "`pip install --no-build-isolation -e .` (needs g++ and torch installed "
            "first) and make sure L0FAST_BUILD_CPP is not 0.",
            RuntimeWarning,
            stacklevel=2,
        )

_TRITON = importlib.util.find_spec("triton") is not None
if BACKEND == "triton" and not _TRITON:
    raise BackendError(
        f"{BACKEND_ENV}=triton but the `triton` package is not importable. "
        "Install it with `pip install 'triton>=3.8'` (CPU tensors also need TRITON_INTERPRET=1), "
        "or unset " + BACKEND_ENV + "."
    )


def cpp_available() -> bool:
    """True when the C++ CPU kernels (``l0fast._C``) are importable."""
    return _C is not None


def triton_available() -> bool:
    """True when the ``triton`` package is importable."""
    return _TRITON


def triton_interpreter() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (``TRITON_INTERPRET=1``)."""
    return _TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend() -> str:
    """The requested backend: ``auto`` | ``cpp`` | ``triton`` | ``reference``."""
    return BACKEND


def choose(device: str, has_cpp: bool, has_triton: bool) -> str:
    """The implementation serving one op on ``device`` ("cpu" or "cuda").

    Returns ``"cpp"``, ``"triton"``, ``"reference"`` or ``"unavailable: <why>"``
    (the op then raises :class:`BackendError` when called on that device).
    """
    if BACKEND == "reference":
        return "reference"
    if BACKEND == "cpp":
        if device != "cpu":
            return f"unavailable: {BACKEND_ENV}=cpp has no {device} kernels (C++ is CPU-only)"
        return "cpp" if has_cpp else "unavailable: this op has no C++ kernel"
    if BACKEND == "triton":
        if not has_triton:
            return "unavailable: this op has no Triton kernel"
        if device == "cpu" and not triton_interpreter():
            return f"unavailable: {BACKEND_ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 set before import"
        return "triton"
    if device == "cpu":  # auto
        return "cpp" if has_cpp and cpp_available() else "reference"
    return "triton" if has_triton and triton_available() else "reference"


def unavailable_error(op: str, device: str, why: str) -> BackendError:
    """The error a forced backend raises on a device it cannot serve."""
    return BackendError(
        f"l0fast.{op} on {device}: {why}. Unset {BACKEND_ENV} (auto) or set it to one of "
        f"{', '.join(b for b in BACKENDS if b != BACKEND)}."
    )
