"""Gated sparse product of survey calibration: ``y = M @ w``, ``w = exp(log_weight) * gate``.

``M: (Q, N)`` sparse, Q targets x N households, is stored household-major
(the CSR of ``M^T``): household ``h`` owns entries ``k`` in
``col_ptr[h]:col_ptr[h+1]``, each with a target ``row_idx[k]`` (int32, or
uint16 in the compact layout of Q <= 65,536 targets) and a value ``values[k]``.
Offsets are int64 and absolute: ``col_ptr`` may start past 0 (entries outside
``col_ptr[0]:col_ptr[N]`` are unused), so a household block of a larger matrix
keeps its offsets, past 2^31 non-zeros included.

- forward:  ``y[r] = sum_h sum_{k in h, row_idx[k] == r} values[k] * w[h]``
- backward: ``grad_w[h] = sum_{k in h} values[k] * grad_y[row_idx[k]]``

The C++ kernels and the references accumulate in fp64.  The Triton kernels sum
each segment of a tile in the values' dtype and add the segments' totals in fp64
(:mod:`l0fast.kernels.gated_spmv`): with fp32 values, errors up to ~1e-6 of the
result where the C++'s stay ~1e-7.  The C++ forward scatters into one fp64 accumulator
per chunk of a fixed partition of the households (chosen from N, Q and nnz) and
adds the chunks in order, so results do not depend on the thread count; it
skips households with ``w[h] == 0`` (closed gates), so values must be finite.
Bytes moved per non-zero (fp32): forward and backward 6 or 8 read (a uint16 or
int32 row index, and the value), plus 12 per household (col_ptr and w or grad_w).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .registry import define_op

_INT32_MAX = 2**31 - 1


def household_entries(col_ptr: Tensor, row_idx: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(household, row, value) of every entry k in ``[col_ptr[0], col_ptr[N])``, each (col_ptr[N] - col_ptr[0],).

    Offsets are absolute: a layout need not start at entry 0 (a block of a larger
    matrix keeps its offsets), and entries outside that range are unused.
    """
    first, last = int(col_ptr[0]), int(col_ptr[-1])
    counts = col_ptr.diff()
    h = torch.repeat_interleave(torch.arange(counts.numel(), device=col_ptr.device), counts, output_size=last - first)
    return h, row_idx[first:last].long(), values[first:last]


def gated_spmv_ref(col_ptr: Tensor, row_idx: Tensor, values: Tensor, weight: Tensor, num_rows: int) -> Tensor:
    """``M @ weight`` in fp64, returned in ``weight``'s dtype.

    col_ptr: (N+1,) int64; row_idx: (nnz,) int32; values: (nnz,); weight: (N,) -> (num_rows,).
    """
    h, rows, vals = household_entries(col_ptr, row_idx, values)
    y = torch.zeros(num_rows, dtype=torch.float64, device=weight.device)
    y.index_add_(0, rows, vals.double() * weight.double()[h])
    return y.to(weight.dtype)


def gated_spmv_backward_ref(col_ptr: Tensor, row_idx: Tensor, values: Tensor, grad_y: Tensor) -> Tensor:
    """``M^T @ grad_y`` in fp64, returned in ``values``' dtype.  grad_y: (Q,) -> (N,)."""
    n = col_ptr.numel() - 1
    h, rows, vals = household_entries(col_ptr, row_idx, values)
    grad_w = torch.zeros(n, dtype=torch.float64, device=values.device)
    grad_w.index_add_(0, h, vals.double() * grad_y.double()[rows])
    return grad_w.to(values.dtype)


ROW_INDEX_DTYPES = (torch.int32, torch.uint16)
_UINT16_ROWS = 2**16


def _check_layout(col_ptr: Tensor, row_idx: Tensor, values: Tensor) -> None:
    torch._check(col_ptr.dim() == 1 and col_ptr.dtype == torch.int64, lambda: "col_ptr must be a 1-D int64 tensor")
    torch._check(row_idx.dim() == 1 and row_idx.dtype in ROW_INDEX_DTYPES, lambda: "row_idx must be a 1-D int32 or uint16 tensor")
    torch._check(values.shape == row_idx.shape, lambda: "values must have row_idx's shape (nnz,)")


