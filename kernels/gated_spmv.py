"""Gated sparse product ``y = M @ w`` and its backward ``M^T @ grad_y`` in Triton.

``M: (Q, N)`` arrives household-major, as in :mod:`l0fast.ops.gated_spmv`
(the CSR of ``M^T``: ``col_ptr (N+1,) int64``, ``row_idx (nnz,) int32``,
``values (nnz,)``):

- forward:  ``y[r] = sum_{k : row_idx[k] == r} values[k] * w[h(k)]``
- backward: ``grad_w[h] = sum_{k in col_ptr[h]:col_ptr[h+1]} values[k] * grad_y[row_idx[k]]``

Both are one kernel, ``segment sums``: ``out[s] = sum_{k in ptr[s]:ptr[s+1]} val[k] * x[idx[k]]``.
A program takes ``BLOCK_S`` consecutive segments as the rows of a
``(BLOCK_S, BLOCK_E)`` tile and walks their entries ``BLOCK_E`` at a time, so each
tile row reads contiguous, coalesced memory; the tile accumulates in the
values' dtype, each segment's total is rounded to fp64, and longer sums add
fp64 totals.  The order is fixed by the layout: results do not change from
run to run.

**Backward** (gather, household-major as stored): segments are households.
Households are short (tens of entries), so ``BLOCK_E`` is the average length
rounded to a power of two and ``BLOCK_S`` fills a 2048-entry tile; a program
costs its longest household.  Bytes per non-zero (fp32): 4 (row index) + 4
(value) read, ``grad_y`` (Q values) stays in L2; per household 8 read (col_ptr)
+ 4 written.

**Forward** (deterministic default): a scatter into Q targets needs either
atomics (run-to-run differences; serialised on the dense "national total"
rows, which hold every household) or a per-block ``[n_blocks, Q]`` buffer (too
big at Q = 40,000).  Instead the first call builds the target-major CSR of
``M`` (kept with the matrix while its tensors live and are unmodified) and cuts every target row into segments of at most
``SEGMENT`` entries: target rows run from tens to millions of entries, so
splitting them balances the programs by non-zeros, not by rows.  Pass 1 writes
one fp64 partial per segment (segment sums with ``x = w``, ``idx`` = household);
pass 2 adds each row's partials in order (segment sums over the partials).
Within a row, households are in increasing order, so ``w`` is read
monotonically (dense rows read it sequentially).  Bytes per non-zero (fp32): 4
(household index) + 4 (value) + 4 to 32 (the ``w`` gather, one sector when
cached or not) read; per segment 8 + 8; per target 8 + 4.  The target-major
copy costs 8 bytes per non-zero of device memory, built once on the host by
scipy's counting sort (CSR to CSC of ``M^T``): O(nnz + Q), stable, and the
device holds nothing but the output (a device sort would need ~40 bytes per
non-zero of scratch).

``deterministic=False`` skips the copy: a household-major scatter with fp64
relaxed ``atomic_add`` into ``y`` (4 + 4 bytes read per non-zero, 8 per household),
whose sums may differ in the last bits between runs.

Malformed matrices (``col_ptr`` decreasing or outside ``[0, nnz]``, a row
index outside ``[0, Q)``) raise ``ValueError`` like the C++ path; the check runs
once per matrix (one host read) and is cached with it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from scipy import sparse

from ._common import INTERPRET, LAUNCH_OPTIONS, launch_device

SEGMENT = 2048  # entries per forward segment: part of the cached layout, fixed
TILE = 8192 if INTERPRET else 2048  # entries per (BLOCK_S, BLOCK_E) tile
HOUSEHOLD_BLOCKS = (8, 128)  # BLOCK_E range of household tiles (powers of two)
SEGMENT_BLOCK, PARTIALS_BLOCK = 256, 64  # BLOCK_E of the forward's two passes
SPARSE_WARPS = 4
MALFORMED = (
    "gated_spmv: malformed household-major matrix (col_ptr not non-decreasing within [0, nnz], "
    "or a row index outside [0, num_rows)); build it with HouseholdMajorMatrix.from_scipy"
)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def segment_sums(
    ptr_ptr, idx_ptr, val_ptr, x_ptr, s, s_mask,
    GATHER: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """fp64 ``sum_{k in ptr[s]:ptr[s+1]} val[k] * x[idx[k]]`` (``* 1`` without GATHER) for s: (BLOCK_S,)."""
    start = tl.load(ptr_ptr + s, mask=s_mask, other=0)
    length = tl.load(ptr_ptr + s + 1, mask=s_mask, other=0) - start
    longest = tl.max(length, axis=0)
    acc = tl.zeros([BLOCK_S, BLOCK_E], dtype=ACC)
    for j0 in range(0, longest, BLOCK_E):
        j = j0 + tl.arange(0, BLOCK_E)
        m = j[None, :] < length[:, None]
        k = start[:, None] + j[None, :]
        v = tl.load(val_ptr + k, mask=m, other=0.0).to(ACC)
        if GATHER:
            r = tl.load(idx_ptr + k, mask=m, other=0)
            v = v * tl.load(x_ptr + r, mask=m, other=0.0).to(ACC)
        acc += v
    return tl.sum(acc, axis=1).to(tl.float64)


@triton.jit
def _segment_sums_kernel(
    ptr_ptr, idx_ptr, val_ptr, x_ptr, out_ptr, n_seg,
    GATHER: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = s < n_seg
    total = segment_sums(ptr_ptr, idx_ptr, val_ptr, x_ptr, s, s_mask, GATHER, ACC, BLOCK_S, BLOCK_E)
    tl.store(out_ptr + s, total.to(out_ptr.dtype.element_ty), mask=s_mask)


@triton.jit
def _scatter_atomic_kernel(
    col_ptr, row_ptr, val_ptr, w_ptr, y_ptr, n,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Non-deterministic forward: ``y[row_idx[k]] += values[k] * w[h]`` with fp64 atomics."""
    h = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    h_mask = h < n
    start = tl.load(col_ptr + h, mask=h_mask, other=0)
    length = tl.load(col_ptr + h + 1, mask=h_mask, other=0) - start
    wh = tl.load(w_ptr + h, mask=h_mask, other=0.0).to(ACC)
    longest = tl.max(length, axis=0)
    for j0 in range(0, longest, BLOCK_E):
        j = j0 + tl.arange(0, BLOCK_E)
        m = (j[None, :] < length[:, None]) & (wh[:, None] != 0.0)
        k = start[:, None] + j[None, :]
        v = tl.load(val_ptr + k, mask=m, other=0.0).to(ACC)
        r = tl.load(row_ptr + k, mask=m, other=0)
        tl.atomic_add(y_ptr + r, (v * wh[:, None]).to(tl.float64), mask=m, sem="relaxed")


