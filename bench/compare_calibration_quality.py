"""Fit quality side by side: l0fast vs l0-python 0.6.2 on the built-in survey example.

Same problem, hyperparameters and ``torch.manual_seed`` for both; reports the
final mean relative target error (deterministic gates) and the active
households for each seed, then the medians.

    python bench/compare_calibration_quality.py --households 20000 --epochs 1000 --seeds 0 1 2
"""

import argparse
import statistics
import time

import numpy as np
import torch

from l0fast.datasets import make_survey_problem

HYPER = dict(lambda_l0=1e-6, lambda_l2=1e-8, lr=0.15, loss_type="relative")


def fit_once(module, problem, epochs: int, seed: int) -> tuple[float, int, float]:
    torch.manual_seed(seed)
    model = module.SparseCalibrationWeights(problem.n_households)
    start = time.perf_counter()
    model.fit(problem.M, problem.y, epochs=epochs, target_groups=problem.target_groups, **HYPER)
    seconds = time.perf_counter() - start
    estimate = model.predict(problem.M).double().numpy()
    error = float(np.mean(np.abs(problem.y - estimate) / (problem.y + 1)))
    return error, int(model.get_active_weights()["count"]), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import l0
    import l0fast

    problem = make_survey_problem(args.households, seed=0)
    rows = {"l0fast": [], "l0-python": []}
    for seed in args.seeds:
        for name, module in (("l0fast", l0fast), ("l0-python", l0)):
            error, active, seconds = fit_once(module, problem, args.epochs, seed)
            rows[name].append((error, active))
            print(f"seed {seed} {name:10s} mean rel err {error:.4%}  active {active:6d}  fit {seconds:6.1f} s")
    for name, results in rows.items():
        print(f"median {name:10s} mean rel err {statistics.median(e for e, _ in results):.4%}  "
              f"active {statistics.median(a for _, a in results):.0f}")


if __name__ == "__main__":
    main()
