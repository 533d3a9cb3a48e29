"""The fused C++ fit loop against the two-pass PyTorch reference, epoch by epoch."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast import SparseCalibrationWeights
from l0fast.engine import AdamState, FitDiverged, FitOptions, FitTargets, ReferenceFit
from l0fast.engine.cpu import CppFit
from l0fast.ops import HouseholdMajorMatrix, gated_sparse_product
from l0fast.rng import new_rng_state

GATE_PARAMS = (2 / 3, -0.1, 1.1)


def _problem(q, n, dtype, compact_rows, seed=0):
    """A matrix with an all-ones row, empty households, and targets near a feasible fit."""
    rng = np.random.default_rng(seed)
    M = sp.random(q, n, density=0.2, format="csc", random_state=rng)
    M = sp.vstack([M, sp.csr_matrix(np.ones((1, n)))]).tocsc()
    M = (M @ sp.diags((np.arange(n) % 7 != 6).astype(float))).tocsc()  # every 7th household has no entries (not the first)
    M.eliminate_zeros()
    matrix = HouseholdMajorMatrix.from_scipy(M, dtype, compact_rows=compact_rows)
    y = torch.as_tensor(M @ rng.uniform(0.5, 2.0, n), dtype=torch.float64)
    params = (torch.as_tensor(rng.normal(0, 0.3, n), dtype=dtype), torch.as_tensor(rng.normal(0, 1.0, n), dtype=dtype))
    return matrix, y, params


def _targets(y, loss):
    loss_weight = torch.linspace(0.5, 1.5, y.numel(), dtype=torch.float64)
    return FitTargets(y, loss_weight, 1 / (y + 1) if loss == "relative" else torch.ones_like(y))


def _engine(cls, matrix, targets, params, options, seed=5):
    log_weight, log_alpha = (p.clone().requires_grad_() for p in params)
    rng_state = new_rng_state(seed)
    adam = AdamState.zeros_like(log_weight, log_alpha)
    return cls(matrix, targets, log_weight, log_alpha, rng_state, adam, options), (log_weight, log_alpha, rng_state, adam)


def assert_follows_reference(cls, matrix, targets, params, options, epochs, tol):
    """Run ``cls`` and ReferenceFit one epoch per call; stats, parameters, moments and RNG must agree each time."""
    fused, fused_state = _engine(cls, matrix, targets, params, options)
    ref, ref_state = _engine(ReferenceFit, matrix, targets, params, options)
    for epoch in range(epochs):
        finish = epoch == epochs - 1
        torch.testing.assert_close(fused.run(1, finish), ref.run(1, finish), rtol=tol, atol=tol, msg=f"stats, epoch {epoch}")
        for a, b in zip(fused_state[:2], ref_state[:2]):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"parameters after epoch {epoch}")
        for a, b in zip(fused_state[3].moments().values(), ref_state[3].moments().values()):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-3)
        assert fused_state[3].step == ref_state[3].step == epoch + 1
    assert torch.equal(fused_state[2], ref_state[2]), "both engines must leave the noise stream at the same position"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("use_gates", [True, False])
@pytest.mark.parametrize("loss", ["mse", "relative"])
@pytest.mark.parametrize("q,n,compact_rows", [(1, 1, True), (9, 1025, True), (40, 3001, False)])
def test_fused_fit_follows_the_reference_epoch_by_epoch(dtype, tol, use_gates, loss, q, n, compact_rows):
    matrix, y, params = _problem(q, n, dtype, compact_rows)
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=1e-3, gate_params=GATE_PARAMS, use_gates=use_gates)
    assert_follows_reference(CppFit, matrix, _targets(y, loss), params, options, 6, tol)


@pytest.mark.parametrize("chunks", [[7], [1, 6], [3, 1, 3], [2, 2, 2, 1]])
@pytest.mark.parametrize("finish_each", [False, True])
def test_a_fit_in_chunks_equals_one_call_bitwise(chunks, finish_each):
    """Progress and checkpoints split a fit into calls; finishing a call (re-priming the next) changes nothing."""
    matrix, y, params = _problem(12, 2500, torch.float32, True)
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=0.0, gate_params=GATE_PARAMS)
    whole, whole_state = _engine(CppFit, matrix, _targets(y, "relative"), params, options)
    whole_stats = whole.run(sum(chunks), True)
    split, split_state = _engine(CppFit, matrix, _targets(y, "relative"), params, options)
    split_stats = torch.cat([split.run(c, finish_each or i == len(chunks) - 1) for i, c in enumerate(chunks)])
    assert torch.equal(whole_stats, split_stats)
    for a, b in zip(whole_state[:3], split_state[:3]):
        assert torch.equal(a, b)
    for a, b in zip(whole_state[3].moments().values(), split_state[3].moments().values()):
        assert torch.equal(a, b)


def test_compact_and_wide_row_indices_give_the_same_fit():
    results = []
    for compact_rows in (True, False):
        matrix, y, params = _problem(30, 2100, torch.float32, compact_rows)
        assert matrix.row_idx.dtype == (torch.uint16 if compact_rows else torch.int32)
        options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=0.0, gate_params=GATE_PARAMS)
        engine, state = _engine(CppFit, matrix, _targets(y, "mse"), params, options)
        results.append((engine.run(5, True), *state[:2]))
    for a, b in zip(*results):  # the gather's vectorized summation order may differ with the index width
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compact_rows_serve_the_sparse_product_forward_and_backward():
    M = sp.random(70, 300, density=0.1, format="csr", random_state=np.random.default_rng(2))
    compact, wide = (HouseholdMajorMatrix.from_scipy(M, torch.float64, compact_rows=c) for c in (True, False))
    assert compact.row_idx.dtype == torch.uint16
    outs, grads = [], []
    for matrix in (compact, wide):
        w = torch.linspace(0.1, 2.0, 300, dtype=torch.float64, requires_grad=True)
        out = gated_sparse_product(matrix, w)
        out.backward(torch.linspace(-1, 1, 70, dtype=torch.float64))
        outs.append(out)
        grads.append(w.grad)
    torch.testing.assert_close(outs[0], torch.as_tensor(M @ np.linspace(0.1, 2.0, 300)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grads[0], torch.as_tensor(M.T @ np.linspace(-1, 1, 70)))


def test_more_than_65536_targets_keep_32_bit_rows():
    M = sp.csr_matrix((np.ones(3), ([0, 65536, 70000], [0, 1, 2])), shape=(70001, 3))
    assert HouseholdMajorMatrix.from_scipy(M, compact_rows=True).row_idx.dtype == torch.int32


def test_model_fit_equals_the_reference_engine(monkeypatch):
    """SparseCalibrationWeights.fit on the fused engine and forced onto the reference loop."""
    M = sp.random(25, 800, density=0.2, format="csr", random_state=np.random.default_rng(4))
    y = M @ np.random.default_rng(5).uniform(0.5, 2, 800)
    kwargs = dict(lambda_l0=0.01, lambda_l2=1e-4, lr=0.05, epochs=40, loss_type="relative", target_groups=np.arange(25) % 3)
    fused = SparseCalibrationWeights(800, seed=1, log_weight_jitter_sd=0.1).double().fit(M, y, **kwargs)
    import l0fast.engine as engine

    monkeypatch.setattr(engine, "engine_backend", lambda device: "reference")
    ref = SparseCalibrationWeights(800, seed=1, log_weight_jitter_sd=0.1).double().fit(M, y, **kwargs)
    torch.testing.assert_close(fused.log_weight, ref.log_weight, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(fused.log_alpha, ref.log_alpha, rtol=1e-8, atol=1e-8)
    assert fused.optimizer_state.step == ref.optimizer_state.step == 40
    assert torch.equal(fused.rng_state, ref.rng_state)


def test_refit_on_the_reference_engine_equals_the_fused_refit(monkeypatch):
    """The reference engine (no C++ extension, L0FAST_BACKEND=reference) refits as the fused one does; it
    raised "element 0 of tensors does not require grad" before, the refit's weights being a plain tensor."""
    import l0fast.engine as engine

    M = sp.random(25, 800, density=0.2, format="csr", random_state=np.random.default_rng(4))
    y = M @ np.random.default_rng(5).uniform(0.5, 2, 800)
    models = [SparseCalibrationWeights(800, seed=1).double().fit(M, y, lr=0.05, epochs=40, loss_type="relative") for _ in range(2)]
    models[0].refit(M, y, epochs=30, lr=0.05, lambda_l2=1e-4, loss_type="relative")
    monkeypatch.setattr(engine, "engine_backend", lambda device: "reference")
    models[1].refit(M, y, epochs=30, lr=0.05, lambda_l2=1e-4, loss_type="relative")
    fused, ref = models
    assert not torch.equal(fused.log_weight, SparseCalibrationWeights(800, seed=1).double().log_weight)
    torch.testing.assert_close(fused.log_weight, ref.log_weight, rtol=1e-8, atol=1e-8)
    assert torch.equal(fused.log_alpha, ref.log_alpha)  # gates frozen
    assert [row["epoch"] for row in fused.history] == [row["epoch"] for row in ref.history]


