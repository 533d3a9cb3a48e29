"""Every public entry point rejects bad input with ValueError/TypeError naming the argument.

The cases run in one subprocess (:func:`outcomes`), so a segfault in a kernel or in
scipy fails these tests instead of killing the run.  Each case is code run after
``PRELUDE``, the exception type it must raise and a regex its message must match.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from l0fast import layers as l0fast_layers

PRELUDE = """
import numpy as np, scipy.sparse as sp, torch, l0fast as l0
from l0fast import ops
nan, inf = float("nan"), float("inf")
M = sp.random(6, 10, density=0.5, format="csr", random_state=0)
y = M @ np.ones(10)
hm = ops.HouseholdMajorMatrix.from_scipy(M)
la, rs = torch.zeros(5), torch.tensor([0, 0])
def fit(Mx=M, yy=y, **kw):
    return l0.SparseCalibrationWeights(10, seed=0).fit(Mx, yy, **{"epochs": 2, **kw})
def lfit(Mx=M, yy=y, **kw):
    return l0.SparseL0Linear(10, seed=0).fit(Mx, yy, **{"epochs": 2, **kw})
def corrupt(attr, pos, value, fmt="csr"):
    a = M.asformat(fmt).copy(); arr = getattr(a, attr).copy(); arr[pos] = value; setattr(a, attr, arr); return a
def temp(value, module=None):
    module = module or l0.HardConcrete(3); module.temperature = value; return module
