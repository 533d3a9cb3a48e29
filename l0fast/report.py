"""A calibration report people look at: ``report.md``, ``targets.csv`` and three plots.

:func:`report` writes into a folder:

- ``targets.csv``: per target, its value, the estimate, the relative error
  and the group (:func:`l0fast.diagnostics.calibration_diagnostics`);
- ``convergence.png``: loss, mean |relative error| and active records over
  the epochs (the model's :attr:`history`);
- ``errors_by_group.png``: |relative error| of every target, per group (of
  the :data:`MAX_GROUPS` groups with the largest errors, where there are more);
- ``weights.png``: the distribution of the final active weights against the
  initial (design) weights;
- ``report.md``: the summary figures, the worst targets and the plots.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from .diagnostics import calibration_diagnostics

WORST_TARGETS = 15
EXACT_SHOWN_AT = 1e-6  # |relative error| in %: errors below it (exact targets) are drawn at it on the log axis
MAX_GROUPS = 40  # groups in the plot and the report's table; more are cut to the worst (targets.csv has all)
FILES = ("report.md", "targets.csv", "convergence.png", "errors_by_group.png", "weights.png")


def report(model, M, y, directory, target_names=None, target_groups=None, estimate=None) -> dict[str, str]:
    """Write the report of ``model`` (a fitted SparseCalibrationWeights) on M (Q, N), y (Q,); returns the paths.

    ``estimate``: ``model.predict(M)`` when already known (see :func:`~l0fast.diagnostics.calibration_diagnostics`).
    """
    if os.path.exists(directory) and not os.path.isdir(directory):  # checks first: no folder, nor half a report
        raise ValueError(f"directory={os.fspath(directory)!r} is a file; pass a folder for the report")
    plt = pyplot()
    diag = calibration_diagnostics(model, M, y, target_names, target_groups, estimate)
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in FILES}
    diag.targets.to_csv(paths["targets.csv"], index=False)
    _convergence(plt, model.history, paths["convergence.png"])
    _errors_by_group(plt, diag.targets, diag.summary["max_abs_relative_error_by_group"], paths["errors_by_group.png"])
    weights = model.get_weights(deterministic=True).detach().double().cpu().numpy()
    _weights(plt, weights, model.initial_weights.double().cpu().numpy(), paths["weights.png"])
    with open(paths["report.md"], "w") as f:
        f.write(_markdown(diag, model))
    return paths


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no screen); ImportError naming the install without matplotlib."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the report's plots need matplotlib: pip install 'matplotlib>=3.5'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _convergence(plt, history: list[dict], path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    epochs = [row["epoch"] for row in history]
    panels = (("loss", "training loss (sampled gates)", "loss (log scale)", True),
              ("mean_relative_error", "mean |relative error| of the targets", "mean |relative error| (%)", False),
              ("active", "active records (deterministic gates)", "records", False))
    starts = [epoch for epoch, _ in _refits(history)]
    for ax, (key, title, label, log) in zip(axes, panels):
        values = np.array([row[key] for row in history], dtype=float) * (100 if key == "mean_relative_error" else 1)
        ax.plot(epochs, values, marker="o", markersize=3)
        for i, start in enumerate(starts):
            ax.axvline(start, color="gray", linestyle="--", linewidth=1, label=None if i else "refit starts (gates frozen)")
        ax.set(title=title, xlabel="epoch", ylabel=label)
        if log and len(values) and (values > 0).all():
            ax.set_yscale("log")
        if starts:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _refits(history: list[dict]) -> list[tuple[int, int]]:
    """(epoch it starts after, epochs) of each run of refit rows in ``history`` (rows without a phase: a fit's)."""
    runs, previous = [], 0
    for i, row in enumerate(history):
        if row.get("phase") == "refit":
            if i == 0 or history[i - 1].get("phase") != "refit":
                runs.append([previous, 0])
            runs[-1][1] += row["epoch"] - previous
        previous = row["epoch"]
    return [(start, epochs) for start, epochs in runs]


def _shown_groups(max_error_by_group: dict) -> list:
    """The groups to show: all, in name order (numbers by value, before names), up to :data:`MAX_GROUPS`; else
    the MAX_GROUPS with the largest max |relative error|, worst first."""
    if len(max_error_by_group) <= MAX_GROUPS:
        return sorted(max_error_by_group, key=lambda g: (0, float(g), "") if isinstance(g, numbers.Real) else (1, 0.0, str(g)))
    return sorted(max_error_by_group, key=lambda g: -abs(max_error_by_group[g]))[:MAX_GROUPS]


def _errors_by_group(plt, targets, max_error_by_group: dict, path: str) -> None:
    groups = _shown_groups(max_error_by_group)
    errors = [np.abs(targets.loc[targets["group"] == g, "relative_error"].to_numpy()) * 100 for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) + 3), 5))
    ax.boxplot([np.maximum(e, EXACT_SHOWN_AT) for e in errors], showfliers=True)  # every target, exact ones on the floor
    ax.set_xticks(range(1, len(groups) + 1), [str(g) for g in groups], rotation=40 if len(groups) > 6 else 0,
                  ha="right" if len(groups) > 6 else "center")
    ax.set_yscale("log")
    cut = len(groups) < len(max_error_by_group)
    title = f"target errors of the {len(groups)} groups (of {len(max_error_by_group):,}) furthest off" if cut else "target errors per group"
    exact = sum(int((e < EXACT_SHOWN_AT).sum()) for e in errors)
    floor = f"; {exact:,} under {EXACT_SHOWN_AT:g} % shown at it" if exact else ""
    ax.set(title=title, xlabel="target group", ylabel=f"|relative error| (%, log scale{floor})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _weights(plt, weights: np.ndarray, initial: np.ndarray, path: str) -> None:
    active = weights > 0
    fig, ax = plt.subplots(figsize=(7, 4))
    values = np.concatenate([weights[active], initial[initial > 0]])
    if len(values):
        low, high = np.log10(values.min()), np.log10(values.max())
        if high - low < 0.01:  # (nearly) all equal: a decade around them, where 50 bins over 1e-9 drew an unreadable axis
            low, high = low - 0.5, high + 0.5
        bins = np.logspace(low, high + 1e-9, 50)
        ax.hist(initial[initial > 0], bins=bins, alpha=0.5, label=f"initial, all {len(initial):,} records")
        ax.hist(weights[active], bins=bins, alpha=0.6, label=f"final, {int(active.sum()):,} active records")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(title="weight distribution", xlabel="weight (log scale)", ylabel="records (log scale)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _refit_note(history: list[dict]) -> str:
    """What of the epochs were a refit's, for the report's first line: "" when none."""
    refit = sum(epochs for _, epochs in _refits(history))
    return f" (the refit's {refit:,} of them with the gates frozen)" if refit else ""


def _markdown(diag, model) -> str:
    s = diag.summary
    worst = diag.targets.reindex(diag.targets["relative_error"].abs().sort_values(ascending=False, kind="stable").index).head(WORST_TARGETS)
    by_group = s["max_abs_relative_error_by_group"]
    groups = _shown_groups(by_group)
    cut = ["", f"(the {len(groups)} of {len(by_group):,} groups furthest off; targets.csv has every target)"] if len(groups) < len(by_group) else []
    lines = [
        "# Calibration report", "",
        f"- records: {s['active']:,} active of {s['n_features']:,} after {model.epochs_trained:,} epochs{_refit_note(model.history)}",
        f"- mean |relative error| of the targets: {s['mean_abs_relative_error']:.4%}",
        f"- Kish effective sample size: {s['kish_ess']:,.1f}; design effect: {s['design_effect']:.3f} (of the initial "
        f"weights: {s['initial_design_effect']:.3f})",
        "- final / initial weight, quantiles: " + ", ".join(f"{q:g}: {v:.3g}" for q, v in s["weight_ratio_quantiles"].items()),
        "", "## Largest absolute relative error per group", "", "| group | max abs relative error |", "|---|---:|",
        *(f"| {_cell(g)} | {by_group[g]:.4%} |" for g in groups), *cut,
        "", f"## The {len(worst)} targets furthest off", "", "| target | group | value | estimate | relative error |",
        "|---|---|---:|---:|---:|",
        *(f"| {_cell(r.target)} | {_cell(r.group)} | {r.value:.6g} | {r.estimate:.6g} | {r.relative_error:.4%} |"
          for r in worst.itertuples()),
        "", "## Plots", "", "![convergence](convergence.png)", "", "![errors by group](errors_by_group.png)", "",
        "![weights](weights.png)", "",
        "Relative errors are `(estimate - value) / max(|value|, 1)`; all figures use deterministic gates, but the "
        "training loss of the convergence plot: the fit's, on the gates it sampled, before each row's last step (as l0 "
        "prints it).", "",
    ]
    return "\n".join(lines)


def _cell(text) -> str:
    """``text`` for a Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
