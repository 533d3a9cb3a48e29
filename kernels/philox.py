"""Uniform noise: Philox4x32-10 (Salmon et al., SC'11), laid out as ``l0fast._C``.

Stream element ``e`` of seed ``s`` is word ``e mod 4`` of
``tl.randint4x(s, e // 4)`` with an int64 counter (state ``(lo32(c), hi32(c), 0, 0)``,
key ``(lo32(s), hi32(s))``), mapped to [0, 1) as ``tl.rand`` maps a word:
``float32(w >= 0 ? w : ~w) * 4.6566127342e-10`` with ``w`` read as int32.
A draw with ``rng_state = [seed, offset]`` returns elements ``offset .. offset + n - 1``.

Each program handles ``BLOCK_C`` consecutive counters, i.e. the ``4 * BLOCK_C``
stream elements they produce, so every Philox call feeds four outputs; the
first program starts at counter ``offset // 4`` and masks the ``offset mod 4``
elements before the draw.  ``seed`` and ``offset`` are loaded from the
``rng_state`` tensor inside the kernel: no host synchronisation, and the
launch does not depend on the offset (no recompiles under ``torch.compile``).

Bytes moved per element: 4 written (fp32); Philox costs ~10 integer
multiply-high rounds per four elements, so on an H100 or a T4 the kernel stays
memory-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LAUNCH_OPTIONS, elementwise_config, launch_device, state_on

# ----------------------------------------------------------------------------- kernels


@triton.jit
def words_to_unit(words):
    """uint32 Philox words -> fp32 in [0, 1), exactly as ``tl.rand``."""
    x = words.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(tl.float32) * 4.6566127342e-10


@triton.jit
def uniform_block(state_ptr, pid, BLOCK_C: tl.constexpr):
    """Uniforms of program ``pid`` and the element indices they belong to, both (4 * BLOCK_C,).

    Element ``i`` (relative to the draw) of the result is stream element
    ``offset + i``; indices < 0 (before the draw) must be masked by the caller.
    """
    seed = tl.load(state_ptr)
    offset = tl.load(state_ptr + 1)
    first = pid.to(tl.int64) * BLOCK_C
    counters = (offset >> 2) + first + tl.arange(0, BLOCK_C).to(tl.int64)
    w0, w1, w2, w3 = tl.randint4x(seed, counters)
    # [w0[0], w1[0], w2[0], w3[0], w0[1], ...]: element order of the stream.
    words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))
    index = 4 * first - (offset & 3) + tl.arange(0, 4 * BLOCK_C).to(tl.int64)
    return words_to_unit(words), index


@triton.jit
def uniform_at(state_ptr, i):
    """The uniforms of draw elements ``i`` (any int64 tensor): stream elements ``offset + i``, as ``uniform_block``."""
    seed = tl.load(state_ptr)
    element = tl.load(state_ptr + 1) + i
    w0, w1, w2, w3 = tl.randint4x(seed, element >> 2)
    lane = element & 3
    return words_to_unit(tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3))))


@triton.jit
def _philox_uniform_kernel(state_ptr, out_ptr, n, BLOCK_C: tl.constexpr):
    u, i = uniform_block(state_ptr, tl.program_id(0), BLOCK_C)
    tl.store(out_ptr + i, u, mask=(i >= 0) & (i < n))


# ----------------------------------------------------------------------------- launchers


def uniform_launch(n: int) -> tuple[tuple[int], int, int]:
    """``(grid, BLOCK_C, warps)`` covering n elements at any offset: at most (n + 3) / 4 + 1 counters."""
    block, warps = elementwise_config(n)
    return (triton.cdiv(n + 3, block),), block // 4, warps


def philox_uniform(rng_state: torch.Tensor, numel: int) -> torch.Tensor:
    """``u[i] = rand(seed, offset + i)``.  rng_state: (2,) int64 [seed, offset] -> (numel,) fp32.

    The output lives on ``rng_state``'s device.
    """
    if numel < 0:
        raise RuntimeError(f"numel must be >= 0, got {numel}")
    with launch_device(rng_state=rng_state):
        state = state_on(rng_state, rng_state.device)
        out = torch.empty(numel, dtype=torch.float32, device=state.device)
        if numel:
            grid, block_c, warps = uniform_launch(numel)
            _philox_uniform_kernel[grid](state, out, numel, BLOCK_C=block_c, num_warps=warps, **LAUNCH_OPTIONS)
    return out