"""

V, T = ValueError, TypeError
D = l0fast_layers.InputDtypeError  # a TypeError and a RuntimeError
S = l0fast_layers.InputShapeError  # a ValueError and a RuntimeError
CASES = [
    # HardConcrete / L0Gate
    ("l0.HardConcrete(2.5)", V, "input_dim must be a positive int"),
    ("l0.HardConcrete(3, 0)", V, "output_dim"),
    ("l0.HardConcrete(3, temperature=nan)", V, "temperature must be a finite number"),
    ("l0.HardConcrete(3, temperature=inf)", V, "temperature must be a finite number"),
    ("l0.HardConcrete(3, temperature='0.5')", T, "temperature must be a real number"),
    ("l0.HardConcrete(3, temperature=1j)", T, "temperature must be a real number"),
    ("l0.HardConcrete(3, stretch=inf)", V, "stretch"),
    ("l0.HardConcrete(3, stretch=-0.1)", V, "stretch"),
    ("l0.HardConcrete(3, init_mean=nan)", V, "init_mean"),
    ("l0.HardConcrete(3, init_mean='a')", T, "init_mean"),
    ("l0.HardConcrete(3, seed=2**63)", V, "seed"),
    ("temp(0.0).eval()()", V, "beta \\(hard-concrete temperature\\)"),
    ("temp(nan)()", V, "beta \\(hard-concrete temperature\\)"),
    ("temp(-1.0).get_penalty()", V, "beta \\(hard-concrete temperature\\)"),
    # a learned temperature: l0-python backpropagates into it, l0fast's kernels cannot (it was dropped, silently)
    ("l0.HardConcrete(3, temperature=torch.tensor(0.5, requires_grad=True))", T, "temperature is a tensor that requires grad"),
    ("l0.L0Linear(3, 2, temperature=torch.tensor(0.5, requires_grad=True))", T, "temperature is a tensor that requires grad"),
    ("l0.HardConcrete(3, stretch=torch.tensor(0.1, requires_grad=True))", T, "stretch is a tensor that requires grad"),
    ("temp(torch.tensor(0.5, requires_grad=True))()", T, "beta \\(hard-concrete temperature\\) is a tensor that requires grad.*detach"),
    ("temp(torch.tensor(0.5, requires_grad=True)).eval()()", T, "beta \\(hard-concrete temperature\\) is a tensor that requires grad"),
    ("temp(torch.tensor(0.5, requires_grad=True)).get_penalty()", T, "beta \\(hard-concrete temperature\\) is a tensor that requires grad"),
    ("l0.update_temperatures(l0.L0Gate(3), torch.tensor(0.5, requires_grad=True))", T, "temperature is a tensor that requires grad"),
    ("l0.HardConcrete(3)(input_shape=5)", T, "input_shape"),
    ("l0.L0Gate(0)", V, "size"),
    ("l0.L0Gate(3).apply_gates(np.ones(3))", T, "x must be a torch.Tensor"),
    ("l0.L0Gate(3).apply_gates(torch.ones(3, 2), dim=5)", V, "x.shape\\[5\\] must equal 3"),
    ("l0.L0Gate(3).apply_gates(torch.ones(4, 2))", V, "x.shape\\[0\\] must equal 3"),
    ("l0.L0Gate(3).get_active_indices(nan)", V, "threshold"),
    # SampleGate / FeatureGate / HybridGate
    ("l0.SampleGate(5, nan)", V, "target_samples"),
    ("l0.SampleGate(5, 6)", V, "target_samples"),
    ("l0.SampleGate(5.0, 2)", V, "n_samples"),
    ("l0.SampleGate(5, 2).select_samples(torch.ones(3))", V, "data.shape\\[0\\] must equal 5"),
    ("l0.SampleGate(5, 2).select_weighted_samples(torch.ones(5), torch.ones(4))", V, "weights.shape\\[0\\] must equal 5"),
    ("l0.SampleGate(5, 2).select_weighted_samples(torch.ones(5), torch.full((5,), nan))", V, "weights must be a finite"),
    ("l0.FeatureGate(5, nan)", V, "max_features"),
    ("l0.FeatureGate(5, 'a')", T, "max_features"),
    ("l0.FeatureGate(5, 2).select_features(torch.ones(2, 3))", V, "data.shape\\[-1\\] must equal 5"),
    ("l0.FeatureGate(5, 5).select_features_with_names(torch.ones(2, 5), ['a'])", V, "feature_names"),
    ("l0.HybridGate(0)", V, "n_items"),
    ("l0.HybridGate(10, l0_fraction=nan)", V, "l0_fraction"),
    ("l0.HybridGate(10, target_items=nan)", V, "target_items"),
    ("l0.HybridGate(10, target_items=50)", V, "target_items \\* l0_fraction .*must be <= n_items \\(10\\)"),
    ("l0.HybridGate(10).select(torch.ones(3))", V, "data.shape\\[0\\] must equal 10"),
    ("l0.HybridGate(10).select(torch.ones(10), random_seed=1.5)", T, "random_seed"),
    # layers
    ("l0.L0Linear(2.0, 3)", V, "in_features"),
    ("l0.L0Linear(2, 3, temperature=nan)", V, "temperature"),
    ("l0.L0Linear(2, 3, init_sparsity=nan)", V, "init_sparsity"),
    ("l0.L0Linear(2, 3)(torch.ones(4, 2, dtype=torch.int64))", D, "input has dtype torch.int64.*input.to\\(torch.float32\\)"),
    ("l0.L0Linear(2, 3)(torch.ones(4, 2, dtype=torch.float64))", D, "input has dtype torch.float64"),
    ("l0.L0Linear(2, 3)(torch.ones(4, 2, dtype=torch.complex64))", D, "input has dtype torch.complex64"),
    ("l0.L0Linear(2, 3)(np.ones((4, 2)))", T, "input must be a torch.Tensor"),
    # the gates converted alone: what the layer computes in is not what its weight is
    ("m = l0.L0Linear(2, 3); m.weight_gates.double(); m(torch.ones(4, 2))", D, "L0Linear: input has dtype torch.float32, and its "
     "weight is torch.float32 and its gate logits torch.float64: convert the whole layer to one dtype, e.g. .to\\(torch.float32\\)$"),
    ("m = l0.L0Linear(2, 3); m.weight_gates.double(); m(torch.ones(4, 2, dtype=torch.float64))", D,
     "input has dtype torch.float64, and its weight is torch.float32 .*: convert the whole layer"),  # the bias is float32
    ("m = l0.L0Linear(2, 3).eval(); m.weight_gates.double(); m(torch.ones(4, 2, dtype=torch.float64))", D,
     "input has dtype torch.float64, and its weight is torch.float32 .*: convert the whole layer"),
    ("m = l0.L0Linear(2, 3); m.weight_gates.double(); m(torch.ones(4, 2, dtype=torch.int64))", D,
     "input has dtype torch.int64, and .*: convert the whole layer to one dtype$"),
    ("m = l0.L0DepthwiseConv2d(2, 3); m.channel_gates.double(); m(torch.ones(1, 2, 5, 5))", D,
     "L0DepthwiseConv2d: input has dtype torch.float32, and its weight is torch.float32 and its gate logits torch.float64: "
     "convert the whole layer"),
    ("m = l0.L0DepthwiseConv2d(2, 3).double(); m.channel_gates.float(); m(torch.ones(1, 2, 5, 5))", D,
     "its weight is torch.float64 and its gate logits torch.float32: pass input.to\\(torch.float64\\), or convert"),
    ("m = l0.L0Conv2d(1, 2, 3); m.weight_gates.double(); m(torch.ones(1, 1, 5, 5, dtype=torch.float64))", D,
     "L0Conv2d: input has dtype torch.float64, and its weight is torch.float32 .*: convert the whole layer"),
    ("l0.L0Linear(2, 3)(torch.full((1, 2), inf))", V, "NaN or inf"),
    # output smaller than the input: the NaN or inf is found through the output
    ("l0.L0Linear(8, 2)(torch.ones(3, 8).index_fill_(1, torch.tensor([5]), nan))", V, "NaN or inf"),
    ("l0.L0Linear(8, 2).eval()(torch.ones(3, 8).index_fill_(1, torch.tensor([0]), -inf))", V, "NaN or inf"),
    ("m = l0.L0Linear(8, 2).eval(); m.weight_gates.qz_logits.data[:, 5] = -20; m(torch.ones(3, 8).index_fill_(1, torch.tensor([5]), inf))",
     V, "NaN or inf"),
    ("l0.L0Linear(2, 3)(torch.ones(1, 3))", S, "in_features=2"),
    ("l0.L0Conv2d(1, 1, 3, stride=0)", V, "stride"),
    ("l0.L0Conv2d(1, 1, 3, stride='a')", V, "stride"),
    ("l0.L0Conv2d(1, 1, 3, padding=-1)", V, "padding"),
    ("l0.L0Conv2d(1, 1, (3, 3, 3))", V, "kernel_size"),
    ("l0.L0Conv2d(1, 1, 2.5)", V, "kernel_size"),
    ("l0.L0Conv2d(1, 1, 3)(torch.ones(1, 1, 2, 2))", S, "smaller than kernel_size"),
    ("l0.L0Conv2d(1, 1, 1)(torch.ones(1, 1, 0, 5))", S, "smaller than kernel_size"),
    ("l0.L0Conv2d(1, 1, 3)(torch.ones(1, 1, 5, 5, dtype=torch.float64))", D, "input has dtype torch.float64"),
    ("l0.L0DepthwiseConv2d(2, 3, stride=0)", V, "stride"),
    ("l0.L0DepthwiseConv2d(2, 3, padding=-2)", V, "padding"),
    ("l0.L0DepthwiseConv2d(2, 3)(torch.ones(1, 2, 2, 2))", S, "smaller than kernel_size"),
    ("l0.L0DepthwiseConv2d(2, 3)(torch.ones(1, 2, 5, 5, dtype=torch.float64))", D, "input has dtype"),
    ("l0.SparseMLP(4, 3, 2)(torch.ones(4))", S, "SparseMLP: expected a batch"),
    ("l0.SparseMLP(4, 3, 2)(torch.tensor(1.0))", S, "SparseMLP: expected a batch"),
    ("l0.SparseMLP(4, 3, 2)(np.ones((5, 4)))", T, "SparseMLP: expected a batch .* got ndarray; convert it with torch.as_tensor"),
    ("l0.SparseMLP(4, 3, 2).double()(np.ones((5, 4)))", T, "got ndarray; convert it with torch.as_tensor\\(x, dtype=torch.float64\\)"),
    ("l0.L0Linear(2, 3).double()([[1.0, 2.0]])", T, "got list; convert it with torch.as_tensor\\(x, dtype=torch.float64\\)"),
    ("l0.SparseMLP(4, 3, 2, temperature=0)", V, "temperature"),
    ("l0.prune_model(l0.L0Linear(2, 3), nan)", V, "threshold"),
    ("l0.prune_model(l0.L0Linear(2, 3), 2.0)", V, "threshold"),
    ("l0.prune_model(3)", T, "model must be a torch.nn.Module"),
    # penalties
    ("l0.compute_l0_penalty(3)", T, "model must be a torch.nn.Module"),
    ("l0.compute_l2_penalty(None)", T, "model must be a torch.nn.Module"),
    ("l0.compute_l0l2_penalty(l0.L0Linear(2, 3), l0_lambda=nan)", V, "l0_lambda"),
    ("l0.compute_l0l2_penalty(l0.L0Linear(2, 3), l2_lambda=-1.0)", V, "l2_lambda"),
    ("l0.compute_l0l2_penalty(l0.L0Linear(2, 3), l0_lambda='a')", T, "l0_lambda"),
    ("l0.get_sparsity_stats('x')", T, "model"),
    ("l0.get_active_parameter_count(1)", T, "model"),
    ("l0.TemperatureScheduler(inf, 0.1)", V, "initial_temp"),
    ("l0.TemperatureScheduler(1.0, nan)", V, "final_temp"),
    ("l0.TemperatureScheduler(anneal_epochs=inf)", V, "anneal_epochs"),
    ("l0.TemperatureScheduler(anneal_epochs='10')", T, "anneal_epochs"),
    ("l0.TemperatureScheduler(schedule='step')", V, "schedule"),
    ("l0.TemperatureScheduler().get_temperature(nan)", V, "epoch"),
    ("l0.TemperatureScheduler().get_temperature(-5)", V, "epoch"),
    ("l0.update_temperatures(l0.L0Linear(2, 3), nan)", V, "temperature"),
    ("l0.update_temperatures(l0.L0Linear(2, 3), 0.0)", V, "temperature"),
    ("l0.update_temperatures(3, 0.5)", T, "model"),
    ("l0.PenaltyTracker().log('a', 'x')", T, "value for 'a' must be a number"),
    # ops
    ("ops.hard_concrete_mean(torch.zeros(5, dtype=torch.int64), 2/3, -0.1, 1.1)", T, "log_alpha must be a floating-point"),
    ("ops.hard_concrete_mean(torch.zeros(5, dtype=torch.complex64), 2/3, -0.1, 1.1)", T, "log_alpha must be a floating-point"),
    ("ops.hard_concrete_mean(np.zeros(5), 2/3, -0.1, 1.1)", T, "log_alpha must be a floating-point torch.Tensor"),
    ("ops.hard_concrete_mean(la, nan, -0.1, 1.1)", V, "beta"),
    ("ops.hard_concrete_mean(la, 2/3, 0.5, 1.1)", V, "gamma"),
    ("ops.hard_concrete_mean(la, 2/3, -0.1, inf)", V, "zeta"),
    ("ops.hard_concrete_sample(la, torch.tensor([0., 0.]), 2/3, -0.1, 1.1)", T, "rng_state must be an int64 tensor"),
    ("ops.hard_concrete_sample(la, torch.tensor([0]), 2/3, -0.1, 1.1)", T, "rng_state"),
    ("l0.rng.load_rng_state_dict(l0.HardConcrete(3), {'rng_state': torch.tensor([0., 0.])})", T, "rng state 'rng_state' must be an int64 tensor"),
    # the C++ stream shifted a negative offset as unsigned: other noise than the reference's and Triton's
    ("ops.hard_concrete_sample(la, torch.tensor([5, -4]), 0.5, -0.1, 1.1)", V, "rng_state's offset \\(a noise position\\) must be >= 0, got -4"),
    ("l0.rng.load_rng_state_dict(l0.HardConcrete(3), {'rng_state': torch.tensor([0, -5])})", V, "negative offset \\(\\[0, -5\\]\\)"),
    ("l0.rng.load_rng_state_dict(l0.HardConcrete(3), {'rng_state': torch.tensor([-5, 0])})", V, "negative seed \\(\\[-5, 0\\]\\)"),
    ("l0.rng.load_rng_state_dict(l0.HardConcrete(3), {'other': torch.tensor([0, 0])})", KeyError, "rng state names differ"),
    ("ops.hard_concrete_sample(la, rs, -1.0, -0.1, 1.1)", V, "beta"),
    ("ops.l0_penalty(torch.zeros(5, dtype=torch.int64), 2/3, -0.1, 1.1)", T, "log_alpha"),
    ("ops.l0_penalty(la, 2/3, 0.0, 1.1)", V, "gamma"),
    ("ops.gated_sparse_product(hm, torch.ones(7))", V, "weight must have shape \\(10,\\)"),
    ("ops.gated_sparse_product(hm, torch.ones(10, 1))", V, "weight must have shape"),
    ("ops.gated_sparse_product(hm, torch.ones(10, dtype=torch.float64))", T, "weight must be a torch.float32 tensor"),
    ("ops.gated_sparse_product(hm, torch.ones(10, dtype=torch.int64))", T, "weight must be a torch.float32"),
    ("ops.gated_sparse_product(hm, torch.full((10,), nan))", V, "weight contains NaN"),
    ("ops.gated_sparse_product(ops.HouseholdMajorMatrix(hm.col_ptr, hm.row_idx + 100, hm.values, 6), torch.ones(10))", V, "malformed"),
    ("ops.gated_sparse_product(ops.HouseholdMajorMatrix(hm.col_ptr.flip(0), hm.row_idx, hm.values, 6), torch.ones(10))", V, "malformed"),
    ("ops.HouseholdMajorMatrix(hm.col_ptr, hm.row_idx, hm.values[:3], 6)", V, "values \\(3\\) and row_idx"),
    # 1e39 became inf in float32 after the finite check; a negative index picked household N - 2, silently
    ("ops.HouseholdMajorMatrix.from_scipy(sp.csr_matrix(np.array([[1e39, 1.0]])))", V, "values beyond torch.float32's range"),
    ("ops.HouseholdMajorMatrix.from_torch(torch.tensor([[1e39, 1.0]], dtype=torch.float64), torch.float32)", V, "values beyond torch.float32's range"),
    ("l0.SparseL0Linear(2).predict(sp.csr_matrix(np.array([[1e39, 1.0]])))", V, "X contains NaN or inf entries, or values beyond"),
    ("hm.select_households(torch.tensor([3, -2]))", IndexError, "outside \\[0, 10\\), e.g. \\[-2\\]"),
    ("hm.select_households(torch.tensor([10]))", IndexError, "outside \\[0, 10\\), e.g. \\[10\\]"),
    ("ops.HouseholdMajorMatrix(hm.col_ptr, hm.row_idx.long(), hm.values, 6)", T, "row_idx must be a 1-D tensor"),
    ("ops.HouseholdMajorMatrix(hm.col_ptr.int(), hm.row_idx, hm.values, 6)", T, "col_ptr must be a 1-D tensor"),
    ("ops.HouseholdMajorMatrix(hm.col_ptr, hm.row_idx, hm.values.half(), 6)", T, "values must be a 1-D tensor"),
    ("ops.HouseholdMajorMatrix(hm.col_ptr, hm.row_idx, hm.values, -1)", V, "num_rows"),
    ("ops.HouseholdMajorMatrix.from_scipy(M.astype(complex))", T, "M must hold real numbers"),
    ("ops.HouseholdMajorMatrix.from_scipy(M, torch.int32)", T, "dtype must be torch.float32 or torch.float64"),
    ("ops.HouseholdMajorMatrix.from_torch(torch.ones(2, 3, dtype=torch.complex64))", T, "M must hold real numbers"),
    ("ops.HouseholdMajorMatrix.from_torch(torch.ones(2, 3, 4))", V, "2-D"),
    ("ops.calibration_objective(hm, torch.zeros(10), torch.zeros(10), rs.clone(), (2/3, -0.1, 1.1), gates='x')", V, "gates"),
    ("ops.calibration_objective(hm, torch.zeros(7), torch.zeros(10), rs.clone(), (2/3, -0.1, 1.1))", V, "log_weight must have shape"),
    ("ops.calibration_objective(hm, torch.zeros(10), torch.zeros(7), rs.clone(), (2/3, -0.1, 1.1))", V, "log_alpha must have shape"),
    ("ops.calibration_objective(hm, torch.zeros(10), torch.zeros(10), rs.clone(), (2/3, -0.1, 1.1), lambda_l0=nan)", V, "lambda_l0"),
    ("ops.calibration_objective(hm, torch.zeros(10), torch.zeros(10), rs.clone(), (2/3, -0.1))", V, "params must be"),
    # SparseCalibrationWeights
    ("l0.SparseCalibrationWeights(10.0)", V, "n_features"),
    ("l0.SparseCalibrationWeights(10, beta=inf)", V, "beta"),
    ("l0.SparseCalibrationWeights(10, gamma=-inf)", V, "gamma"),
    ("l0.SparseCalibrationWeights(10, zeta=inf)", V, "zeta"),
    ("l0.SparseCalibrationWeights(10, beta='a')", T, "beta"),
    ("l0.SparseCalibrationWeights(10, log_weight_jitter_sd=inf)", V, "log_weight_jitter_sd"),
    ("l0.SparseCalibrationWeights(10, log_alpha_jitter_sd=-1.0)", V, "log_alpha_jitter_sd"),
    ("l0.SparseCalibrationWeights(10, seed=-1)", V, "seed"),
    ("l0.SparseCalibrationWeights(10, init_keep_prob=0.5 + 1j)", T, "init_keep_prob"),
    ("l0.SparseCalibrationWeights(10, init_keep_prob='a')", T, "init_keep_prob"),
    ("l0.SparseCalibrationWeights(10, init_keep_prob=np.ones(3))", V, "init_keep_prob"),
    ("fit(lr=nan)", V, "lr must be a finite number"),
    ("fit(lr=inf)", V, "lr must be a finite number"),
    ("fit(lr='0.1')", T, "lr must be a real number"),
    ("fit(epochs=2.0)", V, "epochs"),
    ("fit(epochs=-1)", V, "epochs"),
    ("fit(lambda_l0=inf)", V, "lambda_l0"),
    ("fit(lambda_l0=nan)", V, "lambda_l0"),
    ("fit(lambda_l2=-1.0)", V, "lambda_l2"),
    ("fit(lambda_l0='a')", T, "lambda_l0"),
    ("fit(lambda_l0=np.full(10, nan))", V, "lambda_l0"),
    ("fit(lambda_l0=np.ones(3))", V, "lambda_l0"),
    ("fit(verbose=True, verbose_freq=nan)", V, "verbose_freq"),
    ("fit(M.astype(complex))", T, "M must hold real numbers"),
    ("fit(torch.tensor(M.toarray(), dtype=torch.complex64))", T, "M must hold real numbers"),
    ("fit(np.array([[1, 'a']] * 6, dtype=object))", T, "M must hold real numbers"),
    ("fit('M')", T, "M must hold real numbers"),
    ("fit(np.ones(10), np.ones(1))", V, "M must be a 2-D matrix"),
    ("fit(sp.random(6, 11, density=0.5, format='csr'))", V, "n_features=10"),
    ("fit(sp.csr_matrix((0, 10)), np.ones(0))", V, "M has no rows"),
    ("fit(corrupt('indices', 0, 50))", V, "M is a malformed scipy matrix"),
    ("fit(corrupt('indices', 0, -3))", V, "M is a malformed scipy matrix"),
    ("fit(corrupt('indptr', 2, 1000))", V, "M is a malformed scipy matrix"),
    ("fit(corrupt('row', 0, 50, 'coo'))", V, "M is a malformed scipy matrix"),
    ("fit(corrupt('indices', 0, 50, 'csc'))", V, "M is a malformed scipy matrix"),
    ("fit(torch.ones(6, 10, device='meta'))", V, "meta device"),
    ("fit(M, np.full(6, nan))", V, "y contains NaN"),
    ("fit(yy=y + 1j)", T, "y must hold real numbers"),
    ("fit(yy=torch.tensor(y) + 1j)", T, "y must hold real numbers"),
    ("fit(yy='abc')", T, "y must hold real numbers"),
    ("fit(yy=np.array(['a'] * 6, dtype=object))", T, "y must hold real numbers"),
    ("fit(yy=None)", V, "y must be a vector"),
    ("fit(yy=np.ones((2, 3)))", V, "y must be a vector"),
    ("fit(loss_type=None)", V, "loss_type"),
    ("fit(loss_type='capped_relative', relative_floor=nan)", V, "relative_floor"),
    ("fit(target_groups=np.zeros(3))", V, "target_groups"),
    ("fit(target_groups=np.array([0, 1, nan, 1, 0, 1]))", T, "target_groups must hold integer group ids"),
    ("fit(target_groups=np.array([0, 1.5, 1, 1, 0, 1]))", T, "target_groups must hold integer group ids"),
    ("fit(target_groups=np.array(list('abcabc')))", T, "target_groups must hold integer group ids"),
    ("fit(target_groups=np.arange(6) % 2, group_multipliers={1: -2.0})", V, r"group_multipliers\[1\]"),
    ("fit(target_groups=np.arange(6) % 2, group_multipliers={1: nan})", V, r"group_multipliers\[1\]"),
    ("fit(target_groups=np.arange(6) % 2, group_multipliers={1: '2'})", T, r"group_multipliers\[1\]"),
    ("fit(target_groups=np.arange(6) % 2, group_multipliers=[2.0])", T, "group_multipliers must be a dict"),
    ("fit(target_groups=np.arange(6) % 2, group_multipliers={7: 2.0})", V, "group_multipliers key 7 not found"),
    ("fit(keep=np.ones(10, dtype=int))", T, "keep must be a bool array"),
    ("fit(weight_bounds=(2, 1))", V, "weight_bounds"),
    ("fit(target_count=11)", V, "target_count"),
    ("fit(target_count=2.5)", V, "target_count"),
    ("m = l0.SparseCalibrationWeights(10); m.log_weight.data[0] = nan; m.predict(M)", V, "weight contains NaN"),
    ("m = l0.SparseCalibrationWeights(10); m.log_alpha.data[0] = nan; m.predict(M)", V, "log_alpha contains NaN"),
    ("l0.SparseCalibrationWeights(10).diagnostics(M, np.ones(3))", V, "y must be a vector"),
    ("fit().refit(M, y, epochs=2, lr=nan)", V, "lr"),
    ("fit().refit(M, y, epochs=-1)", V, "epochs"),
    ("l0.SparseCalibrationWeights(10, device='cuda:7')", V, "device='cuda:7' is not available"),
    ("l0.SparseCalibrationWeights(10, device='foo')", V, "device must be a torch device"),
    ("l0.SparseCalibrationWeights(10, device='meta', seed=0)", V, "seed= on the meta device"),
    ("l0.SparseCalibrationWeights(10, use_gates=False).fit(M, y, target_count=3)", V, "has use_gates=False"),
    ("l0.SparseCalibrationWeights(10, use_gates=False).fit(M, y, keep=np.arange(10) < 2)", V, "has use_gates=False"),
    ("l0.SparseL0Linear(10, device='meta', seed=0)", V, "seed= on the meta device"),
    ("l0.SparseCalibrationWeights(10, init_weights=np.ones(10) * 1j)", T, "init_weights must hold real numbers"),
    ("l0.SparseCalibrationWeights(10).half().predict(M)", T, "the model is torch.float16, but its products with M run in float32 or float64.*\\.float\\(\\)"),
    ("l0.SparseL0Linear(10).bfloat16().fit(M, y)", T, "the model is torch.bfloat16"),
    ("l0.SparseCalibrationWeights(10, init_weights=np.full(10, 1e39))", V, "init_weights reach 1e\\+39, beyond torch.float32's range"),
    ("l0.SparseCalibrationWeights(10, init_weights=1e39)", V, "init_weights reach 1e\\+39, beyond torch.float32's range"),
    ("lfit(yy=np.full(6, 1e39))", V, "y reaches 1e\\+39, beyond torch.float32's range.*double"),
    # SparseL0Linear
    ("l0.SparseL0Linear(10, device='cuda:7')", V, "device='cuda:7' is not available"),
    ("l0.SparseL0Linear(10, device='foo')", V, "device must be a torch device"),
    ("l0.SparseL0Linear(10, seed=-1)", V, "seed"),
    ("l0.SparseL0Linear(10, beta=inf)", V, "beta"),
    ("l0.SparseL0Linear(10, init_keep_prob=[0.5, 0.5])", V, "init_keep_prob"),
    ("lfit(lambda_reg=nan)", V, "lambda_reg"),
    # scipy's sparse arrays may be 1-D: an IndexError, or "malformed" (tuple index out of range)
    ("lfit(sp.csr_array(np.ones(10)))", V, "X must be a 2-D matrix, got a 1-D scipy sparse array of shape \\(10,\\)"),
    ("l0.SparseL0Linear(10).predict(sp.dok_array(np.ones(10)))", V, "X must be a 2-D matrix, got a 1-D scipy sparse array"),
    ("fit(sp.coo_array(np.ones(10)))", V, "M must be a 2-D matrix, got a 1-D scipy sparse array"),
    ("lfit(lr=-1.0)", V, "lr"),
    ("lfit(epochs='3')", V, "epochs"),
    ("lfit(yy=y + 1j)", T, "y must hold real numbers"),
    ("lfit(M.astype(complex))", T, "X must hold real numbers"),
    ("lfit(corrupt('indptr', 2, 1000))", V, "X is a malformed scipy matrix"),
    ("l0.SparseL0Linear(10).predict(M[:, :5])", V, "n_features=10"),
    ("l0.SparseL0Linear(10).get_selected_features(nan)", V, "threshold"),
]
# state_dicts of the wrong size keep torch's (and l0-python's) RuntimeError, which names the parameter and both shapes
STATE_DICTS = [
    ("l0.HardConcrete(3).load_state_dict(l0.HardConcrete(4).state_dict())", "size mismatch for qz_logits"),
    ("l0.L0Linear(2, 3).load_state_dict(l0.L0Linear(3, 3).state_dict())", "size mismatch for weight"),
    ("l0.SparseCalibrationWeights(10).load_state_dict(l0.SparseCalibrationWeights(11).state_dict())", "size mismatch for log_weight"),
    ("l0.SparseL0Linear(10).load_state_dict(l0.SparseL0Linear(11).state_dict())", "size mismatch for weight"),
]
ALL = [(code, exc.__name__, match) for code, exc, match in CASES] + [(code, "RuntimeError", match) for code, match in STATE_DICTS]

DRIVER = """
import json, sys, traceback, warnings
warnings.simplefilter("ignore")
cases = json.load(sys.stdin)
exec(compile(cases.pop(0), "prelude", "exec"), scope := {})
for code in cases:
    try:
        exec(compile(code, "case", "exec"), dict(scope))
        got = ("no exception", "")
    except Exception as err:
        got = (type(err).__name__, str(err))
    print(json.dumps([code, *got]), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """``{code: (exception name, message)}`` from one subprocess; cases after a crash are missing."""
    codes = [textwrap.dedent(PRELUDE)] + [code for code, _exc, _match in ALL]
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(codes), capture_output=True, text=True, timeout=600)
    found = dict((code, (name, msg)) for code, name, msg in map(json.loads, proc.stdout.splitlines()))
    found["__crash__"] = f"subprocess exited with {proc.returncode}: {proc.stderr[-2000:]}"
    return found


