"""Counter-based uniform noise: Philox4x32-10, as ``triton.language.rand``.

Element ``i`` of a draw with RNG state ``[seed, offset]`` (an int64 tensor of
shape (2,)) is stream element ``e = offset + i``: word ``e mod 4`` of
Philox4x32-10 (Salmon et al. 2011) at counter ``e div 4``, i.e. of
``triton.language.randint4x(seed, e // 4)`` (state ``(lo32(c), hi32(c), 0, 0)``,
key ``(lo32(seed), hi32(seed))``), mapped to [0, 1) as ``tl.rand`` maps a word:
``float32(w') * 4.6566127342e-10`` with ``w' = w`` if ``w`` read as int32 is
>= 0, else ``~w``.  One Philox call thus serves four gates.  The gate kernels
compute this inline; the op below exposes the raw draw, which the gate
references take their noise from and tests compare across backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import define_op

PHILOX_KEY = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUND = (0xD2511F53, 0xCD9E8D57)
UINT31_TO_UNIT = 4.6566127342e-10
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a * b`` for uint32 values held in int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    upper, lower = a * b_hi, a * b_lo  # each < 2**48: no int64 overflow
    hi = (upper + (lower >> 16)) >> 16
    lo = (((upper & 0xFFFF) << 16) + lower) & _MASK32
    return hi, lo


def philox_words(seed: Tensor, counters: Tensor) -> Tensor:
    """Philox4x32-10 of int64 ``counters`` (n,) with the int64 ``seed`` () -> words (n, 4), uint32 values in int64."""
    c0, c1 = counters & _MASK32, (counters >> 32) & _MASK32
    c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(c2, PHILOX_ROUND[1])
        hi_a, lo_a = _mul_hi_lo(c0, PHILOX_ROUND[0])
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0, k1 = (k0 + PHILOX_KEY[0]) & _MASK32, (k1 + PHILOX_KEY[1]) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def words_to_unit_float(words: Tensor) -> Tensor:
    """uint32 words (in int64) to float32 uniforms in [0, 1), as tl.rand."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(UINT31_TO_UNIT, dtype=torch.float32)


def philox_uniform_ref(rng_state: Tensor, numel: int) -> Tensor:
    """Uniforms ``u[i] = rand(seed, offset + i)``, i < numel.  rng_state: (2,) int64 -> (numel,) fp32."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    # Tensor arithmetic only, no value read back: the draw also runs under vmap over rng_state (an ensemble).
    seed, offset = rng_state.unbind()
    blocks = torch.arange((numel + 3) // 4 + 1, dtype=torch.int64, device=rng_state.device)  # + 1: the draw starts
    words = philox_words(seed, (offset >> 2) + blocks).reshape(-1)  # at word offset mod 4 of its first block
    return words_to_unit_float(words[(offset & 3) + torch.arange(numel, dtype=torch.int64, device=rng_state.device)])


def _philox_uniform_fake(rng_state: Tensor, numel: int) -> Tensor:
    return rng_state.new_empty((numel,), dtype=torch.float32)


def _philox_uniform_samples(numel: int, dtype: torch.dtype, generator: torch.Generator) -> tuple:
    seed, offset = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    return torch.tensor([seed, offset % 2**40], dtype=torch.int64), numel


philox_uniform = define_op(
    philox_uniform_ref, _philox_uniform_fake, _philox_uniform_samples, cpp_name="philox_uniform"
)


@torch.library.register_vmap("l0fast::philox_uniform")
def _philox_uniform_vmap(_info, in_dims, rng_state, numel):
    """One draw per stream of a batch of streams (a vmapped model ensemble): (B, 2) -> (B, numel)."""
    if in_dims[0] is None:
        return philox_uniform(rng_state, numel), None
    return torch.stack([philox_uniform(state, numel) for state in rng_state.movedim(in_dims[0], 0)]), 0
