"""Which implementation can serve the l0fast ops: the one place that decides.

``_C`` is the C++ CPU extension built by ``setup.py``; Triton serves CUDA
tensors (and CPU tensors under ``TRITON_INTERPRET=1``). When a piece is
missing, the ops fall back to their pure-PyTorch references and this module
warns once, saying how to get the fast path.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch  # noqa: F401  (must precede the extension import: libc10.so)

try:
    from . import _C
except ImportError as error:  # no compiler at install time, or L0FAST_BUILD_CPP=0
    _C = None
    warnings.warn(
        f"l0fast: the C++ extension l0fast._C is not available ({error}); "
        "CPU ops run their slower PyTorch references. Build it with "
        "`pip install --no-build-isolation -e .` (needs g++ and torch installed "
        "first) and make sure L0FAST_BUILD_CPP is not 0.",
        RuntimeWarning,
        stacklevel=2,
    )


def cpp_available() -> bool:
    """True when the C++ CPU kernels (``l0fast._C``) are importable."""
    return _C is not None


def triton_available() -> bool:
    """True when the ``triton`` package is importable."""
    return importlib.util.find_spec("triton") is not None
