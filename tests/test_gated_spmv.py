"""Gated sparse product of calibration against dense torch matmul, gradients, determinism."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast.ops import HouseholdMajorMatrix, gated_sparse_product

# Tolerance travels with the dtype.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float64, 1e-12, 1e-12)]


def _random_scipy(q, n, density, rng, dense_row=None):
    M = sp.random(q, n, density=density, format="lil", random_state=rng, data_rvs=lambda k: rng.uniform(-5, 5, k))
    if dense_row is not None:
        M[dense_row, :] = rng.uniform(0.5, 2.0, (1, n))
    return M.tocsr()


def _shapes(rng):
    yield "zero_nnz", sp.csr_matrix((5, 9))
    yield "empty_matrix", sp.csr_matrix((0, 0))
    yield "no_households", sp.csr_matrix((4, 0))
    yield "no_targets", sp.csr_matrix((0, 6))
    yield "one_by_one", sp.csr_matrix(np.array([[3.0]]))
    yield "odd", _random_scipy(7, 13, 0.3, rng)
    M = _random_scipy(31, 2049, 0.01, rng, dense_row=17).tolil()
    M[:, 100:140] = 0  # empty columns
    M[3, :] = 0  # empty row (rows with no entries also occur at random)
    yield "dense_total_row", M.tocsr()
    yield "many_households", _random_scipy(50, 70_001, 0.002, rng, dense_row=0)


@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_forward_backward_match_dense_matmul(case, dtype, atol, rtol):
    rng = np.random.default_rng(case)
    name, M = list(_shapes(rng))[case]
    mat = HouseholdMajorMatrix.from_scipy(M, dtype=dtype)
    assert mat.shape == M.shape and mat.row_idx.dtype == torch.int32 and mat.col_ptr.dtype == torch.int64
    dense = torch.from_numpy(M.toarray()).to(dtype).double()
    weight = torch.from_numpy(rng.uniform(0, 3, M.shape[1])).to(dtype)
    weight[::3] = 0  # closed gates
    w = weight.clone().requires_grad_()
    y = gated_sparse_product(mat, w)
    y_want = dense @ weight.double()
    assert y.dtype == dtype and y.shape == (M.shape[0],)
    torch.testing.assert_close(y.double(), y_want, atol=atol * (1 + y_want.abs().max().item() if y_want.numel() else 1), rtol=rtol)
    grad_y = torch.from_numpy(rng.standard_normal(M.shape[0])).to(dtype)
    y.backward(grad_y)
    g_want = dense.T @ grad_y.double()
    assert w.grad.dtype == dtype
    torch.testing.assert_close(w.grad.double(), g_want, atol=atol * (1 + g_want.abs().max().item() if g_want.numel() else 1), rtol=rtol)


def test_from_scipy_sums_duplicates_and_accepts_any_format():
    rows, cols, vals = [0, 0, 2, 1, 0], [1, 1, 3, 0, 3], [1.0, 2.5, -1.0, 4.0, 0.5]
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(3, 4))
    dense = torch.tensor(coo.toarray())
    HouseholdMajorMatrix.from_scipy(coo)
    assert coo.nnz == 5  # the caller's matrix is left alone
    for M in (coo, coo.tocsr(), coo.tocsc(), coo.todok()):
        mat = HouseholdMajorMatrix.from_scipy(M, dtype=torch.float64)
        assert mat.nnz == 4  # the two (0, 1) entries became one
        w = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
        torch.testing.assert_close(gated_sparse_product(mat, w), dense @ w, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_from_torch_matches_from_scipy():
    M = _random_scipy(9, 40, 0.2, np.random.default_rng(3))
    want = HouseholdMajorMatrix.from_scipy(M, dtype=torch.float64)
    dense = torch.from_numpy(M.toarray())
    for T in (dense, dense.to_sparse_coo(), dense.to_sparse_csr()):
        got = HouseholdMajorMatrix.from_torch(T)
        assert got.num_rows == want.num_rows
        for a, b in ((got.col_ptr, want.col_ptr), (got.row_idx, want.row_idx), (got.values, want.values)):
            assert torch.equal(a, b)


def test_rejects_non_finite_and_malformed():
    with pytest.raises(ValueError, match="NaN or inf"):
        HouseholdMajorMatrix.from_scipy(sp.csr_matrix(np.array([[np.nan, 1.0]])))
    mat = HouseholdMajorMatrix.from_scipy(sp.csr_matrix(np.ones((2, 3))))
    bad_rows = mat.row_idx.clone()
    bad_rows[0] = 7
    with pytest.raises(ValueError, match="malformed"):
        torch.ops.l0fast.gated_spmv(mat.col_ptr, bad_rows, mat.values, torch.ones(3), 2)
    with pytest.raises(ValueError, match="malformed"):
        torch.ops.l0fast.gated_spmv_backward(mat.col_ptr, bad_rows, mat.values, torch.ones(2))
    bad_ptr = torch.tensor([0, 5, 2, 6])
    with pytest.raises(ValueError, match="malformed"):
        torch.ops.l0fast.gated_spmv(bad_ptr, mat.row_idx, mat.values, torch.ones(3), 2)
    # the product skips closed households (weight 0) but still checks their ranges
    with pytest.raises(ValueError, match="malformed"):
        torch.ops.l0fast.gated_spmv(bad_ptr, mat.row_idx, mat.values, torch.tensor([1.0, 0.0, 1.0]), 2)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.l0fast.gated_spmv(mat.col_ptr, mat.row_idx, mat.values, torch.ones(3, dtype=torch.float64), 2)


def test_gradcheck_fp64():
    M = _random_scipy(6, 23, 0.3, np.random.default_rng(5), dense_row=2)
    mat = HouseholdMajorMatrix.from_scipy(M, dtype=torch.float64)
    w = torch.rand(23, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: gated_sparse_product(mat, v), (w,), eps=1e-6, atol=1e-8)


def test_from_scipy_leaves_a_csc_input_alone():
    M = sp.csc_matrix((np.array([1.0, 2.0, 4.0]), np.array([0, 0, 1]), np.array([0, 2, 3])), shape=(2, 2))
    mat = HouseholdMajorMatrix.from_scipy(M, dtype=torch.float64)
    assert M.nnz == 3 and mat.nnz == 2
    torch.testing.assert_close(gated_sparse_product(mat, torch.ones(2, dtype=torch.float64)), torch.tensor([3.0, 4.0], dtype=torch.float64))