# ----------------------------------------------------------------------------- layout (built once per matrix)


@dataclass
class TargetMajor:
    """Row segments of the CSR of M, for the deterministic forward.

    seg_bounds: (n_seg+1,) int64 entry bounds of each segment; seg_ptr: (Q+1,) int64
    segments of each row; households: (nnz,) int32; values: (nnz,) M's values by row.
    """

    seg_bounds: torch.Tensor | None = None
    seg_ptr: torch.Tensor | None = None
    households: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass
class _Entry:
    refs: tuple
    stamp: tuple
    target_major: TargetMajor


_LAYOUTS: dict[tuple, _Entry] = {}


def _stamp(tensors) -> tuple:
    stamp = []
    for t in tensors:
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter
            version = None
        stamp.append((t.data_ptr(), t.numel(), t.device, t.dtype, version))
    return tuple(stamp)


def _validate(col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, num_rows: int) -> None:
    for name, t, dtype in (("col_ptr", col_ptr, torch.int64), ("row_idx", row_idx, torch.int32)):
        if t.dim() != 1 or t.dtype != dtype:
            raise RuntimeError(f"{name} must be a 1-D {dtype} tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if values.dtype not in (torch.float32, torch.float64) or values.shape != row_idx.shape:
        raise RuntimeError(f"values must be float32/float64 with row_idx's shape, got {values.dtype} {tuple(values.shape)}")
    if col_ptr.numel() < 1:
        raise RuntimeError("col_ptr must have N + 1 >= 1 entries")
    if not 0 <= num_rows <= 2**31 - 1:
        raise RuntimeError(f"num_rows must be in [0, 2^31), got {num_rows}")
    bad = (col_ptr[:1] < 0) | (col_ptr[-1:] > values.numel())
    if col_ptr.numel() > 1:
        bad = bad | (col_ptr.diff() < 0).any()
    if bool(bad.any()):
        raise ValueError(MALFORMED)
    used = row_idx[int(col_ptr[0]) : int(col_ptr[-1])]  # offsets are absolute: entries outside are not the matrix's
    if used.numel() and bool((used.min() < 0) | (used.max() >= num_rows)):
        raise ValueError(MALFORMED)


def layout(col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, num_rows: int) -> _Entry:
    """The validated matrix's cache entry, kept while its three tensors live unmodified."""
    key = (id(col_ptr), id(row_idx), id(values), num_rows)
    tensors = (col_ptr, row_idx, values)
    entry = _LAYOUTS.get(key)
    if entry is not None and all(ref() is t for ref, t in zip(entry.refs, tensors)) and entry.stamp == _stamp(tensors):
        return entry
    _validate(col_ptr, row_idx, values, num_rows)
    drop = lambda _ref, key=key: _LAYOUTS.pop(key, None)  # noqa: E731
    entry = _Entry(tuple(weakref.ref(t, drop) for t in tensors), _stamp(tensors), TargetMajor())
    _LAYOUTS[key] = entry
    return entry


def build_target_major(col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, num_rows: int) -> TargetMajor:
    """Target-major CSR of M with every row cut into segments of at most SEGMENT entries.

    Transposed on the host by counting sort (the CSC of ``M^T`` is the CSR of
    ``M``; households stay increasing within a row); the device receives the output only.
    """
    start, stop = int(col_ptr[0]), int(col_ptr[-1])  # offsets are absolute: the entries in use, from 0 here
    n, nnz, device = col_ptr.numel() - 1, stop - start, values.device
    host = lambda t: t.detach().cpu().numpy()  # noqa: E731
    by_target = sparse.csc_matrix(sparse.csr_matrix((host(values[start:stop]), host(row_idx[start:stop]), host(col_ptr - start)),
                                                     shape=(n, num_rows)))
    row_start = torch.from_numpy(by_target.indptr.astype(np.int64))
    seg_per_row = (row_start.diff() + SEGMENT - 1) // SEGMENT
    seg_ptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    torch.cumsum(seg_per_row, 0, out=seg_ptr[1:])
    n_seg = int(seg_ptr[-1])
    seg_row = torch.repeat_interleave(torch.arange(num_rows), seg_per_row, output_size=n_seg)
    first = row_start[seg_row] + (torch.arange(n_seg) - seg_ptr[seg_row]) * SEGMENT
    seg_bounds = torch.cat([first, torch.full((1,), nnz, dtype=torch.int64)])
    households = torch.from_numpy(by_target.indices.astype(np.int32, copy=False))
    return TargetMajor(seg_bounds.to(device), seg_ptr.to(device), households.to(device), torch.from_numpy(by_target.data).to(device))


# ----------------------------------------------------------------------------- launchers


def _acc(values: torch.Tensor):
    return tl.float64 if values.dtype == torch.float64 else tl.float32


def _pow2(x: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, int(x)))))


