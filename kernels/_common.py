"""Shared launch settings of the l0fast Triton kernels.

Elementwise kernels are autotuned over block size and warps on a real GPU
(their results do not depend on the block).  Reductions use one fixed
configuration: an autotuner picks by timing, and a different block or warp
count changes the summation order, so results could differ from run to run.
Under ``TRITON_INTERPRET=1`` every kernel uses one large block, because the
interpreter pays per program, not per element.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

LOG_ALPHA_BOUND = 20.0
UNIFORM_EPS = 1e-6
NAN_MESSAGE = (
    ": log_alpha contains NaN. A NaN loss or too large a learning rate usually causes this; "
    "reinitialise the gates (reset_parameters()) and lower lr."
)


def elementwise_configs(block: str, sizes: tuple[int, ...], interpreter_size: int) -> list[triton.Config]:
    """Autotune space of an elementwise kernel: ``block`` in ``sizes`` x 4 or 8 warps."""
    if INTERPRET:
        return [triton.Config({block: interpreter_size}, num_warps=4)]
    return [triton.Config({block: size}, num_warps=warps) for size in sizes for warps in (4, 8)]


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


def new_nan_flag(device: torch.device) -> torch.Tensor:
    """One int32 zero that a kernel sets (atomic max) when it meets a NaN log_alpha."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def raise_if_nan(flag: torch.Tensor, where: str) -> None:
    """Raise the l0fast NaN error if ``flag`` was set.

    On CUDA this reads one int back (a sync); it is skipped while a CUDA graph
    is being captured, where reading back is not allowed.
    """
    if flag.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if bool(flag.item()):
        raise ValueError(where + NAN_MESSAGE)


def state_on(rng_state: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[seed, offset]`` as a contiguous int64 tensor on ``device`` (no host read)."""
    if rng_state.dtype != torch.int64 or rng_state.numel() != 2:
        raise RuntimeError(
            f"rng_state must be an int64 tensor [seed, offset], got {rng_state.dtype} of shape {tuple(rng_state.shape)}"
        )
    return rng_state.to(device, non_blocking=True).contiguous()
