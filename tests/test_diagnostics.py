"""diagnostics() and the fit history: figures recomputed by hand from the model's weights."""

import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from l0fast import SparseCalibrationWeights
from l0fast.diagnostics import RATIO_QUANTILES, calibration_diagnostics

Q, N = 12, 300


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    M = sp.random(Q, N, density=0.3, format="csr", random_state=rng)
    return M, M @ rng.uniform(0.5, 2.0, N)


def test_diagnostics_match_the_weights(problem):
    M, y = problem
    w0 = np.random.default_rng(1).uniform(0.5, 3.0, N)
    model = SparseCalibrationWeights(N, init_weights=w0, seed=0).fit(M, y, lambda_l0=0.05, lr=0.1, epochs=60)
    groups = np.arange(Q) % 3
    diag = model.diagnostics(M, y, target_names=[f"t{i}" for i in range(Q)], target_groups=groups)
    w = model.get_weights(deterministic=True).detach().double().numpy()
    estimate = M @ w
    rel = (estimate - y) / np.maximum(np.abs(y), 1)
    assert diag.targets["target"].tolist() == [f"t{i}" for i in range(Q)]
    np.testing.assert_allclose(diag.targets["estimate"], estimate, rtol=1e-5)
    np.testing.assert_allclose(diag.targets["relative_error"], rel, rtol=1e-4, atol=1e-6)
    active = w > 0
    assert 0 < active.sum() < N, "the fit should have pruned some records"
    s = diag.summary
    assert s["active"] == active.sum() and s["n_features"] == N
    assert s["kish_ess"] == pytest.approx(w[active].sum() ** 2 / (w[active] ** 2).sum(), rel=1e-6)
    assert s["design_effect"] == pytest.approx(active.sum() / s["kish_ess"])
    assert s["initial_design_effect"] == pytest.approx(N * (w0**2).sum() / w0.sum() ** 2, rel=1e-6)  # w0 held in float32
    ratio = w[active] / w0[active]
    for q in RATIO_QUANTILES:
        assert s["weight_ratio_quantiles"][q] == pytest.approx(np.quantile(ratio, q), rel=1e-5)
    for g in range(3):
        assert s["max_abs_relative_error_by_group"][g] == pytest.approx(np.abs(rel[groups == g]).max(), rel=1e-4, abs=1e-6)


def test_diagnostics_reject_wrong_lengths(problem):
    M, y = problem
    model = SparseCalibrationWeights(N, seed=0)
    with pytest.raises(ValueError, match="target_names must have one entry per target"):
        model.diagnostics(M, y, target_names=["a"])


@pytest.mark.parametrize("bad, match", [
    ({"target_groups": np.r_[np.nan, np.arange(Q - 1.0)]}, r"target_groups holds NaN or None at targets \[0\]"),
    ({"target_groups": [None, *range(Q - 1)]}, r"target_groups holds NaN or None at targets \[0\]"),
    ({"estimate": np.r_[np.nan, np.ones(Q - 1)]}, r"estimate holds NaN or inf at targets \[0\]"),
    ({"estimate": np.ones(Q + 1)}, rf"estimate must be a vector with one entry per target \({Q}\), got shape \({Q + 1},\)"),
    ({"estimate": np.ones((Q, 1))}, rf"estimate must be a vector with one entry per target \({Q}\), got shape \({Q}, 1\)"),
])
def test_diagnostics_refuse_what_they_would_drop_or_misread(problem, bad, match):
    """A NaN or None group vanished from the per-group table (its target's error with it), a NaN estimate printed
    a nan% mean; an estimate of another length blamed y, and a column gave pandas' error."""
    M, y = problem
    with pytest.raises(ValueError, match=match):
        calibration_diagnostics(SparseCalibrationWeights(N, seed=0), M, y, **bad)


def test_history_is_recorded_every_verbose_freq_epochs_across_fits(problem):
    M, y = problem
    model = SparseCalibrationWeights(N, seed=0)
    model.fit(M, y, lambda_l0=0.05, lr=0.1, epochs=25, verbose_freq=10)
    model.fit(M, y, lambda_l0=0.02, lr=0.1, epochs=10, verbose_freq=10)
    assert [h["epoch"] for h in model.history] == [10, 20, 25, 35]
    assert [h["lambda_l0"] for h in model.history] == [0.05] * 3 + [0.02]
    last = model.history[-1]
    estimate = model.predict(M).double().numpy()
    assert last["mean_relative_error"] == pytest.approx(np.mean(np.abs(estimate - y) / np.maximum(np.abs(y), 1)), rel=1e-5)
    assert last["active"] == int((model.get_weights(deterministic=True) > 0).sum())
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in model.history)
    assert model.history[0]["loss"] > model.history[-1]["loss"]