def segment_sums_launch(ptr, idx, val, x, out, n_seg: int, block_e: int, gather: bool = True) -> None:
    """out[s] = sum_{k in ptr[s]:ptr[s+1]} val[k] * x[idx[k]] for s < n_seg, tile (TILE / block_e, block_e)."""
    if n_seg == 0:
        return
    block_s = max(1, TILE // block_e)
    _segment_sums_kernel[(triton.cdiv(n_seg, block_s),)](
        ptr, idx, val, x, out, n_seg,
        GATHER=gather, ACC=_acc(val), BLOCK_S=block_s, BLOCK_E=block_e, num_warps=SPARSE_WARPS, **LAUNCH_OPTIONS,
    )


def household_block(col_ptr: torch.Tensor, nnz: int) -> int:
    """BLOCK_E of household tiles: the mean household length as a power of two in HOUSEHOLD_BLOCKS."""
    return _pow2(nnz / max(1, col_ptr.numel() - 1), *HOUSEHOLD_BLOCKS)


def gated_spmv(
    col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, num_rows: int,
    deterministic: bool = True,
) -> torch.Tensor:
    """``M @ weight`` accumulated in fp64, in weight's dtype.  weight: (N,) -> (num_rows,)."""
    with launch_device(col_ptr=col_ptr, row_idx=row_idx, values=values, weight=weight):
        entry = layout(col_ptr, row_idx, values, num_rows)
        n = col_ptr.numel() - 1
        if weight.shape != (n,) or weight.dtype != values.dtype:
            raise RuntimeError(f"weight must have shape ({n},) and dtype {values.dtype}, got {weight.dtype} {tuple(weight.shape)}")
        w = weight.contiguous()
        nnz = values.numel()
        if nnz == 0 or num_rows == 0:
            return torch.zeros(num_rows, dtype=w.dtype, device=w.device)
        if not deterministic:
            y = torch.zeros(num_rows, dtype=torch.float64, device=w.device)
            block_e = household_block(col_ptr, nnz)
            block_s = max(1, TILE // block_e)
            _scatter_atomic_kernel[(triton.cdiv(n, block_s),)](
                col_ptr.contiguous(), row_idx.contiguous(), values.contiguous(), w, y, n,
                ACC=_acc(values), BLOCK_S=block_s, BLOCK_E=block_e, num_warps=SPARSE_WARPS, **LAUNCH_OPTIONS,
            )
            return y.to(w.dtype)
        y = torch.empty(num_rows, dtype=w.dtype, device=w.device)
        target_sums(entry, col_ptr, row_idx, values, w, y)
        return y


def target_sums(entry: _Entry, col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, w: torch.Tensor,
                out: torch.Tensor) -> None:
    """out = M @ w (deterministic: fp64 segment sums of the target-major copy, built once per matrix).

    entry: the matrix's :func:`layout`; w: (N,) contiguous; out: (num_rows,), any float dtype.
    """
    tm, num_rows = entry.target_major, out.numel()
    if tm.seg_bounds is None:
        tm.__dict__.update(build_target_major(col_ptr, row_idx, values, num_rows).__dict__)
    n_seg = tm.seg_bounds.numel() - 1
    partials = torch.empty(n_seg, dtype=torch.float64, device=w.device)
    segment_sums_launch(tm.seg_bounds, tm.households, tm.values, w, partials, n_seg, SEGMENT_BLOCK)
    segment_sums_launch(tm.seg_ptr, tm.seg_ptr, partials, partials, out, num_rows, PARTIALS_BLOCK, gather=False)


def gated_spmv_backward(col_ptr: torch.Tensor, row_idx: torch.Tensor, values: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """``M^T @ grad_y`` accumulated in fp64, in values' dtype.  grad_y: (Q,) -> (N,)."""
    with launch_device(col_ptr=col_ptr, row_idx=row_idx, values=values, grad_y=grad_y):
        layout(col_ptr, row_idx, values, grad_y.numel())
        if grad_y.dim() != 1 or grad_y.dtype != values.dtype:
            raise RuntimeError(f"grad_y must be 1-D in {values.dtype}, got {grad_y.dtype} of shape {tuple(grad_y.shape)}")
        n = col_ptr.numel() - 1
        grad_w = torch.empty(n, dtype=values.dtype, device=values.device)
        segment_sums_launch(
            col_ptr.contiguous(), row_idx.contiguous(), values.contiguous(), grad_y.contiguous(), grad_w, n,
            household_block(col_ptr, values.numel()),
        )
        return grad_w