def _fit_state(model) -> dict:
    """Everything a fit changes, as plain values."""
    adam = model.optimizer_state.state_dict()
    return {"log_weight": model.log_weight.detach().clone(), "log_alpha": model.log_alpha.detach().clone(),
            "rng_state": model.rng_state.clone(), "adam": adam, "epochs": model.epochs_trained,
            "history": [dict(row) for row in model.history], "lambda_l0_": model.lambda_l0_,
            "keep": None if model._keep_mask is None else model._keep_mask.clone()}


def _assert_same_state(a: dict, b: dict) -> None:
    for key in ("log_weight", "log_alpha", "rng_state"):
        assert torch.equal(a[key], b[key]), key
    assert a["adam"]["step"] == b["adam"]["step"]
    for key in ("exp_avg_lw", "exp_avg_sq_lw", "exp_avg_la", "exp_avg_sq_la"):
        assert torch.equal(a["adam"][key], b["adam"][key]), key
    assert (a["epochs"], a["history"], a["lambda_l0_"]) == (b["epochs"], b["history"], b["lambda_l0_"])
    assert (a["keep"] is None) == (b["keep"] is None) and (a["keep"] is None or torch.equal(a["keep"], b["keep"]))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("call", ["fit", "refit"])
def test_diverging_fit_raises_and_leaves_the_model_as_before(call, backend, monkeypatch):
    """A fit that diverges raises FitDiverged (a ValueError naming the fix) and loses none of the fits before
    it: the model is put back as it was, and fitting on from there equals a model that never tried."""
    import l0fast.engine as engine

    if backend == "reference":
        monkeypatch.setattr(engine, "engine_backend", lambda device: "reference")
    M = sp.random(5, 50, density=0.5, format="csr", random_state=np.random.default_rng(0))
    y = M @ np.random.default_rng(1).uniform(0.5, 2.0, 50)
    tried, untouched = (SparseCalibrationWeights(50, seed=0).fit(M, y, lr=0.05, epochs=30, loss_type="relative",
                                                                  target_count=20, keep=np.arange(50) < 3) for _ in range(2))
    before = _fit_state(tried)
    diverging = dict(lr=1e6, epochs=50)
    if call == "fit":
        diverging.update(keep=np.arange(50) >= 40, reset_optimizer=False)  # would change the keep mask and the moments
    with pytest.raises(FitDiverged, match=f"SparseCalibrationWeights.{call}: .*became NaN.*lower lr.*left as it was before"):
        getattr(tried, call)(M * 1e30, np.full(5, 1e30), **diverging)
    _assert_same_state(_fit_state(tried), before)
    for model in (tried, untouched):
        model.fit(M, y, lr=0.05, epochs=10, loss_type="relative", reset_optimizer=False)
    _assert_same_state(_fit_state(tried), _fit_state(untouched))
    assert issubclass(FitDiverged, ValueError)  # what l0fast raised before it had a name


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_a_fit_whose_last_update_diverges_raises_and_leaves_the_model_as_before(backend, epochs, monkeypatch):
    """Each C++ epoch checks the parameters it starts from: a NaN made by a call's last update went unseen, the
    model was left NaN and the fit's end raised another error ("hard_concrete_mean: log_alpha contains NaN")."""
    import l0fast.engine as engine

    if backend == "reference":
        monkeypatch.setattr(engine, "engine_backend", lambda device: "reference")
    rng = np.random.default_rng(0)
    M = sp.random(8, 300, density=0.3, format="csr", random_state=rng)
    model = SparseCalibrationWeights(300, seed=0)
    before = [t.detach().clone() for t in (model.log_weight, model.log_alpha, model.rng_state)]
    with pytest.raises(FitDiverged, match="became NaN .*left as it was before"):  # squared gradients of 1e30 targets overflow
        model.fit(M, (M @ rng.uniform(0.5, 2, 300)) * 1e30, epochs=epochs, lr=0.1, loss_type="mse")
    for now, then in zip((model.log_weight, model.log_alpha, model.rng_state), before):
        assert torch.equal(now.detach(), then)
    assert model.optimizer_state is None and model.epochs_trained == 0


