"""The built-in example as a calibration job: ``python -m l0fast.examples.calibrate [--dir run] [--households N] ...``.

Writes the synthetic survey of :func:`l0fast.datasets.make_survey_problem`
to ``DIR`` as the files ``l0fast calibrate`` reads (``M.npz``,
``targets.csv`` with one loss group per target kind, ``init_weights.csv``:
every household at the weight that matches the national household count),
then runs ``l0fast calibrate`` on them with a target count of households,
bounds on their weights, a refit of the weights, a checkpoint and a report, and
prints where the weights and the report are.  Run it again with
``--resume`` after an interruption to continue from the checkpoint (without
it, a run starts a new fit and replaces the checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile

import numpy as np
import pandas as pd
from scipy import sparse

from l0fast.cli import main as cli_main
from l0fast.datasets import SurveyProblem, make_survey_problem
from l0fast.report import pyplot


FILES = ("M.npz", "targets.csv", "init_weights.csv")


def _paths(directory: str) -> dict[str, str]:
    return {name: os.path.join(directory, name) for name in FILES}


def write_problem(problem: SurveyProblem, directory: str) -> dict[str, str]:
    """The problem as ``M.npz``, ``targets.csv`` and ``init_weights.csv`` in ``directory``; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = _paths(directory)
    sparse.save_npz(paths["M.npz"], sparse.csr_matrix(problem.M))
    targets, weights = _tables(problem)
    targets.to_csv(paths["targets.csv"], index=False)
    weights.to_csv(paths["init_weights.csv"], index=False)
    return paths


def _tables(problem: SurveyProblem) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(targets: name, value, group: one group per target kind; initial weights: every household at the weight
    that matches the national household count)."""
    kinds = [name.split("/")[1] + (" (national)" if name.startswith("national") else "") for name in problem.target_names]
    init = float(problem.y[problem.target_names.index("national/households")]) / problem.n_households
    return (pd.DataFrame({"name": problem.target_names, "value": problem.y, "group": kinds}),
            pd.DataFrame({"weight": np.full(problem.n_households, init)}))


def _holds(directory: str, problem: SurveyProblem) -> bool:
    """Whether ``directory`` holds the files :func:`write_problem` writes for ``problem`` (as read back)."""
    paths = _paths(directory)
    try:
        M = sparse.load_npz(paths["M.npz"])
        targets, weights = (pd.read_csv(paths[name]) for name in ("targets.csv", "init_weights.csv"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # missing, truncated or not the files it writes
        return False
    want_targets, want_weights = _tables(problem)
    return (M.shape == problem.M.shape and (M != sparse.csr_matrix(problem.M)).nnz == 0
            and targets.equals(want_targets) and weights.equals(want_weights))


def _count(lowest: int):
    """An argparse type: an int >= lowest."""
    def parse(text: str) -> int:
        value = int(text)
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be an int >= {lowest}, got {value}")
        return value
    parse.__name__ = "int"  # argparse's "invalid int value" for text that is no int
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="run", help="folder for the input files, the weights, the checkpoint and the report")
    parser.add_argument("--households", type=_count(1), default=20_000, help="households of the synthetic survey (default %(default)s)")
    parser.add_argument("--regions", type=_count(1), default=20, help="regions, each with its own targets (default %(default)s)")
    parser.add_argument("--epochs", type=_count(1), default=1000, help="epochs of the fit (default %(default)s)")
    parser.add_argument("--lr", type=float, default=0.2, help="Adam's learning rate (default %(default)s, above l0fast calibrate's 0.1)")
    parser.add_argument("--target-count", type=_count(1), default=5000, help="households to keep (default %(default)s)")
    parser.add_argument("--refit-epochs", type=_count(0), default=200, help="refit of the kept households' weights (default %(default)s)")
    bounds = parser.add_mutually_exclusive_group()
    bounds.add_argument("--weight-bounds", type=float, nargs=2, default=(0.1, 10.0), metavar=("LO", "HI"),
                        help="kept weights within [LO, HI] times the initial ones (default 0.1 10)")
    bounds.add_argument("--no-weight-bounds", action="store_true", help="no bounds (the weights spread: a design effect of ~12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the survey and of the fit (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --dir (same options)")
    args = parser.parse_args(argv)
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: a file; pass a folder (it is made if missing)")
    try:
        pyplot()  # the report's plots: checked before the input files are written
    except ImportError as error:
        parser.error(str(error))

    problem = make_survey_problem(args.households, n_regions=args.regions, seed=args.seed)
    if args.resume and os.path.exists(os.path.join(args.dir, "M.npz")):  # the files the checkpoint was fitted on
        if not _holds(args.dir, problem):
            print(f"error: {args.dir} holds the problem of other --households, --regions or --seed; resume with the "
                  "options of the interrupted run (or run without --resume to start afresh)", file=sys.stderr)
            return 2
        paths = _paths(args.dir)
    else:
        paths = write_problem(problem, args.dir)
    print(f"example: {problem.n_targets} targets x {problem.n_households} households, {problem.M.nnz:,} non-zeros, "
          f"in {os.path.abspath(args.dir)}")
    command = [
        "calibrate", "--matrix", paths["M.npz"], "--targets", paths["targets.csv"], "--init-weights", paths["init_weights.csv"],
        "--loss", "relative", "--epochs", str(args.epochs), "--lr", str(args.lr), "--target-count", str(args.target_count), "--refit-epochs", str(args.refit_epochs),
        *([] if args.no_weight_bounds else ["--weight-bounds", *map(str, args.weight_bounds)]),
        "--seed", str(args.seed), "--checkpoint", os.path.join(args.dir, "fit.ckpt"), "--checkpoint-every", "100",
        "--out", os.path.join(args.dir, "weights.csv"), "--report", os.path.join(args.dir, "report"),
    ]
    return cli_main(command + (["--resume"] if args.resume else ["--restart"]))  # run again: a new fit


if __name__ == "__main__":
    raise SystemExit(main())
