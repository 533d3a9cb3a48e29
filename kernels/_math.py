"""Floating-point primitives of the l0fast Triton kernels, pinned so results do not follow Triton's lowering.

- ``exp`` / ``log``: libdevice ``__nv_exp[f]`` / ``__nv_log[f]`` on the GPU.  Plain
  fp32 ``tl.exp`` / ``tl.log`` lower to ``ex2.approx`` / ``lg2.approx``, a choice
  that has changed between Triton versions.  The interpreter has no libdevice
  (its functions are stubs returning None), so there the numpy functions of
  ``tl.exp`` / ``tl.log`` serve.
- ``div_rn`` / ``sqrt_rn``: IEEE round-to-nearest division and square root
  (fp32 ``/`` lowers to the approximate ``div.full.f32``, fp32 ``tl.sqrt`` to
  ``sqrt.approx``; in fp64 both already round to nearest).
- ``fixed_order_sum``: a sum whose order does not depend on the register
  layout (``tl.sum`` adds each thread's elements first, so its order changes
  with the vector width the compiler picks, e.g. with the pointer alignment).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import INTERPRET

# The interpreter has no libdevice (its functions are stubs returning None).
LIBDEVICE = tl.constexpr(not INTERPRET)


@triton.jit
def exp(x):
    """e^x: libdevice on the GPU, numpy's exp in the interpreter."""
    if LIBDEVICE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def log(x):
    """Natural log: libdevice on the GPU, numpy's log in the interpreter."""
    if LIBDEVICE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def div_rn(x, y):
    """x / y rounded to nearest (fp32 via ``tl.div_rn``; fp64 division already is)."""
    if y.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def sqrt_rn(x):
    """Square root rounded to nearest (fp32 via ``tl.sqrt_rn``; fp64 ``tl.sqrt`` already is)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def fixed_order_sum(x, N: tl.constexpr):
    """Sum of the (N,) tensor ``x`` (N a power of two) as a pairwise tree: level by level, x[2i] + x[2i+1]."""
    for _ in tl.static_range(N.bit_length() - 1):
        even, odd = tl.split(tl.reshape(x, [x.numel // 2, 2]))
        x = even + odd
    return tl.reshape(x, [])
