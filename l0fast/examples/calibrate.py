"""Calibrate a synthetic survey: ``python -m l0fast.examples.calibrate [--households N] [--epochs E] [--seed S]``.

Builds :func:`l0fast.datasets.make_survey_problem`, fits
:class:`l0fast.SparseCalibrationWeights` with a relative loss and one loss
group per target kind, then prints the target errors per group, the number
of households kept and the wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from l0fast import SparseCalibrationWeights
from l0fast.datasets import make_survey_problem


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=20_000)
    parser.add_argument("--regions", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--lambda-l0", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose-freq", type=int, default=100)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    problem = make_survey_problem(args.households, n_regions=args.regions, seed=args.seed)
    built = time.perf_counter()
    print(f"problem: {problem.n_targets} targets x {problem.n_households} households, nnz={problem.M.nnz}, "
          f"{int((problem.true_weights > 0).sum())} households in the true solution ({built - start:.2f} s to build)")

    # start every household at the weight that matches the national household count
    init = float(problem.y[problem.target_names.index("national/households")]) / problem.n_households
    model = SparseCalibrationWeights(problem.n_households, init_weights=init, init_keep_prob=0.8, seed=args.seed)
    before = problem.relative_errors(model.predict(problem.M).numpy())
    model.fit(problem.M, problem.y, lambda_l0=args.lambda_l0, lr=args.lr, epochs=args.epochs, loss_type="relative",
              target_groups=problem.target_groups, verbose=True, verbose_freq=args.verbose_freq)
    fitted = time.perf_counter()

    errors = problem.relative_errors(model.predict(problem.M).numpy())
    kinds = [name.split("/")[1] + (" (national)" if name.startswith("national") else "") for name in problem.target_names]
    print(f"\n{'target group':<28} {'n':>4} {'mean rel err':>13} {'max rel err':>12}")
    for g in np.unique(problem.target_groups):
        idx = np.flatnonzero(problem.target_groups == g)
        print(f"{kinds[idx[0]]:<28} {len(idx):>4} {errors[idx].mean():>13.4%} {errors[idx].max():>12.4%}")
    active = model.get_active_weights()["count"]
    print(f"\nmean relative error {before.mean():.4%} -> {errors.mean():.4%} (max {errors.max():.4%})")
    print(f"active households {active}/{problem.n_households} ({100 * (1 - model.get_sparsity()):.1f}% kept)")
    print(f"wall time: fit {fitted - built:.2f} s, total {time.perf_counter() - start:.2f} s ({torch.get_num_threads()} threads)")
    return {"mean_error_before": before.mean(), "mean_error": errors.mean(), "max_error": errors.max(), "active": active}


if __name__ == "__main__":
    main()
