"""The fused calibration objective against its composition from reference ops."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast.ops import HouseholdMajorMatrix, calibration_objective
from l0fast.ops.hard_concrete import GATE_PARAMS, hard_concrete_mean_ref, hard_concrete_sample_ref
from l0fast.ops.l0_penalty import l0_penalty_ref

LAMBDA_L0, LAMBDA_L2 = 0.05, 0.01


def _matrix(q, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    M = sp.random(q, n, density=0.3, format="csr", random_state=rng)
    M = sp.vstack([M, sp.csr_matrix(np.ones((1, n)))])  # a dense "national" row
    return M, HouseholdMajorMatrix.from_scipy(M, dtype)


def _reference(M, log_weight, log_alpha, state, gates):
    """The objective composed from plain torch and the reference gate ops."""
    if gates == "sample":
        gate = hard_concrete_sample_ref(log_alpha, state, *GATE_PARAMS)
    elif gates == "mean":
        gate = hard_concrete_mean_ref(log_alpha, *GATE_PARAMS)
    else:
        gate = torch.ones_like(log_weight)
    dense = torch.as_tensor(M.toarray(), dtype=log_weight.dtype)
    y = dense @ (log_weight.exp() * gate)
    penalty = LAMBDA_L0 * l0_penalty_ref(log_alpha, *GATE_PARAMS) + LAMBDA_L2 * log_weight.exp().square().sum()
    return y, penalty


@pytest.mark.parametrize("gates", ["sample", "mean", "none"])
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-4, 1e-4), (torch.float64, 1e-10, 1e-10)])
@pytest.mark.parametrize("q,n", [(1, 1), (7, 13), (40, 3001)])
def test_forward_and_backward_match_reference(gates, dtype, atol, rtol, q, n):
    M, matrix = _matrix(q, n, dtype)
    gen = torch.Generator().manual_seed(q * n)
    log_weight = torch.randn(n, generator=gen, dtype=dtype)
    log_alpha = 3 * torch.randn(n, generator=gen, dtype=dtype)
    lw1, la1 = log_weight.clone().requires_grad_(), log_alpha.clone().requires_grad_()
    lw2, la2 = log_weight.clone().requires_grad_(), log_alpha.clone().requires_grad_()
    state = torch.tensor([17, 3])
    y1, p1 = calibration_objective(matrix, lw1, la1, state.clone(), GATE_PARAMS, LAMBDA_L0, LAMBDA_L2, gates)
    y2, p2 = _reference(M, lw2, la2, state, gates)
    torch.testing.assert_close(y1, y2, atol=atol * max(1.0, y2.abs().max().item()), rtol=rtol)
    torch.testing.assert_close(p1, p2, atol=atol * max(1.0, p2.abs().item()), rtol=rtol)
    grad_y = torch.randn(y1.shape, generator=gen, dtype=dtype)
    ((y1 * grad_y).sum() + 3 * p1).backward()
    ((y2 * grad_y).sum() + 3 * p2).backward()
    torch.testing.assert_close(lw1.grad, lw2.grad, atol=atol * max(1.0, lw2.grad.abs().max().item()), rtol=rtol)
    torch.testing.assert_close(la1.grad, la2.grad, atol=atol * max(1.0, la2.grad.abs().max().item()), rtol=rtol)


@pytest.mark.parametrize("gates", ["sample", "mean", "none"])
def test_gradcheck_fp64(gates):
    _, matrix = _matrix(6, 9, torch.float64)
    gen = torch.Generator().manual_seed(3)
    log_weight = torch.randn(9, generator=gen, dtype=torch.float64).requires_grad_()
    log_alpha = (2 * torch.randn(9, generator=gen, dtype=torch.float64)).requires_grad_()
    state = torch.tensor([5, 0])

    def objective(lw, la):  # a fresh copy of the state: every evaluation draws the same noise
        return calibration_objective(matrix, lw, la, state.clone(), GATE_PARAMS, LAMBDA_L0, LAMBDA_L2, gates)

    assert torch.autograd.gradcheck(objective, (log_weight, log_alpha), eps=1e-6, atol=1e-5)


def test_sampling_advances_the_stream():
    _, matrix = _matrix(3, 50, torch.float32)
    lw, la, state = torch.zeros(50), torch.zeros(50), torch.tensor([1, 0])
    first, _ = calibration_objective(matrix, lw, la, state, GATE_PARAMS, gates="sample")
    assert state.tolist() == [1, 50]
    second, _ = calibration_objective(matrix, lw, la, state, GATE_PARAMS, gates="sample")
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="gates must be one of"):
        calibration_objective(matrix, lw, la, state, GATE_PARAMS, gates="eval")


def test_int64_indexed_input_matrix_gives_the_same_product():
    """scipy switches to int64 indptr/indices past 2^31 non-zeros: force that layout on a small matrix."""
    M, matrix = _matrix(9, 40, torch.float64)
    wide = sp.csr_matrix(M)
    wide.indptr, wide.indices = wide.indptr.astype(np.int64), wide.indices.astype(np.int64)
    matrix64 = HouseholdMajorMatrix.from_scipy(wide, torch.float64)
    assert matrix64.col_ptr.dtype == torch.int64  # offsets into the non-zeros are always int64
    assert torch.equal(matrix64.col_ptr, matrix.col_ptr) and torch.equal(matrix64.row_idx, matrix.row_idx)
    lw, la = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    y32, _ = calibration_objective(matrix, lw, la, torch.tensor([1, 0]), GATE_PARAMS, gates="mean")
    y64, _ = calibration_objective(matrix64, lw, la, torch.tensor([1, 0]), GATE_PARAMS, gates="mean")
    torch.testing.assert_close(y64, y32, atol=0, rtol=0)
    torch.testing.assert_close(y64, torch.as_tensor(M.toarray()) @ (lw.exp() * hard_concrete_mean_ref(la, *GATE_PARAMS)))
