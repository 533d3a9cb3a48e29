"""Shared launch settings of the l0fast Triton kernels: configs, options, device guard.

Elementwise kernels use one fixed configuration per size bucket
(:data:`ELEMENTWISE_CONFIGS`): no autotuning, so a new size never triggers
timing runs (which also cannot run inside a CUDA graph capture), and the
compiled variants are few and known ahead of time (``tests/triton_aot_probe.py``
compiles every one).  Reductions use one fixed configuration per kernel, so
their summation order never depends on timing.  Under ``TRITON_INTERPRET=1``
every kernel uses one large block, because the interpreter pays per program,
not per element.

Every launch passes :data:`LAUNCH_OPTIONS`: floating-point contraction (FMA
fusion) and libdevice's flush of subnormals to zero are off explicitly, so
results do not follow Triton's defaults, which change between versions (and
with ``TRITON_DEFAULT_FP_FUSION``).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

LAUNCH_OPTIONS = {"enable_fp_fusion": False, "enable_reflect_ftz": False}

# (largest n, elements per program, warps) of elementwise kernels, by size bucket.
ELEMENTWISE_CONFIGS = ((2**63 - 1, 16384, 4),) if INTERPRET else ((2**20, 1024, 4), (2**63 - 1, 4096, 8))


def elementwise_config(n: int) -> tuple[int, int]:
    """``(elements per program, warps)`` of an elementwise kernel over ``n`` elements."""
    return next((block, warps) for top, block, warps in ELEMENTWISE_CONFIGS if n <= top)


def block_launch(n: int) -> tuple[tuple[int], int, int]:
    """``(grid, BLOCK, warps)`` of an elementwise kernel with one element per lane."""
    block, warps = elementwise_config(n)
    return (triton.cdiv(n, block),), block, warps


def compute_dtype(t: torch.Tensor) -> tl.dtype:
    """fp64 math for fp64 tensors, fp32 for everything else (fp16/bf16 included)."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def check_gate_params(beta: float, gamma: float, zeta: float) -> None:
    if not beta > 0:
        raise RuntimeError(f"beta (temperature) must be > 0, got {beta}")
    if not gamma < 0:
        raise RuntimeError(f"gamma must be < 0, got {gamma}")
    if not zeta > 1:
        raise RuntimeError(f"zeta must be > 1, got {zeta}")


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current for a launch (Triton launches on the current CUDA device and stream)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch_device(**tensors: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Check that the named tensors (None skipped) share one device; return its :func:`device_guard`.

    ``torch.library`` custom ops add no device guard, so a kernel given tensors
    on ``cuda:1`` while device 0 is current would read illegal addresses on
    the wrong stream; mixed devices raise ``ValueError`` naming the argument.
    """
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                f"move every input to one device, e.g. {name}.to({str(first.device)!r})"
            )
    return device_guard(first.device)


def state_on(rng_state: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[seed, offset]`` as a contiguous int64 tensor on ``device`` (no host read)."""
    if rng_state.dtype != torch.int64 or rng_state.numel() != 2:
        raise RuntimeError(
            f"rng_state must be an int64 tensor [seed, offset], got {rng_state.dtype} of shape {tuple(rng_state.shape)}"
        )
    return rng_state.to(device, non_blocking=True).contiguous()
