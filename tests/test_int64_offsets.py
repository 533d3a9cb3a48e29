"""The int64 offset path past 2^31 non-zeros, without 16 GB of memory.

A small household-major matrix is placed at entry ``BASE`` > 2^31 of index and
value arrays allocated with ``torch.empty``: the pages before it are never
touched, so they cost address space, not memory.  ``col_ptr`` then holds
offsets above 2^31; any int32 arithmetic on an offset would read the wrong
(untouched, zero) entries or fault.  Every C++ path must give bitwise the
results of the same matrix stored from entry 0.  (The Triton launchers validate
the whole index array on the host, which would touch all of it: they are not
run here.)
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast.engine import AdamState, FitOptions, FitTargets
from l0fast.engine.cpu import CppFit
from l0fast.ops import HouseholdMajorMatrix
from l0fast.ops.calibration import calibration_backward_ref
from l0fast.ops.gated_spmv import gated_spmv_backward_ref, gated_spmv_ref
from l0fast.rng import new_rng_state

BASE = 2**31 + 4093  # odd, so no alignment hides a wrong offset
GATE_PARAMS = (2 / 3, -0.1, 1.1)


def _at_base(matrix: HouseholdMajorMatrix) -> HouseholdMajorMatrix:
    """The same matrix with its entries stored from entry BASE of lazily allocated arrays."""
    row_idx = torch.empty(BASE + matrix.nnz, dtype=matrix.row_idx.dtype)
    values = torch.empty(BASE + matrix.nnz, dtype=matrix.values.dtype)
    row_idx[BASE:] = matrix.row_idx
    values[BASE:] = matrix.values
    return HouseholdMajorMatrix(matrix.col_ptr + BASE, row_idx, values, matrix.num_rows)


@pytest.fixture(scope="module", params=[False, True], ids=["int32 rows", "uint16 rows"])
def matrices(request):
    rng = np.random.default_rng(3)
    M = sp.random(37, 2003, density=0.05, format="csc", random_state=rng)  # some households are empty
    small = HouseholdMajorMatrix.from_scipy(M, torch.float32, compact_rows=request.param)
    return small, _at_base(small)


def _vectors(matrix: HouseholdMajorMatrix):
    g = torch.Generator().manual_seed(1)
    n, q = matrix.shape[1], matrix.num_rows
    return {
        "weight": torch.rand(n, generator=g), "grad_y": torch.randn(q, generator=g),
        "log_weight": 0.3 * torch.randn(n, generator=g), "log_alpha": torch.randn(n, generator=g),
        "gate": torch.rand(n, generator=g).clamp(0.05, 0.95),
    }


def test_offsets_really_pass_2_to_the_31(matrices):
    _small, big = matrices
    assert int(big.col_ptr[0]) > 2**31 and big.row_idx.numel() > 2**31


def test_gated_product_and_its_backward_past_2_to_the_31(matrices):
    small, big = matrices
    v = _vectors(small)
    for m in (small, big):
        assert torch.equal(torch.ops.l0fast.gated_spmv(m.col_ptr, m.row_idx, m.values, v["weight"], m.num_rows),
                           torch.ops.l0fast.gated_spmv(small.col_ptr, small.row_idx, small.values, v["weight"], small.num_rows))
    assert torch.equal(torch.ops.l0fast.gated_spmv_backward(big.col_ptr, big.row_idx, big.values, v["grad_y"]),
                       torch.ops.l0fast.gated_spmv_backward(small.col_ptr, small.row_idx, small.values, v["grad_y"]))
    # the references read the same entries, and the kernels match them
    expected = gated_spmv_ref(small.col_ptr, small.row_idx, small.values, v["weight"], small.num_rows)
    torch.testing.assert_close(gated_spmv_ref(big.col_ptr, big.row_idx, big.values, v["weight"], big.num_rows), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.l0fast.gated_spmv(big.col_ptr, big.row_idx, big.values, v["weight"], big.num_rows), expected)
    torch.testing.assert_close(gated_spmv_backward_ref(big.col_ptr, big.row_idx, big.values, v["grad_y"]),
                               gated_spmv_backward_ref(small.col_ptr, small.row_idx, small.values, v["grad_y"]), rtol=0, atol=0)


def test_calibration_backward_past_2_to_the_31(matrices):
    small, big = matrices
    v = _vectors(small)

    def backward(m, op):
        return op(m.col_ptr, m.row_idx, m.values, v["grad_y"], torch.tensor(1.0), v["log_weight"], v["log_alpha"], v["gate"],
                  *GATE_PARAMS, 0.01, 0.001)

    for a, b in zip(backward(big, torch.ops.l0fast.calibration_backward), backward(small, torch.ops.l0fast.calibration_backward)):
        assert torch.equal(a, b)
    for a, b in zip(backward(big, torch.ops.l0fast.calibration_backward), backward(small, calibration_backward_ref)):
        torch.testing.assert_close(a, b)


def test_fused_fit_past_2_to_the_31(matrices):
    small, big = matrices
    v = _vectors(small)
    y = torch.ops.l0fast.gated_spmv(small.col_ptr, small.row_idx, small.values, v["weight"], small.num_rows).double() + 0.5
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=1e-3, gate_params=GATE_PARAMS)
    results = []
    for m in (small, big):
        log_weight, log_alpha = v["log_weight"].clone(), v["log_alpha"].clone()
        rng_state, adam = new_rng_state(7), AdamState.zeros_like(log_weight, log_alpha)
        stats = CppFit(m, FitTargets(y, torch.ones_like(y), 1 / (y + 1)), log_weight, log_alpha, rng_state, adam, options).run(5, True)
        results.append((stats, log_weight, log_alpha, *adam.moments().values()))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][1], v["log_weight"]), "the fit must have moved the weights"
