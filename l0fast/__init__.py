"""l0fast: L0 regularization on fused kernels, a drop-in for ``l0-python`` (``import l0fast as l0``)."""

__version__ = "0.1.0"

from .ops import backend_info

__all__ = ["backend_info"]