def test_refit_lowers_the_error_on_the_same_support(problem):
    M, y = problem
    model = SparseCalibrationWeights(N, seed=0).fit(M, y, lambda_l0=0.2, lr=0.1, epochs=80, loss_type="relative")
    gates = model.get_deterministic_gates().detach().clone()
    log_alpha = model.log_alpha.detach().clone()
    before = model.diagnostics(M, y).summary
    model.refit(M, y, epochs=300, lr=0.05, loss_type="relative")
    after = model.diagnostics(M, y).summary
    assert 0 < before["active"] < N
    assert after["active"] == before["active"]
    assert torch.equal(model.log_alpha, log_alpha) and torch.equal(model.get_deterministic_gates(), gates)
    assert after["mean_abs_relative_error"] < 0.85 * before["mean_abs_relative_error"]
    assert model.history[-1]["epoch"] == 380


def test_select_households_equals_scipy_column_slicing(problem):
    from l0fast.ops import HouseholdMajorMatrix

    M, _ = problem
    index = torch.tensor([5, 0, 299, 17, 17, 120])
    picked = HouseholdMajorMatrix.from_scipy(M, torch.float64).select_households(index)
    expected = HouseholdMajorMatrix.from_scipy(M[:, index.numpy()], torch.float64)
    for a, b in zip((picked.col_ptr, picked.row_idx, picked.values), (expected.col_ptr, expected.row_idx, expected.values)):
        assert torch.equal(a, b)


def test_a_report_of_many_groups_shows_the_worst_and_stays_readable(tmp_path):
    """With more groups than MAX_GROUPS the plot and the table keep the groups furthest off, worst first (the plot
    grew 0.6 inch per group: 66,000 pixels wide for 1,000 groups); targets.csv keeps every target."""
    from PIL import Image

    from l0fast import report
    from l0fast.report import MAX_GROUPS

    rng = np.random.default_rng(2)
    M = sp.random(3 * MAX_GROUPS, N, density=0.05, format="csr", random_state=rng)
    y = M @ rng.uniform(0.5, 2.0, N)
    model = SparseCalibrationWeights(N, seed=0).fit(M, y, epochs=20, lr=0.1, loss_type="relative")
    groups = np.array([f"g{i:03d}" for i in range(len(y))])  # one target per group
    paths = report(model, M, y, str(tmp_path), target_groups=groups)
    errors = model.diagnostics(M, y, target_groups=groups).targets.set_index("group")["relative_error"].abs()
    worst = list(errors.sort_values(ascending=False).index[:MAX_GROUPS])
    table = [line.split(" | ")[0][2:] for line in open(paths["report.md"]).read().split("## Largest")[1].splitlines()
             if line.startswith("| g") and not line.startswith("| group |")]
    assert table == worst
    assert f"the {MAX_GROUPS} of {len(y):,} groups furthest off" in open(paths["report.md"]).read()
    assert Image.open(paths["errors_by_group.png"]).size[0] < 0.7 * MAX_GROUPS * 110 + 400
    assert len(open(paths["targets.csv"]).read().splitlines()) == len(y) + 1


