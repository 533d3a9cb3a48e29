"""A number of records: l0fast's ``fit(target_count=K)`` (one fit) vs bisecting l0-python's ``lambda_l0``.

What calibration users do today with l0-python: refit with different
``lambda_l0`` until the active count is close to K.  This script bisects
``log(lambda_l0)`` with l0-python until the count is within ``--tolerance``
of K (at most ``--max-fits`` fits) and keeps the closest fit, then runs one
l0fast fit with ``target_count=K``; it prints, per K, both mean relative
target errors (deterministic gates, ``|y - estimate| / (y + 1)``), active
counts, the number of l0-python fits and each side's total time.

    python bench/compare_target_count.py --households 20000 --epochs 1000 --counts 2000 5000 10000
"""

import argparse
import math
import time

import numpy as np
import torch

from l0fast.datasets import make_survey_problem

HYPER = dict(lr=0.2, loss_type="relative")


def _fit(module, problem, epochs: int, seed: int, **kwargs):
    torch.manual_seed(seed)
    init = float(problem.y[problem.target_names.index("national/households")]) / problem.n_households
    model = module.SparseCalibrationWeights(problem.n_households, init_weights=init, init_keep_prob=0.8)
    model.fit(problem.M, problem.y, epochs=epochs, target_groups=problem.target_groups, **HYPER, **kwargs)
    estimate = model.predict(problem.M).double().numpy()
    error = float(np.mean(np.abs(problem.y - estimate) / (problem.y + 1)))
    return error, int(model.get_active_weights()["count"])


def bisect_l0(l0, problem, k: int, epochs: int, seed: int, tolerance: float, max_fits: int):
    """(error, active, lambda, fits) of the l0-python fit whose count is closest to k."""
    lo, hi = math.log(1e-9), math.log(1e-1)  # active count falls as lambda grows
    best = None
    for fits in range(1, max_fits + 1):
        lam = math.exp((lo + hi) / 2)
        error, active = _fit(l0, problem, epochs, seed, lambda_l0=lam)
        if best is None or abs(active - k) < abs(best[1] - k):
            best = (error, active, lam)
        if abs(active - k) <= tolerance * k:
            break
        lo, hi = ((lo + hi) / 2, hi) if active > k else (lo, (lo + hi) / 2)
    return (*best, fits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--max-fits", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import l0

    import l0fast

    problem = make_survey_problem(args.households, seed=0)
    for k in args.counts:
        start = time.perf_counter()
        ref_error, ref_active, lam, fits = bisect_l0(l0, problem, k, args.epochs, args.seed, args.tolerance, args.max_fits)
        ref_seconds = time.perf_counter() - start
        start = time.perf_counter()
        error, active = _fit(l0fast, problem, args.epochs, args.seed, target_count=k)
        seconds = time.perf_counter() - start
        print(f"K={k:6d}  l0fast target_count: err {error:.4%} active {active:6d} ({seconds:5.1f} s, 1 fit)  |  "
              f"l0-python bisection: err {ref_error:.4%} active {ref_active:6d} lambda {lam:.3g} "
              f"({ref_seconds:6.1f} s, {fits} fits)  |  l0fast/l0 error {error / ref_error:.2f}", flush=True)


if __name__ == "__main__":
    main()