def _spmv_fake(col_ptr: Tensor, row_idx: Tensor, values: Tensor, weight: Tensor, num_rows: int) -> Tensor:
    _check_layout(col_ptr, row_idx, values)
    torch._check(weight.shape == (col_ptr.shape[0] - 1,), lambda: "weight must have shape (N,) with N = len(col_ptr) - 1")
    torch._check(weight.dtype == values.dtype, lambda: "weight and values must share a dtype")
    return weight.new_empty(num_rows)


def _spmv_backward_fake(col_ptr: Tensor, row_idx: Tensor, values: Tensor, grad_y: Tensor) -> Tensor:
    _check_layout(col_ptr, row_idx, values)
    torch._check(grad_y.dim() == 1 and grad_y.dtype == values.dtype, lambda: "grad_y must be 1-D in values' dtype")
    return values.new_empty(col_ptr.shape[0] - 1)


def example_matrix(numel: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, int]:
    """A household-major (Q, numel) matrix shaped like a calibration problem.

    Row 0 is a dense "national total" (an entry for every non-empty household),
    households ``h % 11 == 5`` are empty columns, the others get 0-3 more
    entries in rows ``1 .. Q-2`` (duplicates possible), and row ``Q-1`` is empty.
    """
    q = 3 + numel // 100
    extra = torch.randint(0, 4, (numel,), generator=generator)
    counts = torch.where(torch.arange(numel) % 11 == 5, 0, 1 + extra)
    col_ptr = torch.zeros(numel + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=col_ptr[1:])
    nnz = int(col_ptr[-1])
    row_idx = torch.randint(1, q - 1, (nnz,), generator=generator, dtype=torch.int32)
    row_idx[col_ptr[:-1][counts > 0]] = 0
    values = (10 * torch.rand(nnz, generator=generator, dtype=torch.float64)).to(dtype)
    return col_ptr, row_idx, values, q


def _spmv_inputs(numel, dtype, generator):
    col_ptr, row_idx, values, q = example_matrix(numel, dtype, generator)
    weight = torch.rand(numel, generator=generator, dtype=torch.float64) * 3
    weight[::4] = 0.0  # closed gates
    return col_ptr, row_idx, values, weight.to(dtype), q


def _spmv_backward_inputs(numel, dtype, generator):
    col_ptr, row_idx, values, q = example_matrix(numel, dtype, generator)
    return col_ptr, row_idx, values, torch.randn(q, generator=generator, dtype=torch.float64).to(dtype)


spmv_op = define_op(gated_spmv_ref, _spmv_fake, _spmv_inputs, cpp_name="gated_spmv")
spmv_backward_op = define_op(gated_spmv_backward_ref, _spmv_backward_fake, _spmv_backward_inputs, cpp_name="gated_spmv_backward")


# --------------------------------------------------------------------------- matrix and autograd