def test_report_tables_keep_their_columns_when_names_hold_a_pipe(problem, tmp_path):
    from l0fast import report

    M, y = problem
    model = SparseCalibrationWeights(N, seed=0).fit(M, y, epochs=5, lr=0.1, loss_type="relative")
    names = [f"income|band {i}" for i in range(len(y))]
    groups = np.array(["a|b", "c\nd"] * (len(y) // 2) + ["a|b"] * (len(y) % 2))
    text = open(report(model, M, y, str(tmp_path), target_names=names, target_groups=groups)["report.md"]).read()
    for section, columns in (("## Largest", 2), ("targets furthest off", 5)):
        rows = [line for line in text.split(section)[1].split("\n\n")[1].splitlines()]
        assert len(rows) > 2 and all(len(re.findall(r"(?<!\\)\|", row)) == columns + 1 for row in rows), rows
    assert "income\\|band 0" in text and "a\\|b" in text


def test_diagnostics_and_report_of_a_shard_are_refused(problem, tmp_path):
    """A shard's estimates hold its block of households only: its diagnostics reported ~99% errors silently."""
    from l0fast import report

    M, y = problem
    shard = SparseCalibrationWeights(N // 2, household_offset=0, n_features_total=N, seed=0)
    for call in (lambda: shard.diagnostics(M[:, : N // 2], y), lambda: report(shard, M[:, : N // 2], y, str(tmp_path / "r"))):
        with pytest.raises(ValueError, match=rf"holds households \[0, {N // 2}\) of {N}: gather the shards first"):
            call()
    assert not (tmp_path / "r").exists()


def test_a_report_into_a_file_or_without_matplotlib_is_refused_before_anything_is_written(problem, tmp_path, monkeypatch):
    """A file as the folder raised FileExistsError; without matplotlib, targets.csv was written before the ImportError."""
    import sys

    from l0fast import report

    M, y = problem
    model = SparseCalibrationWeights(N, seed=0).fit(M, y, epochs=3, lr=0.1, loss_type="relative")
    (tmp_path / "file").write_text("kept\n")
    with pytest.raises(ValueError, match=r"directory='.*file' is a file; pass a folder for the report"):
        report(model, M, y, str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "kept\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'matplotlib>=3.5'"):
        report(model, M, y, str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_report_groups_go_in_name_order_with_numbers_by_value():
    """Sorted as text, group 10 came between 1 and 2."""
    from l0fast.report import _shown_groups

    assert _shown_groups({g: 0.1 for g in [10, np.int64(2), 1, "b", "a"]}) == [1, 2, 10, "a", "b"]


def test_the_errors_plot_draws_exact_targets_too(tmp_path, monkeypatch):
    """Errors of 0 were left out for the log axis: a group of 8 exact targets and 3 off showed a median of 50%."""
    import matplotlib.axes
    import pandas as pd

    from l0fast.report import EXACT_SHOWN_AT, _errors_by_group, pyplot

    drawn, boxplot = [], matplotlib.axes.Axes.boxplot
    monkeypatch.setattr(matplotlib.axes.Axes, "boxplot", lambda ax, data, **k: (drawn.extend(data), boxplot(ax, data, **k))[1])
    labels = []
    set_axes = matplotlib.axes.Axes.set
    monkeypatch.setattr(matplotlib.axes.Axes, "set", lambda ax, **k: (labels.append(k.get("ylabel")), set_axes(ax, **k))[1])
    errors = [0.0] * 8 + [0.5, 0.4, 0.6]
    targets = pd.DataFrame({"group": ["g"] * 11, "relative_error": errors})
    _errors_by_group(pyplot(), targets, {"g": 0.6}, str(tmp_path / "e.png"))
    assert len(drawn[0]) == 11 and np.median(drawn[0]) == EXACT_SHOWN_AT
    assert f"8 under {EXACT_SHOWN_AT:g} % shown at it" in labels[-1]


@pytest.mark.parametrize("initial", [2.0, 2.0002])
def test_the_weights_plot_of_equal_weights_spans_a_decade_around_them(tmp_path, monkeypatch, initial):
    """Every weight 2.0 gave 50 bins over 1e-9 of the log axis: no readable tick (weights within 0.01 of a decade
    of each other: the same decade around them)."""
    import matplotlib.axes

    from l0fast.report import _weights, pyplot

    edges, hist = [], matplotlib.axes.Axes.hist
    monkeypatch.setattr(matplotlib.axes.Axes, "hist", lambda ax, x, bins=None, **k: (edges.append(bins), hist(ax, x, bins=bins, **k))[1])
    _weights(pyplot(), np.full(6, 2.0), np.full(6, initial), str(tmp_path / "w.png"))
    low, high = edges[0][0], edges[0][-1]
    assert high / low >= 10 ** (1 - 1e-6) and low < 2.0 < high and low < initial < high


def test_weight_ratio_quantiles_leave_out_records_of_design_weight_0():
    """Their ratio w / 0 is inf (or nan): the top quantiles read nan."""
    from l0fast.diagnostics import weight_summary

    s = weight_summary(torch.tensor([2.0, 1.0, 3.0, 1e-8]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert s["active"] == 4 and s["weight_ratio_quantiles"][1.0] == 3.0 and s["weight_ratio_quantiles"][0.5] == 2.0


def test_refit_rows_are_marked_and_the_report_tells_them_apart(tmp_path, monkeypatch):
    """The report's epochs and the convergence plot ran the refit's epochs on from the fit's, with no mark."""
    import matplotlib.axes

    import l0fast as l0
    from l0fast.report import _refits

    M = sp.random(20, 300, density=0.2, random_state=0, format="csr", dtype=np.float32)
    y = M @ np.full(300, 1.1)
    model = l0.SparseCalibrationWeights(300, seed=0)
    model.fit(M, y, epochs=30, lambda_l0=1e-3, verbose_freq=10)
    model.refit(M, y, epochs=25, verbose_freq=10)
    assert [(row["epoch"], row["phase"]) for row in model.history] == [
        (10, "fit"), (20, "fit"), (30, "fit"), (40, "refit"), (50, "refit"), (55, "refit")]
    lines, axvline = [], matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda ax, x, **k: (lines.append(x), axvline(ax, x, **k))[1])
    text = open(l0.report(model, M, y, str(tmp_path))["report.md"]).read()
    assert "after 55 epochs (the refit's 25 of them with the gates frozen)" in text
    assert lines == [30, 30, 30], "one mark a panel, where the refit starts"
    old_rows = [{k: v for k, v in row.items() if k != "phase"} for row in model.history]  # a checkpoint's from before
    fit_again = [{"epoch": 65, "phase": "fit"}, {"epoch": 70, "phase": "refit"}, {"epoch": 80, "phase": "refit"}]
    assert _refits(old_rows) == [] and _refits(model.history + fit_again) == [(30, 25), (65, 15)]