@pytest.mark.parametrize("code,exc,match", ALL, ids=[code[:70] for code, _e, _m in ALL])
def test_bad_input_raises_clear_error(outcomes, code, exc, match):
    assert code in outcomes, f"no outcome (crashed at or before this case): {outcomes['__crash__']}"
    name, message = outcomes[code]
    assert name == exc, f"{code}: expected {exc}, got {name}: {message}"
    assert re.search(match, message), f"{code}: message does not name the argument: {message}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1, 37, 4096, (1 << 18) + 5, 3 << 18])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_input_finite_matches_torch(dtype, numel, threads):
    """The layers' CPU check (l0fast._C.input_finite) against torch.isfinite, for NaN, +-inf and the largest
    finite value at the first, a middle and the last position (each share of the threads), and on views."""
    from l0fast._capability import _C
    from threads import num_threads

    assert _C is not None, "the C++ extension is built in this project's test runs"
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(dtype)
    with num_threads(threads):
        assert _C.input_finite(x)
        for value in (float("nan"), float("inf"), float("-inf"), torch.finfo(dtype).max):
            for pos in {0, numel // 2, numel - 1}:
                y = x.clone()
                y[pos] = value
                assert _C.input_finite(y) == bool(torch.isfinite(y).all()), (value, pos)
        z = torch.stack([x, x]).t()  # not contiguous
        z[numel // 3, 1] = float("nan")
        assert not _C.input_finite(z) and _C.input_finite(z[:, 0])


def test_cpp_input_finite_answers_from_the_smaller_output():
    """``out`` (a linear layer's output of ``x``) answers when it is smaller and finite; otherwise ``x`` does.
    Integer inputs are finite."""
    from l0fast._capability import _C

    nan_x = torch.ones(3, 8).index_fill_(1, torch.tensor([2]), float("nan"))
    assert _C.input_finite(nan_x, torch.ones(3, 2)), "a finite smaller output answers without reading x"
    assert not _C.input_finite(nan_x, torch.ones(3, 9)), "an output as large as x is not read"
    assert not _C.input_finite(nan_x, torch.full((3, 2), float("inf")))
    assert _C.input_finite(torch.ones(3, 8), torch.full((3, 2), float("inf"))), "an overflowing output falls back to x"
    assert _C.input_finite(torch.ones(3, 8, dtype=torch.int64), None)
    with pytest.raises(RuntimeError, match="strided CPU tensor"):
        _C.input_finite(torch.ones(3, 8).to_sparse())


def test_finite_input_whose_output_overflows_is_accepted():
    """The output check falls back to the input: a finite input whose output overflows is not an input error."""
    import l0fast as l0

    layer = l0.L0Linear(8, 2).eval()
    with torch.no_grad():
        layer.weight.fill_(1e30)
        layer.weight_gates.qz_logits.fill_(20.0)
        out = layer(torch.full((3, 8), 1e30))
    assert torch.isinf(out).all()


def test_deferred_device_check_raises_within_its_read_interval(monkeypatch):
    """The non-CPU path (a device flag read back every N checks), run here on CPU tensors: a NaN input raises by
    the N-th check after it, finite inputs (an overflowing output included) never do, and a raise clears the flag."""
    import l0fast as l0
    from l0fast import finite_check

    monkeypatch.setitem(finite_check.DEFERRED_EVERY, "cpu", 3)
    monkeypatch.setattr(finite_check.NON_FINITE_FLAGS, "_uses", {})
    # L0Linear's eval forward from its cache checks CPU inputs itself, at once (l0fast._C.cached_linear): off here
    monkeypatch.setattr(l0.L0Linear, "_cached_forward", lambda *args: None)
    layer = l0.L0Linear(8, 2).eval()
    good, bad = torch.ones(4, 8), torch.ones(4, 8).index_fill_(1, torch.tensor([6]), float("nan"))
    with torch.no_grad():
        for _ in range(6):
            layer(good)
        layer(torch.full((4, 8), 3e38))  # 7th check: finite input, infinite output, not an input error
        layer(good)
        layer(good)  # 9th: read back, clean
        layer(bad)  # 10th: not read yet
        layer(good)  # 11th
        with pytest.raises(ValueError, match="L0Linear: an input of the last 3 gated-layer calls on cpu contained NaN or inf"):
            layer(good)  # 12th: read back
        for _ in range(3):
            layer(good)  # the raise cleared the flag


def test_sparse_inputs_are_checked_by_their_values():
    """The C++ check reads strided CPU tensors only; a sparse input is checked by its values instead."""
    from l0fast.finite_check import check_finite

    for to_sparse in (torch.Tensor.to_sparse, torch.Tensor.to_sparse_csr):
        out = torch.ones(4, 2)
        assert check_finite("L0Linear", to_sparse(torch.eye(4)), out) is out
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="L0Linear: input contains NaN or inf"):
                check_finite("L0Linear", to_sparse(torch.eye(4).index_fill_(1, torch.tensor([2]), value)))


@pytest.mark.parametrize("to_complex", [
    lambda M: M.astype("complex64"),
    lambda M: torch.tensor(M.toarray()).to(torch.complex64).to_sparse(),
    lambda M: torch.tensor(M.toarray()).to(torch.complex64).to_sparse_csr(),
])
def test_a_complex_matrix_is_refused_before_any_warning(to_complex):
    """The matrix fingerprint cast complex values to float64 first, with numpy's ComplexWarning."""
    import warnings

    import numpy as np
    from scipy import sparse as sp

    import l0fast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "sparse CSR support is in beta"
        M = to_complex(sp.random(6, 10, density=0.5, format="csr", random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="M must hold real numbers"):
            l0fast.SparseCalibrationWeights(10, seed=0).fit(M, np.ones(6), epochs=2)
