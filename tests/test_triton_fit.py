"""The Triton fit loop (interpreter, CPU tensors) against the two-pass PyTorch reference, epoch by epoch."""

import pytest
import torch

from l0fast.engine import FitOptions
from l0fast.engine.gpu import TritonFit
from l0fast.kernels.calibration_fit import tiles
from test_fit_engine import GATE_PARAMS, _engine, _problem, _targets, assert_follows_reference

HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("use_gates", [True, False])
@pytest.mark.parametrize("q,n", [(1, 1), (9, 301)])
def test_triton_fit_follows_the_reference_epoch_by_epoch(dtype, tol, use_gates, q, n):
    matrix, y, params = _problem(q, n, dtype, compact_rows=False)
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=1e-3, gate_params=GATE_PARAMS, use_gates=use_gates)
    assert_follows_reference(TritonFit, matrix, _targets(y, "relative"), params, options, 4, tol)


@pytest.mark.parametrize("options", ["gates", "no gates", "target count and household options"])
def test_triton_fit_over_several_household_tiles_follows_the_reference(options):
    """Problems of a few hundred households fit one tile of the launch: a tile's sums lost or mixed up would not
    show there (fp64, whose tolerance no Adam step near eps can reach)."""
    from test_household_options import _options

    n = 3001
    matrix, y, params = _problem(9, n, torch.float64, compact_rows=False)
    assert tiles(matrix.col_ptr, matrix.values.numel()) >= 3
    extra = {"gates": {}, "no gates": {"use_gates": False},
             "target count and household options": {"target_count": n // 5, "households": _options(n, torch.float64)}}
    fit = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=1e-3, gate_params=GATE_PARAMS, **extra[options])
    assert_follows_reference(TritonFit, matrix, _targets(y, "relative"), params, fit, 4, 1e-9)


def test_triton_fit_in_chunks_equals_one_call_bitwise():
    matrix, y, params = _problem(7, 200, torch.float32, compact_rows=False)
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=0.0, gate_params=GATE_PARAMS)
    whole, whole_state = _engine(TritonFit, matrix, _targets(y, "mse"), params, options)
    whole_stats = whole.run(5, True)
    split, split_state = _engine(TritonFit, matrix, _targets(y, "mse"), params, options)
    split_stats = torch.cat([split.run(2, False), split.run(1, True), split.run(2, True)])
    assert torch.equal(whole_stats, split_stats)
    for a, b in zip(whole_state[:3], split_state[:3]):
        assert torch.equal(a, b)


def test_triton_fit_reads_the_host_once_per_call_not_per_epoch(monkeypatch):
    """Host reads (syncs on a GPU) per run() must not grow with the number of epochs."""
    matrix, y, params = _problem(7, 200, torch.float32, compact_rows=False)
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=1e-4, gate_params=GATE_PARAMS)
    engine, _ = _engine(TritonFit, matrix, _targets(y, "mse"), params, options)
    engine.run(1, False)  # first call: layout validation and the target-major copy
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _f=original, _n=name, **k: reads.append(_n) or _f(t, *a, **k))
    counts = []
    for epochs in (1, 6):
        reads.clear()
        engine.run(epochs, False)
        counts.append(list(reads))
    assert counts[0] == counts[1] and len(counts[0]) <= 4, counts


def test_model_fit_on_the_triton_engine_matches_the_cpp_engine(monkeypatch):
    """SparseCalibrationWeights.fit with the Triton engine (as on CUDA) and with the fused C++ one."""
    import numpy as np
    import scipy.sparse as sp

    import l0fast.engine as engine
    import l0fast.sparse as sparse
    from l0fast import SparseCalibrationWeights

    M = sp.random(12, 300, density=0.2, format="csr", random_state=np.random.default_rng(4))
    y = M @ np.random.default_rng(5).uniform(0.5, 2, 300)
    kwargs = dict(lambda_l0=0.01, lambda_l2=1e-4, lr=0.05, epochs=8, loss_type="relative")
    cpp = SparseCalibrationWeights(300, seed=1).double().fit(M, y, **kwargs)
    for module in (engine, sparse):
        monkeypatch.setattr(module, "engine_backend", lambda device: "triton")
    triton = SparseCalibrationWeights(300, seed=1).double().fit(M, y, **kwargs)
    assert triton._operand(M).row_idx.dtype == torch.int32
    torch.testing.assert_close(triton.log_weight, cpp.log_weight, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(triton.log_alpha, cpp.log_alpha, rtol=1e-9, atol=1e-9)
    assert torch.equal(triton.rng_state, cpp.rng_state)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_triton_refit_within_bounds_and_a_diverging_fit_match_the_cpp_engine(monkeypatch):
    """refit(weight_bounds=) on the Triton engine (households options with ungated weights) equals the C++ one,
    and a diverging fit raises FitDiverged and keeps the model there too."""
    import numpy as np
    import scipy.sparse as sp

    import l0fast.engine as engine
    import l0fast.sparse as sparse
    from l0fast import SparseCalibrationWeights
    from l0fast.engine import FitDiverged

    M = sp.random(12, 300, density=0.2, format="csr", random_state=np.random.default_rng(4))
    y = M @ np.random.default_rng(5).uniform(0.2, 6, 300)
    fit = dict(lambda_l0=0.01, lr=0.1, epochs=8, loss_type="relative")
    refit = dict(epochs=6, lr=0.1, loss_type="relative", weight_bounds=(0.5, 2.0))
    cpp = SparseCalibrationWeights(300, seed=1).double().fit(M, y, **fit).refit(M, y, **refit)
    with pytest.raises(FitDiverged) as cpp_diverged:
        SparseCalibrationWeights(300, seed=1).fit(M, y, **fit).fit(M * 1e30, np.full(12, 1e30), lr=1e6, epochs=3)
    for module in (engine, sparse):
        monkeypatch.setattr(module, "engine_backend", lambda device: "triton")
    triton = SparseCalibrationWeights(300, seed=1).double().fit(M, y, **fit).refit(M, y, **refit)
    torch.testing.assert_close(triton.log_weight, cpp.log_weight, rtol=1e-9, atol=1e-9)
    weights = triton.get_weights(deterministic=True).detach()
    assert ((weights[weights > 0] >= 0.5) & (weights[weights > 0] <= 2.0)).all()
    fp32 = SparseCalibrationWeights(300, seed=1).fit(M, y, **fit)  # fp64 would not overflow here
    before = fp32.log_weight.detach().clone()
    with pytest.raises(FitDiverged, match="left as it was") as diverged:
        fp32.fit(M * 1e30, np.full(12, 1e30), lr=1e6, epochs=3)
    assert torch.equal(fp32.log_weight, before)
    assert str(diverged.value) == str(cpp_diverged.value), "the same step named, not the chunk's last"
    # Adam's second moment overflows to inf: a zero step (torch.optim.Adam's too), finite parameters, a useless
    # fit; C++ raises there, and so does the Triton engine (it returned)
    M = sp.random(20, 200, density=0.1, random_state=1, format="csr")
    fresh = SparseCalibrationWeights(200, seed=3)
    before = fresh.log_weight.detach().clone()
    with pytest.raises(FitDiverged, match="left as it was"):
        fresh.fit(M, M @ np.full(200, 1e30), lambda_l0=1e-3, lr=1e6, epochs=50, loss_type="mse", verbose_freq=50)
    assert torch.equal(fresh.log_weight, before)
