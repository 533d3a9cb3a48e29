"""SparseCalibrationWeights and SparseL0Linear against l0-python 0.6.2: API, numerics, caching, validation."""

# ruff: noqa: N806

import numpy as np
import pytest
import torch
from scipy import sparse as sp

import l0fast
from l0fast import SparseCalibrationWeights, SparseL0Linear
from l0fast.datasets import make_survey_problem
from threads import num_threads

l0 = pytest.importorskip("l0", reason="l0-python 0.6.2 is the reference")
from l0.calibration import SparseCalibrationWeights as RefCalibration  # noqa: E402
from l0.sparse import SparseL0Linear as RefLinear  # noqa: E402

N, Q = 60, 15


@pytest.fixture
def M():
    return sp.random(Q, N, density=0.3, format="csr", random_state=1, dtype=np.float64)


def _perturbed(model, seed=0):
    """Spread log_alpha over the saturated and live regions so every gate branch is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    return model


# --------------------------------------------------------------------------- l0 parity


@pytest.mark.parametrize("ours, ref, kwargs", [
    (SparseCalibrationWeights, RefCalibration, {}),
    (SparseL0Linear, RefLinear, {}),
    (SparseL0Linear, RefLinear, {"fit_intercept": False}),
])
def test_state_dict_keys_and_strict_loading(ours, ref, kwargs):
    ours_model, ref_model = ours(N, **kwargs), _perturbed(ref(N, **kwargs))
    assert list(ours_model.state_dict()) == list(ref_model.state_dict())
    ours_model.load_state_dict(ref_model.state_dict(), strict=True)
    for name, value in ref_model.state_dict().items():
        assert torch.equal(ours_model.state_dict()[name], value)
    back = ref(N, **kwargs)
    back.load_state_dict(_perturbed(ours(N, **kwargs), seed=1).state_dict(), strict=True)


def test_eval_outputs_match_l0(M):
    ref = _perturbed(RefCalibration(N))
    ours = SparseCalibrationWeights(N)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.get_deterministic_gates(), ref.get_deterministic_gates())
    torch.testing.assert_close(ours.get_weights(deterministic=True), ref.get_weights(deterministic=True))
    torch.testing.assert_close(ours.predict(M), ref.predict(M))
    torch.testing.assert_close(ours.get_l0_penalty(), ref.get_l0_penalty())
    torch.testing.assert_close(ours.get_l2_penalty(), ref.get_l2_penalty())
    assert ours.get_sparsity() == ref.get_sparsity()
    assert torch.equal(ours.get_active_weights()["indices"], ref.get_active_weights()["indices"])


def test_penalty_gradients_match_l0():
    ref = _perturbed(RefCalibration(N))
    ours = SparseCalibrationWeights(N)
    ours.load_state_dict(ref.state_dict())
    for model in (ours, ref):
        (model.get_l0_penalty() + 0.1 * model.get_l2_penalty()).backward()
    torch.testing.assert_close(ours.log_alpha.grad, ref.log_alpha.grad)
    torch.testing.assert_close(ours.log_weight.grad, ref.log_weight.grad)


def test_sparse_linear_predict_matches_l0(M):
    X = M.T.tocsr()  # (N samples, Q features)
    ref = _perturbed(RefLinear(Q))
    ours = SparseL0Linear(Q)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.predict(X), ref.predict(X))
    torch.testing.assert_close(ours.get_l0_penalty(), ref.get_l0_penalty())
    assert torch.equal(ours.get_selected_features(), ref.get_selected_features())


@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_sparse_linear_gives_an_input_that_requires_grad_its_gradient(layout):
    """The fused product gave X no gradient, silently (l0-python's torch product gives it one)."""
    ref = _perturbed(RefLinear(Q))
    ours = SparseL0Linear(Q)
    ours.load_state_dict(ref.state_dict())
    dense = torch.rand(7, Q, generator=torch.Generator().manual_seed(2))
    grads = []
    for model in (ours, ref):
        X = {"dense": dense, "coo": dense.to_sparse(), "csr": dense.to_sparse_csr()}[layout].clone().requires_grad_()
        y = model(X, deterministic=True)
        (y * torch.arange(7.0)).sum().backward()
        grads.append(X.grad.to_dense())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_sparse_linear_honours_fit_intercept_switched_off_after_construction(M):
    """l0-python adds the bias only while fit_intercept holds; l0fast added it, and fit retrained it."""
    X, y = M.T.tocsr(), np.arange(N, dtype=np.float64)
    ours = SparseL0Linear(Q, seed=0)
    with torch.no_grad():
        ours.bias.fill_(5.0)
    ours.fit_intercept = False
    without = ours.predict(X)
    with torch.no_grad():
        ours.bias.zero_()
    torch.testing.assert_close(ours.predict(X), without)
    ours.fit(X, y, epochs=3)
    assert ours.bias.item() == 0.0 and ours.bias.grad is None


def test_sparse_linear_fit_raises_when_adam_freezes_a_weight():
    """Targets of 3e21 overflow Adam's second moments in float32, which freezes the weights (a zero step) where
    the README says the fit raises; only the parameters were checked."""
    X = sp.random(3, 4, density=1.0, format="csr", random_state=0)
    model = SparseL0Linear(4, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(l0fast.engine.FitDiverged, match="SparseL0Linear.fit: weight or log_alpha"):
        model.fit(X, np.array([3e21, -3e21, 0.0]), epochs=20)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("kwargs", [{}, {"init_keep_prob": np.linspace(0.1, 0.9, N), "init_weights": np.linspace(0, 3, N)},
                                    {"init_keep_prob": 0.3, "init_weights": 2.5, "log_alpha_jitter_sd": 0.2}])
def test_init_matches_l0_for_same_global_seed(kwargs):
    torch.manual_seed(7)
    ours = SparseCalibrationWeights(N, **kwargs)
    torch.manual_seed(7)
    ref = RefCalibration(N, **kwargs)
    torch.testing.assert_close(ours.log_alpha, ref.log_alpha, rtol=0, atol=0)
    torch.testing.assert_close(ours.log_weight, ref.log_weight, rtol=0, atol=0)
    torch.testing.assert_close(SparseCalibrationWeights(N, seed=3, **kwargs).log_alpha, RefCalibration(N, seed=3, **kwargs).log_alpha, rtol=0, atol=0)


@pytest.mark.parametrize("fit_kwargs", [
    {"loss_type": "mse", "lambda_l2": 0.01},
    {"loss_type": "relative", "target_groups": np.arange(Q) % 4, "group_multipliers": {1: 3.0}},
    {"loss_type": "relative", "target_groups": np.arange(Q) % 3, "normalize_groups": False},
])
def test_ungated_fit_matches_l0_step_for_step(M, fit_kwargs):
    """With use_gates=False there is no noise, so the whole Adam trajectory must equal l0's."""
    y = np.random.default_rng(0).uniform(5, 20, Q)
    models = []
    for cls in (SparseCalibrationWeights, RefCalibration):
        model = cls(N, use_gates=False, log_weight_jitter_sd=0.3, seed=11)
        models.append(model.fit(M, y, lambda_l0=0.01, lr=0.05, epochs=30, **fit_kwargs))
    torch.testing.assert_close(models[0].log_weight, models[1].log_weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(models[0].log_alpha, models[1].log_alpha, rtol=1e-4, atol=1e-5)


def test_verbose_output_has_l0_format(M, capsys):
    SparseCalibrationWeights(N, seed=0).fit(M, np.full(Q, 10.0), epochs=4, verbose=True, verbose_freq=2, target_groups=np.arange(Q) % 2)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Groups: 2 groups, normalize=on"
    assert out[1].startswith("Epoch    2: mean_group_mare=") and f"/{N} (" in out[1]
    assert out[2].strip().startswith("Weight dist: [<0.01: ")
    assert out[3].startswith("Epoch    4: ")


# --------------------------------------------------------------------------- sparse operand and cache


def test_different_matrix_same_shape_and_nnz_is_not_stale(M):
    model = SparseCalibrationWeights(N, seed=0)
    other = M.copy()
    other.data = other.data[::-1].copy()  # same shape, same nnz, different content
    w = model.get_weights(deterministic=True).detach().double().numpy()
    for mat in (M, other, M):
        np.testing.assert_allclose(model.predict(mat).numpy(), mat @ w, rtol=1e-5)
    M.data *= 2  # in-place change of the cached object is noticed too
    np.testing.assert_allclose(model.predict(M).numpy(), M @ w, rtol=1e-5)


def _exact_hash(a: np.ndarray) -> int:
    """sum_k mix(word(a[k]) + k * 2^64/phi) mod 2^64 in Python's exact integers (the formula, not numpy's arithmetic)."""
    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
        return x ^ (x >> 31)
    words = a.view(np.uint32) if a.dtype == np.float32 else a.view(np.uint64) if a.dtype == np.float64 else a.astype(np.int64)
    return sum(mix((int(w) % 2**64 + k * 0x9E3779B97F4A7C15) % 2**64) for k, w in enumerate(words)) % 2**64


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("n", [0, 1, 65_537, 200_003])  # past one and several 2^16-entry blocks
def test_array_hash_is_the_formula_in_cpp_and_numpy_at_any_thread_count(dtype, n, monkeypatch):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 1e6).astype(dtype)
    a[: n // 3] *= -1
    head = a[:2000]
    assert l0fast.sparse._array_hash(head) == _exact_hash(head)
    got = []
    for threads in (1, 3):
        with num_threads(threads):
            got.append(l0fast.sparse._array_hash(a))
    monkeypatch.setattr(l0fast.sparse, "_C", None)
    assert got[0] == got[1] == l0fast.sparse._array_hash(a)


def test_a_tiny_edit_among_huge_values_is_noticed():
    """Sums of the values lose an edit smaller than half an ulp of the total (here 1 against ~1e16): the
    position-keyed hash of the bits does not."""
    M = sp.csr_matrix(np.vstack([np.full(50, 3e14), np.ones(50), np.ones(50)]))
    model = SparseCalibrationWeights(50, seed=0)
    model.predict(M)
    M.data[-1] = 1.4
    w = model.get_weights(deterministic=True).detach().double().numpy()
    np.testing.assert_allclose(model.predict(M).numpy(), M @ w, rtol=1e-6)


@pytest.mark.parametrize("fast", [True, False], ids=["cpp", "numpy"])
def test_fingerprint_notices_edits_that_keep_shape_and_nnz(M, fast, monkeypatch):
    if not fast:
        monkeypatch.setattr(l0fast.sparse, "_C", None)
    base = l0fast.sparse._fingerprint(M, "M")
    assert l0fast.sparse._fingerprint(M.copy(), "M") == base
    changed = M.copy()
    changed.data[0] += 1
    swapped = M.copy()  # same values and sum, two of them (in different columns) trade places
    other = int(np.flatnonzero((swapped.data != swapped.data[0]) & (swapped.indices != swapped.indices[0]))[0])
    swapped.data[[0, other]] = swapped.data[[other, 0]]
    moved = M.copy()
    moved.indices[0] = (moved.indices[0] + 1) % moved.shape[1]
    one_column = M.copy()  # two values of one column trade rows: every sum weighted by the column index is kept
    column = np.bincount(one_column.indices).argmax()
    at = np.flatnonzero((one_column.indices == column))
    at = at[np.flatnonzero(one_column.data[at] != one_column.data[at[0]])[0]], at[0]
    one_column.data[list(at)] = one_column.data[list(at[::-1])]
    for name, other in (("changed", changed), ("swapped", swapped), ("moved", moved), ("swapped in one column", one_column)):
        assert l0fast.sparse._fingerprint(other, "M") != base, name
    dense = np.random.default_rng(0).standard_normal((100, 200))
    far = dense.copy().ravel()  # entries 9973 apart trade places (the old dense weights repeated with that period)
    far[[0, 9973]] = far[[9973, 0]]
    assert l0fast.sparse._fingerprint(far.reshape(dense.shape), "M") != l0fast.sparse._fingerprint(dense, "M")


def test_matrix_converted_once_per_fit(M, monkeypatch):
    calls = []
    convert = l0fast.sparse.MatrixCache._convert
    monkeypatch.setattr(l0fast.sparse.MatrixCache, "_convert", staticmethod(lambda *a, **k: calls.append(1) or convert(*a, **k)))
    model = SparseCalibrationWeights(N, seed=0).fit(M, np.ones(Q), epochs=7, verbose=True, verbose_freq=2)
    model.predict(M)
    assert len(calls) == 1
    assert model._cached_M_torch.is_sparse and model._cached_M_shape == (Q, N)


@pytest.mark.parametrize("convert", [
    sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, lambda m: m.toarray(), lambda m: torch.tensor(m.toarray()),
    lambda m: torch.tensor(m.toarray()).to_sparse(), lambda m: torch.tensor(m.toarray()).to_sparse_csr(),
])
def test_accepts_every_matrix_kind(M, convert):
    model = SparseCalibrationWeights(N, seed=0)
    torch.testing.assert_close(model.predict(convert(M)), model.predict(M))


@pytest.mark.parametrize("save", ["torch.save", "pickle", "deepcopy"])
@pytest.mark.parametrize("make", [lambda: SparseCalibrationWeights(N, seed=0), lambda: SparseL0Linear(N, seed=0)],
                         ids=["SparseCalibrationWeights", "SparseL0Linear"])
def test_fitted_models_save_whole_and_fit_on(M, make, save, tmp_path):
    """torch.save(model) of a fitted model, as with l0-python (the matrix cache, holding a weak reference to the
    caller's matrix, is left behind and refilled): the copy predicts and goes on fitting as the model does."""
    import copy
    import pickle

    model = make()
    fit = dict(y=np.arange(Q, dtype=float), epochs=4)
    model.fit(M, **fit)
    if save == "torch.save":
        torch.save(model, tmp_path / "model.pt")
        copied = torch.load(tmp_path / "model.pt", weights_only=False)
    else:
        copied = pickle.loads(pickle.dumps(model)) if save == "pickle" else copy.deepcopy(model)
    torch.testing.assert_close(copied.predict(M), model.predict(M))
    for m in (model, copied):
        torch.manual_seed(1)  # SparseL0Linear.fit draws its initial weight from torch's generator, as l0's does
        m.fit(M, **fit)
    for (name, p), q in zip(model.named_parameters(), copied.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("layout", ["dense", "coo", "csr", "csc"])
def test_torch_matrices_changed_through_numpy_views_are_converted_afresh(M, layout):
    """A write through a numpy view (or ``.data``) bumps no version counter: the cache sums a torch matrix's
    stored arrays, as it does a scipy matrix's, and sees the change."""
    model = SparseCalibrationWeights(N, seed=0)
    want = [model.predict(M), model.predict(2 * M)]
    dense = torch.tensor(M.toarray())
    matrix = {"dense": dense, "coo": dense.to_sparse(), "csr": dense.to_sparse_csr(), "csc": dense.to_sparse_csc()}[layout]
    torch.testing.assert_close(model.predict(matrix), want[0])
    values = matrix if layout == "dense" else matrix._values() if layout == "coo" else matrix.values()
    values.numpy()[...] *= 2
    torch.testing.assert_close(model.predict(matrix), want[1])


@pytest.mark.parametrize("layout", ["dense", "coo"])
def test_matrices_made_under_inference_mode_are_read_by_content(M, layout):
    """An inference tensor has no version counter: the cache compares its content, so an in-place change under
    inference mode is noticed (l0-python, which converts at every call, takes such matrices too)."""
    model = SparseCalibrationWeights(N, seed=0)
    with torch.inference_mode():
        dense = torch.tensor(M.toarray())
        matrix = dense if layout == "dense" else dense.to_sparse()
        torch.testing.assert_close(model.predict(matrix), model.predict(M))
        (matrix if layout == "dense" else matrix._values()).mul_(2)
        torch.testing.assert_close(model.predict(matrix), model.predict(2 * M))


def test_product_gradient_is_exact():
    A = sp.random(7, 11, density=0.4, format="csr", random_state=0)
    op = l0fast.sparse.MatrixCache().get(A, 11, "cpu", torch.float64)
    w = torch.rand(11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: l0fast.ops.gated_sparse_product(op, v), (w,))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, match", [
    ({"n_features": 0}, "n_features"), ({"beta": 0.0}, "beta"), ({"gamma": 0.0}, "gamma"), ({"zeta": 1.0}, "zeta"),
    ({"init_keep_prob": 1.5}, "init_keep_prob"), ({"init_keep_prob": np.full(N, -0.1)}, "init_keep_prob"),
    ({"init_keep_prob": np.ones(N + 1)}, "must have shape"), ({"init_weights": -1.0}, "init_weights"),
    ({"init_weights": np.full(N, np.nan)}, "init_weights"), ({"init_weights": np.ones(3)}, "must have shape"),
    ({"log_alpha_jitter_sd": -1.0}, "log_alpha_jitter_sd"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseCalibrationWeights(**{"n_features": N, **kwargs})


def test_extreme_keep_probs_are_clamped_like_l0():
    for p in (0.0, 1.0, np.array([0.0, 1.0, 0.5])):
        log_alpha = SparseCalibrationWeights(3, init_keep_prob=p, log_alpha_jitter_sd=0).log_alpha
        assert torch.isfinite(log_alpha).all() and log_alpha.abs().max() < 14
    assert torch.all(SparseCalibrationWeights(3, init_weights=0.0).log_weight < -18)  # zero stays allowed


@pytest.mark.parametrize("args, kwargs, match", [
    (("M3d",), {}, "2-D"), (("wide",), {}, "n_features"), (("M", np.ones(Q + 1)), {}, "y must"),
    (("nan",), {}, "NaN"), (("M", np.full(Q, np.inf)), {}, "y contains"), (("M",), {"loss_type": "mae"}, "'relative'"),
    (("M",), {"target_groups": np.zeros(Q - 1)}, "target_groups"), (("M",), {"group_multipliers": {0: 2.0}}, "group_multipliers requires"),
    (("M",), {"lr": 0.0}, "lr"), (("M",), {"epochs": -1}, "epochs"), (("M",), {"lambda_l0": -1.0}, "lambda_l0"),
    (("M",), {"verbose": True, "verbose_freq": 0}, "verbose_freq"),
    (("M",), {"loss_type": "capped_relative"}, "relative_floor > 0"),
    (("M",), {"loss_type": "capped_relative", "relative_floor": -1.0}, "relative_floor > 0"),
    (("M",), {"relative_floor": 1.0}, "only applies to loss_type='capped_relative'"),
])
def test_fit_validation(M, args, kwargs, match):
    bad = {"M": M, "M3d": np.ones((2, 3, N)), "wide": sp.random(Q, N + 1, density=0.3, format="csr"), "nan": M.copy()}
    bad["nan"].data[0] = np.nan
    mat = bad[args[0]]
    y = args[1] if len(args) > 1 else np.ones(Q if mat.shape[0] == Q else mat.shape[0])
    with pytest.raises(ValueError, match=match):
        SparseCalibrationWeights(N).fit(mat, y, **{"epochs": 1, **kwargs})


def test_forward_validates_matrix_and_nan_log_alpha(M):
    model = SparseCalibrationWeights(N)
    with pytest.raises(ValueError, match="n_features"):
        model.predict(M[:, :-1])
    with torch.no_grad():
        model.log_alpha[0] = float("nan")
    with pytest.raises(ValueError):
        model.predict(M)


def test_sparse_linear_validation():
    with pytest.raises(ValueError, match="init_keep_prob"):
        SparseL0Linear(5, init_keep_prob=-0.5)
    with pytest.raises(ValueError, match="beta"):
        SparseL0Linear(5, beta=-1.0)
    with pytest.raises(ValueError, match="y must"):
        SparseL0Linear(5).fit(sp.random(8, 5, density=0.5, format="csr"), np.ones(7), epochs=1)


# --------------------------------------------------------------------------- behaviour


def test_fit_on_survey_example_calibrates_and_sparsifies():
    p = make_survey_problem(4_000, n_regions=5, seed=0)
    init = p.y[p.target_names.index("national/households")] / p.n_households
    model = SparseCalibrationWeights(p.n_households, init_weights=init, init_keep_prob=0.8, seed=0)
    before = p.relative_errors(model.predict(p.M).numpy()).mean()
    model.fit(p.M, p.y, lambda_l0=1e-5, lr=0.2, epochs=600, loss_type="relative", target_groups=p.target_groups)
    after = p.relative_errors(model.predict(p.M).numpy()).mean()
    assert before > 0.2 and after < before / 5, (before, after)
    assert model.get_sparsity() > 0.2


def test_seed_makes_fit_reproducible(M):
    y = np.random.default_rng(0).uniform(5, 20, Q)
    fits = [SparseCalibrationWeights(N, seed=s, log_weight_jitter_sd=0.1).fit(M, y, epochs=20, lr=0.1) for s in (5, 5, 6)]
    assert torch.equal(fits[0].log_weight, fits[1].log_weight) and torch.equal(fits[0].log_alpha, fits[1].log_alpha)
    assert not torch.equal(fits[0].log_weight, fits[2].log_weight)
    torch.manual_seed(0)
    a = SparseCalibrationWeights(N).fit(M, y, epochs=5)
    torch.manual_seed(0)
    b = SparseCalibrationWeights(N).fit(M, y, epochs=5)
    assert torch.equal(a.log_alpha, b.log_alpha)


def test_sampled_gates_use_the_rng_stream():
    model = SparseCalibrationWeights(N, seed=0)
    assert "rng_state" not in model.state_dict() and model.rng_state.tolist() == [0, 0]
    g1, g2 = model._sample_gates(), model._sample_gates()
    assert model.rng_state.tolist() == [0, 2 * N] and not torch.equal(g1, g2)
    model.rng_state[1] = 0
    assert torch.equal(model._sample_gates(), g1)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_a_diverging_sparse_l0_linear_fit_raises_and_keeps_the_model(fit_intercept):
    """l0-python goes on with NaN; l0fast raised the gate op's 'log_alpha contains NaN ... reset_parameters()',
    a method SparseL0Linear lacks, and kept the NaNs.  Now FitDiverged, and the model as it was."""
    from l0fast.engine import FitDiverged

    X = sp.random(100, 20, density=0.2, format="csr", random_state=0)
    y = X @ np.arange(20.0)
    model = SparseL0Linear(20, fit_intercept=fit_intercept, seed=0).fit(X, y, epochs=30)
    before = {k: v.clone() for k, v in [*model.state_dict().items(), ("rng_state", model.rng_state)]}
    with pytest.raises(FitDiverged, match="SparseL0Linear.fit: weight or log_alpha became NaN.*left as it was before"):
        model.fit(X * 1e30, y * 1e30, epochs=50, lr=1e6)
    for name, value in [*model.state_dict().items(), ("rng_state", model.rng_state)]:
        assert torch.equal(value, before[name]), name
    assert torch.isfinite(model.predict(X)).all()


def test_an_ungated_model_keeps_its_weights_in_their_bounds(M):
    """use_gates=False: the weights are exp(log_weight); the final projection divided them by the unused gates."""
    y = M @ np.full(N, 2.0)
    model = SparseCalibrationWeights(N, use_gates=False, init_weights=2.0, seed=0)
    model.fit(M, y, epochs=30, lambda_l0=0.0, lr=0.1, loss_type="relative", weight_bounds=(0.8, 1.25))
    ratio = model.get_weights(deterministic=True).detach() / 2.0
    assert ((ratio >= 0.8) & (ratio <= 1.25)).all()


def test_a_converted_model_fits_on_from_its_adam_state(M):
    """.double() converts the optimizer state with the parameters, so reset_optimizer=False goes on (it raised
    'a fit parameter or Adam moment has dtype Float'); relative_floor may be a numpy scalar."""
    y = M @ np.ones(N)
    fit = dict(epochs=5, lr=0.1, loss_type="capped_relative", relative_floor=np.float32(1.0))
    model = SparseCalibrationWeights(N, seed=0).fit(M, y, **fit).double()
    assert all(t.dtype == torch.float64 for t in model.optimizer_state.moments().values())
    model.fit(M, y, reset_optimizer=False, **fit)
    assert model.optimizer_state.step == 10 and torch.isfinite(model.log_weight).all()
    kept = SparseCalibrationWeights(N, seed=0).fit(M, y, keep=np.arange(N) < 3, **fit).to("meta")
    assert kept._keep_mask.device.type == "meta" and kept.get_deterministic_gates().device.type == "meta"