@dataclass(frozen=True)
class HouseholdMajorMatrix:
    """M: (num_rows, N) as the CSR of M^T.

    col_ptr: (N+1,) int64; row_idx: (nnz,) int32, or uint16 when built with
    ``compact_rows=True`` and num_rows <= 65,536; values: (nnz,) float32/float64.

    >>> import scipy.sparse as sp, torch
    >>> M = HouseholdMajorMatrix.from_scipy(sp.random(5, 8, density=0.5, random_state=0))
    >>> gated_sparse_product(M, torch.ones(8)).shape
    torch.Size([5])
    """

    col_ptr: Tensor
    row_idx: Tensor
    values: Tensor
    num_rows: int

    def __post_init__(self) -> None:
        """Dtypes, ranks, lengths and devices (the kernels check the contents: monotone col_ptr, rows in range)."""
        parts = {"col_ptr": self.col_ptr, "row_idx": self.row_idx, "values": self.values}
        want = {"col_ptr": (torch.int64,), "row_idx": ROW_INDEX_DTYPES, "values": (torch.float32, torch.float64)}
        for name, t in parts.items():
            if not isinstance(t, Tensor) or t.dtype not in want[name] or t.dim() != 1:
                got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise TypeError(f"HouseholdMajorMatrix.{name} must be a 1-D tensor of {' or '.join(map(str, want[name]))}, got {got}; "
                                "build the matrix with HouseholdMajorMatrix.from_scipy / from_torch")
        if self.values.numel() != self.row_idx.numel() or self.col_ptr.numel() == 0:
            raise ValueError(f"HouseholdMajorMatrix: values ({self.values.numel()}) and row_idx ({self.row_idx.numel()}) must have one entry "
                             f"per non-zero and col_ptr at least 1 (N + 1 = {self.col_ptr.numel()})")
        if isinstance(self.num_rows, bool) or not isinstance(self.num_rows, (int, np.integer)) or not 0 <= self.num_rows <= _INT32_MAX:
            raise ValueError(f"HouseholdMajorMatrix.num_rows must be an int in [0, 2^31), got {self.num_rows!r}")
        if len({t.device for t in parts.values()}) != 1:
            raise ValueError(f"HouseholdMajorMatrix: col_ptr, row_idx and values must be on one device, got {[str(t.device) for t in parts.values()]}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.col_ptr.numel() - 1)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def to(self, device: torch.device | str) -> HouseholdMajorMatrix:
        """The same matrix with its tensors on ``device``."""
        move = lambda t: t.to(device)  # noqa: E731
        return HouseholdMajorMatrix(move(self.col_ptr), move(self.row_idx), move(self.values), self.num_rows)

    def to_sparse_coo(self) -> Tensor:
        """M as a coalesced (num_rows, N) torch sparse COO tensor."""
        cols, rows, values = household_entries(self.col_ptr, self.row_idx, self.values)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, self.shape).coalesce()

    def select_households(self, index: Tensor) -> HouseholdMajorMatrix:
        """The (num_rows, len(index)) matrix of households ``index`` (integers in [0, N), in that order; one read
        of their range back to the host)."""
        index = index.to(device=self.col_ptr.device, dtype=torch.int64)
        n = self.shape[1]
        if index.numel() and not bool(((index >= 0) & (index < n)).all()):
            outside = index[(index < 0) | (index >= n)][:5].tolist()
            raise IndexError(f"index holds households outside [0, {n}), e.g. {outside}; negative indices are not counted from the end")
        starts = self.col_ptr[index]
        lengths = self.col_ptr[index + 1] - starts
        col_ptr = torch.zeros(index.numel() + 1, dtype=torch.int64, device=index.device)
        torch.cumsum(lengths, 0, out=col_ptr[1:])
        total = int(col_ptr[-1])
        entries = torch.repeat_interleave(starts - col_ptr[:-1], lengths, output_size=total) + torch.arange(total, device=index.device)
        return HouseholdMajorMatrix(col_ptr, self.row_idx[entries], self.values[entries], self.num_rows)

    @classmethod
    def from_scipy(cls, M, dtype: torch.dtype = torch.float32, compact_rows: bool = False, name: str = "M") -> HouseholdMajorMatrix:
        """From any scipy sparse matrix (or dense array) of real values: unsorted indices sorted, duplicates summed
        (as scipy's ``sum_duplicates``), values checked finite in ``dtype``; complex values raise TypeError.

        ``compact_rows`` stores row indices as uint16 when there are at most 65,536 rows (C++ kernels only);
        ``name`` is the matrix's name in errors.  No copy is made where M's arrays already have the stored dtypes
        (a CSC matrix in canonical format): the matrix then shares them, and changing M changes it; pass
        ``M.copy()`` to keep them apart.
        """
        from scipy import sparse as sp

        check_real_dtype(M.dtype, name)
        if M.dtype == np.float16:  # scipy.sparse has no float16; float32 holds it exactly
            M = M.astype(np.float32)
        csc = sp.csc_matrix(M)  # may share M's arrays when M is already CSC
        if not csc.has_canonical_format:
            csc = csc.copy()  # sum_duplicates works in place: leave the caller's matrix alone
            csc.sum_duplicates()
        return cls._from_arrays(csc.indptr, csc.indices, csc.data, csc.shape, dtype, compact_rows, name)

    @classmethod
    def from_torch(cls, M: Tensor, dtype: torch.dtype | None = None) -> HouseholdMajorMatrix:
        """From a 2-D torch tensor (dense, COO, CSR or CSC); duplicates summed."""
        M = M.detach().cpu()
        check_real_dtype(M.dtype, "M")
        dtype = dtype or (M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float32)
        coo = (M.to_sparse_coo() if M.layout != torch.sparse_coo else M).coalesce()
        if coo.sparse_dim() != 2 or coo.dense_dim() != 0:
            raise ValueError(f"M must be a 2-D matrix, got shape {tuple(M.shape)}")
        rows, cols = coo.indices()
        order = torch.argsort(cols * max(1, M.shape[0]) + rows)
        counts = torch.bincount(cols, minlength=M.shape[1])
        col_ptr = torch.zeros(M.shape[1] + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=col_ptr[1:])
        return cls._from_arrays(col_ptr.numpy(), rows[order].numpy(), coo.values()[order].double().numpy(), tuple(M.shape), dtype)

    @classmethod
    def _from_arrays(cls, indptr, indices, data, shape, dtype, compact_rows: bool = False, name: str = "M") -> HouseholdMajorMatrix:
        if shape[0] > _INT32_MAX:
            raise ValueError(f"{name} has {shape[0]} rows; at most 2^31 - 1 targets are supported")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (the values' dtype), got {dtype}")
        if not np.isfinite(data).all():
            raise ValueError(f"{name} contains NaN or inf entries; clean the matrix before fitting")
        index_dtype = np.uint16 if compact_rows and shape[0] <= _UINT16_ROWS else np.int32
        own = lambda a, dt=None: torch.from_numpy(np.require(a, dtype=dt, requirements="W"))  # noqa: E731  read-only arrays copied
        values = own(data).to(dtype)
        if dtype != torch.float64 and not bool(torch.isfinite(values).all()):  # after the cast: 1e39 becomes inf in float32
            raise ValueError(f"{name} contains NaN or inf entries, or values beyond {dtype}'s range (|x| > 3.4e38); "
                             "clean the matrix before fitting")
        return cls(own(indptr, np.int64), own(indices, index_dtype), values, int(shape[0]))


def check_vector(t, name: str, n: int, dtype: torch.dtype) -> None:
    """TypeError unless ``t`` is a ``dtype`` tensor; ValueError unless its shape is (n,)."""
    if not isinstance(t, Tensor) or t.dtype != dtype:
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a {dtype} tensor (the matrix values' dtype), got {got}; convert it with .to({dtype})")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one entry per household (column of M), got {tuple(t.shape)}")


def check_real_dtype(dtype, name: str) -> None:
    """TypeError unless ``dtype`` (numpy or torch) is bool, integer or floating point: no complex, no objects."""
    if dtype.is_complex if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {dtype}; "
                        "take the real part (np.real) or convert it to float64 first")


class GatedSparseProduct(torch.autograd.Function):
    """``y = M @ weight`` with ``grad_weight = M^T @ grad_y``; M itself gets no gradient."""

    @staticmethod
    def forward(weight, col_ptr, row_idx, values, num_rows):
        return torch.ops.l0fast.gated_spmv(col_ptr, row_idx, values, weight, num_rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _weight, col_ptr, row_idx, values, _num_rows = inputs
        ctx.save_for_backward(col_ptr, row_idx, values)

    @staticmethod
    @once_differentiable  # a second derivative raises instead of treating this backward as constant
    def backward(ctx, grad_y):
        col_ptr, row_idx, values = ctx.saved_tensors
        grad = torch.ops.l0fast.gated_spmv_backward(col_ptr, row_idx, values, grad_y.contiguous())
        return grad, None, None, None, None


def gated_sparse_product(matrix: HouseholdMajorMatrix, weight: Tensor) -> Tensor:
    """Differentiable ``M @ weight``.  matrix: (Q, N) household-major; weight: (N,) -> (Q,).

    ``weight`` is ``exp(log_weight) * gate`` and must share ``matrix.values``' dtype; NaN raises ValueError on CPU.
    """
    check_vector(weight, "weight", matrix.shape[1], matrix.values.dtype)
    # the C++ kernel skips w == 0 and would drop NaN silently; on CPU the check costs no device sync
    if weight.device.type == "cpu" and not torch.compiler.is_compiling() and bool(torch.isnan(weight).any()):
        raise ValueError("weight contains NaN (log_weight or the gates went NaN); a NaN loss or too large a learning rate usually causes this")
    return GatedSparseProduct.apply(weight, matrix.col_ptr, matrix.row_idx, matrix.values, matrix.num_rows)
