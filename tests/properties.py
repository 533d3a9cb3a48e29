"""Hypothesis properties of the public API, run one per subprocess by ``test_properties.py``.

Valid inputs (any finite logits, odd shapes, strided tensors, scipy matrices in any
format with unsorted and duplicate indices, int/bool/float16 values, read-only
arrays) give finite results equal to the references: the ops' ``*_ref`` and
l0-python 0.6.2; invalid numbers raise ValueError/TypeError naming the argument.
"""

from __future__ import annotations

import warnings

import l0 as ref
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import l0fast
from l0fast import ops
from l0fast.ops.hard_concrete import hard_concrete_mean_ref, hard_concrete_sample_ref
from l0fast.ops.l0_penalty import l0_penalty_ref

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
# down to 0.05: |clamp(a, +-20) / beta| up to 400, past the +-88 where fp32 exp overflows (csrc/gate_math.h's sigmoid)
temperatures = st.floats(0.05, 5.0)
stretches = st.floats(0.01, 1.0)


@st.composite
def logits(draw):
    """A float32/float64 tensor of 0-3 dims, sometimes a strided (non-contiguous) view."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    arr = draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9), elements=finite))
    t = torch.from_numpy(arr.copy())
    return t.transpose(0, -1) if draw(st.booleans()) else t


@SETTINGS
@given(logits(), temperatures, stretches, st.integers(0, 2**40))
def gate_ops_match_references(log_alpha, beta, stretch, seed):
    gamma, zeta = -stretch, 1 + stretch
    state = torch.tensor([seed, 7])
    for ours, want in (
        (ops.hard_concrete_mean(log_alpha, beta, gamma, zeta), hard_concrete_mean_ref(log_alpha, beta, gamma, zeta)),
        (ops.hard_concrete_sample(log_alpha, state, beta, gamma, zeta), hard_concrete_sample_ref(log_alpha, state, beta, gamma, zeta)),
        (ops.l0_penalty(log_alpha, beta, gamma, zeta), l0_penalty_ref(log_alpha, beta, gamma, zeta)),
    ):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
    leaf = log_alpha.clone().requires_grad_()
    (ops.hard_concrete_mean(leaf, beta, gamma, zeta).sum() + ops.l0_penalty(leaf, beta, gamma, zeta)).backward()
    assert torch.isfinite(leaf.grad).all()
    # the one-pass training step: weight * gates and the penalty, and its backward
    weight = torch.linspace(-2, 2, log_alpha.numel(), dtype=log_alpha.dtype).view(log_alpha.shape).requires_grad_()
    leaf = log_alpha.clone().requires_grad_()
    gated, penalty = ops.hard_concrete_gated(leaf, state, beta, gamma, zeta, weight=weight)
    torch.testing.assert_close(gated, weight * hard_concrete_sample_ref(log_alpha, state, beta, gamma, zeta), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(penalty, l0_penalty_ref(log_alpha, beta, gamma, zeta), atol=1e-5, rtol=1e-5)
    (gated.sum() + penalty).backward()
    assert torch.isfinite(leaf.grad).all() and torch.isfinite(weight.grad).all()


@SETTINGS
@given(st.integers(1, 6), st.one_of(st.none(), st.integers(1, 5)), temperatures, stretches, st.integers(1, 4), st.integers(0, 2**31))
def modules_match_l0(in_dim, out_dim, temperature, stretch, batch, seed):
    torch.manual_seed(seed)
    theirs = ref.HardConcrete(in_dim, out_dim, temperature=temperature, stretch=stretch)
    with torch.no_grad():
        theirs.qz_logits.copy_(torch.randn_like(theirs.qz_logits) * 5)
    ours = l0fast.HardConcrete(in_dim, out_dim, temperature=temperature, stretch=stretch)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.eval()(), theirs.eval()())
    torch.testing.assert_close(ours.get_penalty(), theirs.get_penalty())
    n_out = out_dim or 2
    lin_theirs = ref.L0Linear(in_dim, n_out, temperature=temperature).eval()
    lin_ours = l0fast.L0Linear(in_dim, n_out, temperature=temperature).eval()
    lin_ours.load_state_dict(lin_theirs.state_dict())
    x = torch.randn(batch, in_dim)
    out = lin_ours(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, lin_theirs(x))
    torch.testing.assert_close(l0fast.compute_l0_penalty(lin_ours), ref.compute_l0_penalty(lin_theirs))


@st.composite
def messy_matrices(draw):
    """(dense float64 reference, the same matrix as scipy (any format, unsorted, duplicates) or dense numpy/torch)."""
    q, n = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.int64, np.bool_]))
    dense = draw(hnp.arrays(dtype, (q, n), elements=st.integers(0, 3) if dtype is not np.bool_ else st.booleans()))
    want = dense.astype(np.float64)
    kind = draw(st.sampled_from(["csr", "csc", "coo", "dup", "dense", "strided", "torch", "readonly"]))
    if kind == "dense":
        return want, dense
    if kind == "strided":
        return want, np.repeat(dense, 2, axis=1)[:, ::2]
    if kind == "torch":
        return want, torch.from_numpy(dense.astype(dtype if dtype is not np.float16 else np.float32)).to_sparse()
    if kind == "dup" and dtype is not np.bool_:  # every entry split in two, in a random order: unsorted, duplicated
        r, c = np.nonzero(dense)
        half = (dense[r, c] / 2).astype(dtype) if dtype in (np.float32, np.float64) else dense[r, c] * 0
        rows, cols, vals = np.r_[r, r], np.r_[c, c], np.r_[half, dense[r, c] - half]
        order = np.asarray(draw(st.permutations(range(len(rows)))), dtype=np.int64)
        fmt = draw(st.sampled_from(["coo", "csr", "csc"]))
        coo = sp.coo_matrix((vals[order], (rows[order], cols[order])), shape=(q, n))
        if fmt == "coo":
            return want, coo
        compressed = getattr(sp, f"{fmt}_matrix")
        major, minor = (rows, cols) if fmt == "csr" else (cols, rows)
        o = np.argsort(major[order], kind="stable")
        ptr = np.r_[0, np.cumsum(np.bincount(major[order][o], minlength=q if fmt == "csr" else n))]
        return want, compressed((vals[order][o], minor[order][o], ptr), shape=(q, n))
    m = sp.coo_matrix(dense.astype(np.float32) if dtype is np.float16 else dense).asformat(kind if kind != "readonly" else "csc")
    if kind == "readonly":
        for a in (m.data, m.indices, m.indptr):
            a.flags.writeable = False
    return want, m


@SETTINGS
@given(messy_matrices(), st.integers(0, 2**31))
def calibration_predict_matches_dense_product(pair, seed):
    want, matrix = pair
    q, n = want.shape
    model = l0fast.SparseCalibrationWeights(n, seed=seed, init_weights=np.linspace(0.5, 2.0, n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        got = model.predict(matrix)
    weights = model.get_weights(deterministic=True).double().detach().numpy()
    assert got.shape == (q,) and torch.isfinite(got).all()
    np.testing.assert_allclose(got.double().numpy(), want @ weights, rtol=1e-5, atol=1e-5)
    linear = l0fast.SparseL0Linear(n, seed=seed)
    torch.testing.assert_close(linear.predict(matrix).double(), torch.from_numpy(want) @ (linear.weight * linear.get_deterministic_gates()).double().detach() + linear.bias.double().detach())


@SETTINGS
@given(st.floats(0.01, 10), st.floats(0.01, 10), st.integers(1, 500), st.sampled_from(["linear", "exponential", "cosine"]), st.integers(0, 1000))
def temperature_schedule_matches_l0(t0, t1, anneal, schedule, epoch):
    got = l0fast.TemperatureScheduler(t0, t1, anneal, schedule).get_temperature(epoch)
    assert np.isfinite(got)
    assert got == pytest.approx(ref.TemperatureScheduler(t0, t1, anneal, schedule).get_temperature(epoch), rel=1e-12)


bad_numbers = st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), "1", None, 1j]), st.floats(-1e9, -1e-9))
NUMERIC_ARGS = [  # (call with the bad value, the name the message must contain)
    (lambda v: l0fast.HardConcrete(3, temperature=v), "temperature"),
    (lambda v: l0fast.HardConcrete(3, stretch=v), "stretch"),
    (lambda v: l0fast.L0Linear(2, 2, init_sparsity=v), "init_sparsity"),
    (lambda v: l0fast.TemperatureScheduler(initial_temp=v), "initial_temp"),
    (lambda v: l0fast.TemperatureScheduler().get_temperature(v), "epoch"),
    (lambda v: l0fast.update_temperatures(l0fast.L0Linear(2, 2), v), "temperature"),
    (lambda v: l0fast.compute_l0l2_penalty(l0fast.L0Linear(2, 2), l0_lambda=v), "l0_lambda"),
    (lambda v: l0fast.prune_model(l0fast.L0Linear(2, 2), v), "threshold"),
    (lambda v: l0fast.SparseCalibrationWeights(4, beta=v), "beta"),
    (lambda v: l0fast.SparseCalibrationWeights(4, log_weight_jitter_sd=v), "log_weight_jitter_sd"),
    (lambda v: l0fast.SparseCalibrationWeights(4).fit(np.eye(4), np.ones(4), lr=v, epochs=1), "lr"),
    (lambda v: l0fast.SparseCalibrationWeights(4).fit(np.eye(4), np.ones(4), lambda_l2=v, epochs=1), "lambda_l2"),
    (lambda v: l0fast.SparseL0Linear(4).fit(np.eye(4), np.ones(4), lambda_reg=v, epochs=1), "lambda_reg"),
    (lambda v: ops.hard_concrete_mean(torch.zeros(3), v, -0.1, 1.1), "beta"),
]


@SETTINGS
@given(st.sampled_from(NUMERIC_ARGS), bad_numbers)
def bad_numbers_name_the_argument(case, value):
    call, name = case
    with pytest.raises((ValueError, TypeError), match=name):
        call(value)