@pytest.mark.parametrize("corrupt", ["row past the last target", "col_ptr decreasing", "col_ptr past nnz"])
def test_fused_fit_rejects_a_malformed_matrix_before_any_epoch(corrupt):
    """The epoch loop reads M unchecked: the matrix is validated once per call, and nothing is updated."""
    matrix, y, params = _problem(9, 300, torch.float32, compact_rows=False)
    if corrupt == "row past the last target":
        matrix.row_idx[17] = matrix.num_rows
    elif corrupt == "col_ptr decreasing":
        matrix.col_ptr[100] = matrix.col_ptr[102] + 1
    else:
        matrix.col_ptr[-1] += 1
    options = FitOptions(lr=0.05, lambda_l0=0.02, lambda_l2=0.0, gate_params=GATE_PARAMS)
    engine, state = _engine(CppFit, matrix, _targets(y, "mse"), params, options)
    with pytest.raises(ValueError, match="malformed household-major matrix"):
        engine.run(3, True)
    assert torch.equal(state[0], params[0]) and state[3].step == 0


def test_every_rank_raises_when_one_rank_holds_an_overflow():
    """The Triton engine's check of a sharded fit adds up, over the ranks, whether their parameters and Adam
    moments are finite: a rank whose own are finite raises when another's are not (here the exchange stands in
    for a rank with an inf second moment), as the C++ engine's exchanged NaN flag makes every rank raise."""
    from l0fast.engine.state import raise_if_diverged

    stats, finite = torch.zeros(3, 4, dtype=torch.float64), [torch.ones(5), torch.zeros(5)]
    raise_if_diverged(stats, finite, 3, exchange=lambda flag: flag.add_(0.0))  # every rank finite
    with pytest.raises(FitDiverged, match="after 3 Adam steps"):
        raise_if_diverged(stats, finite, 3, exchange=lambda flag: flag.add_(1.0))  # another rank was not
