"""``l0fast calibrate``: calibrate survey weights from files, resumably, with a progress bar and a report.

Inputs (every one checked before anything runs or is written; a bad one is a
one-line error naming the file and the fix, exit status 2):

- ``--matrix M.npz``: a scipy sparse matrix (``scipy.sparse.save_npz``), targets x households,
  or a directory of per-shard files (:func:`l0fast.distributed.write_shards`);
- ``--targets targets.csv``: columns ``name,value`` and optionally ``group``, one row per matrix row;
- ``--init-weights w.csv`` (optional): column ``weight``, one row per household (design weights);
- ``--keep keep.csv`` (optional): column ``keep`` (1/0 or true/false), one row per household: always active.

With ``--refit-epochs N`` the weights of the selected households are then
refitted with their gates frozen (:meth:`SparseCalibrationWeights.refit`).
Outputs: ``--out weights.csv`` (``household,weight,active``), written to a
temp file and renamed (a failure leaves an earlier one as it was), and, with
``--report DIR``, :func:`l0fast.report.report`'s files, written one by one.
No output may be an input or another output (checked before the fit).

Under ``torchrun --nproc-per-node P`` each process joins the group
(:func:`l0fast.distributed.join_from_environment`: gloo on CPU, NCCL on
CUDA), loads its block of households (from a directory of shards: only its
own files) and fits it with the others (``fit(process_group=...)``); rank 0
writes the same outputs a single process would, ``--checkpoint`` is sharded.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..atomic import atomic_open
from ..calibration_loss import LOSS_TYPES
from ..output_paths import output_path_problem


LAMBDA_L0 = 1e-5  # --lambda-l0's default
CHECKPOINT_MINUTES = 10.0  # --checkpoint-minutes's default
# fit()'s progress for --progress (auto: see _progress)
FIT_PROGRESS = {"always": "always", "lines": "lines", "never": False}


class InputError(Exception):
    """A bad input file or option: printed as one line, exit status 2."""


# fit()'s argument names in its errors, as this command's options
_OPTION_OF = {"loss_type": "--loss", "relative_floor": "--relative-floor", "target_count": "--target-count",
              "lambda_l0": "--lambda-l0", "lambda_l2": "--lambda-l2", "lr": "--lr", "weight_bounds": "--weight-bounds",
              "n_features": "households", "seed": "--seed", "target_groups": "--targets' group column"}
# a name, not a part of a path or file name ("runs/lr.ckpt"), then its value if written "name=value"
_ARGUMENT = re.compile(r"(?<![\w./-])(" + "|".join(_OPTION_OF) + r")(?![\w/-]|\.\w)(?:=(?:'([^']*)'|([^\s,;)\]]+)))?")
# epochs only where written "epochs=N" (the word alone counts them: "200 epochs done")
_EPOCHS = re.compile(r"(?<![\w./-])epochs=(\d+)")
# texts of fit()'s errors, as this command's: arguments, and advice written for Python callers
_AS_COMMAND = {
    "resume=False": "no --resume",
    "household options: keep:": "household options: --keep:",  # 'keep' alone is a common word
    "fit in float64 (model.double())": "fit in float64 (--dtype float64)",
    "convert the model (.double() or .float()) before fit": "pass the --dtype it was written with",
    "a running fit (fit(checkpoint=...))": "a running fit (--checkpoint)",
    "load it with load_checkpoint and continue it with fit(reset_optimizer=False)":
        "give another --checkpoint, or --restart to replace it",
    ", or load it with load_checkpoint": "",
}


def as_option_message(error: Exception) -> str:
    """``error``'s text with fit()'s argument names written as the options that set them: ``lr`` -> ``--lr``,
    ``loss_type='mse'`` -> ``--loss mse``, ``resume=False`` -> ``no --resume``, ``epochs=5`` -> ``--epochs 5``, and
    advice written for Python (``model.double()``) as the options that follow it (``--dtype float64``)."""

    def option(match: re.Match) -> str:
        name, quoted, plain = match.groups()
        flag, value = _OPTION_OF[name], quoted if quoted is not None else plain
        if value is None:
            return flag
        return f"{flag} {value}" if flag.startswith("--") else f"{flag}={value}"

    text = _ARGUMENT.sub(option, str(error))
    for written, as_command in _AS_COMMAND.items():
        text = text.replace(written, as_command)
    return _EPOCHS.sub(r"--epochs \1", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", required=True, help="scipy sparse .npz, targets x households")
    parser.add_argument("--targets", required=True, help="CSV with columns name,value[,group]")
    parser.add_argument("--init-weights", help="CSV with a 'weight' column, one row per household")
    parser.add_argument("--keep", help="CSV with a 'keep' column (1/0 or true/false), one row per household: always active, "
                        "outside --target-count")
    parser.add_argument("--weight-bounds", type=float, nargs=2, metavar=("LO", "HI"),
                        help="active weights end within [LO, HI] times their initial weight")
    parser.add_argument("--loss", default="relative", choices=LOSS_TYPES, help="the fit's loss (default %(default)s)")
    parser.add_argument("--relative-floor", type=float, help="denominator floor of --loss capped_relative")
    parser.add_argument("--epochs", type=int, default=1000, help="epochs of the fit (default %(default)s)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam's learning rate, also the refit's (default %(default)s)")
    parser.add_argument("--lambda-l0", type=float, help=f"L0 penalty weight (default {LAMBDA_L0:g}; not with --target-count)")
    parser.add_argument("--target-count", type=int,
                        help="end with exactly this many active households besides --keep's (sets lambda-l0 itself)")
    parser.add_argument("--lambda-l2", type=float, default=0.0, help="L2 penalty weight on the weights (default %(default)s)")
    parser.add_argument("--refit-epochs", type=int, default=0,
                        help="then refit the weights of the selected households for this many epochs (gates frozen)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gate noise (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision of the weights and the fit (default %(default)s); float64 where float32 diverges "
                             "(targets of ~1e10 with --loss mse), at more memory and time")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N; under torchrun each rank takes its local GPU")
    parser.add_argument("--checkpoint", help="checkpoint file, written atomically")
    parser.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    parser.add_argument("--checkpoint-minutes", type=float, default=CHECKPOINT_MINUTES,
                        help="also a checkpoint at the end of the first --log-every chunk that starts this many minutes "
                             "after the last one (default %(default)g; 0: every chunk); and one at the end")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the fit saved in --checkpoint (if it exists)")
    resume.add_argument("--restart", action="store_true", help="start a new fit even if --checkpoint holds one (replaced "
                        "at the first checkpoint); without --resume or --restart an existing checkpoint is an error")
    parser.add_argument("--out", default="weights.csv", help="output CSV: household,weight,active (default %(default)s)")
    parser.add_argument("--report", help="folder for report.md, targets.csv and the plots")
    parser.add_argument("--log-every", type=int, default=100, help="epochs between history rows and progress lines (default %(default)s)")
    parser.add_argument("--progress", choices=("auto", *FIT_PROGRESS), default="auto",
                        help="on stderr: a bar on a terminal, else a line per --log-every epochs (auto), always a bar (a "
                             "console that draws carriage returns, e.g. CI), always lines (lines) or nothing (never)")
    parser.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    """The command; exit status 0, 2 (a bad input or option), 1 (another rank of the job failed) or 130 (interrupted).
    A rank that fails leaves the process group at once: the others' collectives then fail within seconds."""
    from ..distributed import join_from_environment, launched_by_torchrun
    from ..distributed.group import CollectiveFailed

    group, status = None, 1
    args.started = time.time()  # a checkpoint older than this is not this run's
    try:
        check_options(args)  # before any process group forms or any file is read
        if launched_by_torchrun():
            try:
                group, args.device = join_from_environment(args.device)
            except ValueError as error:
                raise InputError(str(error)) from None
        inputs = load_inputs(args, group)
        status = calibrate(args, *inputs, group=group)
    except InputError as error:
        print(f"l0fast calibrate: error: {error}", file=sys.stderr)
        status = 2
    except CollectiveFailed as error:
        print(f"l0fast calibrate: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"l0fast calibrate: interrupted{_resume_hint(args)}", file=sys.stderr)
        status = 130
    finally:
        if group is not None:
            try:
                group.close(wait=status == 0)
            except CollectiveFailed as error:  # a rank that failed after its fit (rank 0 writing the outputs)
                print(f"l0fast calibrate: error: {error}", file=sys.stderr)
                status = 1
    return status


def _resume_hint(args: argparse.Namespace) -> str:
    if not args.checkpoint:
        return "; nothing was written (with --checkpoint PATH a run can be resumed)"
    if not _holds_this_fit(args):
        return (f"; no checkpoint of this run was written yet ({args.checkpoint}): the same command starts over "
                "(--checkpoint-every or --checkpoint-minutes write them sooner)")
    return f"; the fit resumes from its last checkpoint with {_resuming_command(args)} ({args.checkpoint})"


def _holds_this_fit(args: argparse.Namespace) -> bool:
    """Whether --checkpoint holds this run's fit: resumed from it, or written since the run started (with --restart,
    an older one is the replaced fit's)."""
    return os.path.exists(args.checkpoint) and (args.resume or os.path.getmtime(args.checkpoint) >= args.started)


def _resuming_command(args: argparse.Namespace) -> str:
    return ("the same command" if args.resume else
            "the same command with --resume in place of --restart" if args.restart else "the same command and --resume")


def check_options(args: argparse.Namespace) -> None:
    """InputError naming the option for a value out of range, a device this machine lacks or a bad combination."""
    import torch

    from ..sparse import check_device

    try:
        device = check_device(args.device)
    except ValueError:
        raise InputError(f"--device {args.device}: not a device of this machine ({torch.cuda.device_count()} CUDA devices); "
                         "use --device cpu, or cuda[:N] where there is a GPU") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {args.device}: l0fast calibrate runs on cpu or cuda[:N]")
    if not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.refit_epochs < 0:
        raise InputError(f"--refit-epochs must be >= 0, got {args.refit_epochs}")
    for name, unit in (("epochs", "epochs"), ("checkpoint_every", "epochs"), ("log_every", "epochs"),
                       ("target_count", "records")):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be a positive number of {unit}, got {value}")
    for flag, given in (("--resume", args.resume), ("--restart", args.restart), ("--checkpoint-every", args.checkpoint_every)):
        if given and not args.checkpoint:
            raise InputError(f"{flag} needs --checkpoint PATH")
    if not args.checkpoint_minutes >= 0:
        raise InputError(f"--checkpoint-minutes must be >= 0, got {args.checkpoint_minutes}")
    if args.target_count is not None and args.lambda_l0 is not None:
        raise InputError("--lambda-l0 and --target-count exclude each other: --target-count moves the L0 weight itself")
    _check_outputs(args)
    if args.checkpoint and os.path.exists(args.checkpoint) and not (args.resume or args.restart):
        raise InputError(f"--checkpoint {args.checkpoint} exists: add --resume to continue the fit saved there, or --restart to "
                         "start a new one that replaces it")
    if args.weight_bounds is not None and not (0 <= args.weight_bounds[0] <= args.weight_bounds[1] and args.weight_bounds[1] > 0):
        raise InputError(f"--weight-bounds {args.weight_bounds[0]} {args.weight_bounds[1]}: need 0 <= LO <= HI and HI > 0 "
                         "(HI = 0 would zero every weight)")


def _check_outputs(args: argparse.Namespace) -> None:
    """InputError unless every file this run writes can be written, after the fit, without replacing an input
    or another output: its folder exists and is writable, it is not a folder, and no two paths are one file."""
    from ..report import FILES, pyplot

    inputs = {f"the --{name.replace('_', '-')} file": getattr(args, name) for name in ("matrix", "targets", "init_weights", "keep")}
    outputs = {"--out": args.out, "--checkpoint": args.checkpoint}
    if args.report:
        if os.path.exists(args.report) and not os.path.isdir(args.report):
            raise InputError(f"--report {args.report}: a file, not a folder; pass a folder for the report")
        try:
            pyplot()
        except ImportError as error:  # found before the fit, not after it
            raise InputError(f"--report {args.report}: {error}") from None
        outputs.update({f"--report's {name}": os.path.join(args.report, name) for name in FILES})
    taken = {os.path.realpath(path): name for name, path in inputs.items() if path}
    # the report's folder that must exist and be writable: its own, or where it makes its own
    report_folder = args.report if os.path.isdir(args.report or "") else os.path.dirname(os.path.abspath(args.report or "."))
    for option, path in outputs.items():
        if not path:
            continue
        problem = output_path_problem(path, report_folder if option.startswith("--report") else None)
        if problem:
            raise InputError(f"{option} {path}: {problem}")
        real = os.path.realpath(path)
        if real in taken:
            raise InputError(f"{option} {path} is {taken[real]}: writing it would replace it; write it elsewhere")
        taken[real] = option


def load_inputs(args: argparse.Namespace, group=None) -> tuple:
    """(M, y, names, groups, init_weights or None, keep or None, Households), validated; InputError otherwise.

    With a ShardGroup ``group``, M and the per-household inputs are this rank's block.
    """
    M, block = _read_matrix(args.matrix, group)
    matrix = MatrixFile(args.matrix, M.shape[0], block.total)
    names, y, groups = _read_targets(args.targets, matrix)
    init = None if args.init_weights is None else block.of(_read_weights(args.init_weights, matrix))
    keep = None if args.keep is None else block.of(_read_keep(args.keep, matrix))
    return M, y, names, groups, init, keep, block


@dataclass(frozen=True)
class Households:
    """This process's households ``[offset, offset + count)`` of ``total``."""

    offset: int
    count: int
    total: int

    def of(self, per_household: np.ndarray) -> np.ndarray:
        return per_household[self.offset : self.offset + self.count]


@dataclass(frozen=True)
class MatrixFile:
    """The ``--matrix`` file: its path, its targets (rows) and its households (columns, all ranks' in a sharded fit)."""

    path: str
    targets: int
    households: int

    def count(self, unit: str) -> int:
        """The matrix's number of ``unit`` ("target" or "household")."""
        return self.targets if unit == "target" else self.households


def _read_matrix(path: str, group) -> tuple:
    """(M or this rank's columns of it, Households)."""
    from ..distributed import load_shard
    from ..distributed.shards import ShardError

    if not os.path.exists(path):
        raise InputError(f"--matrix {path}: no such file; pass the matrix saved with scipy.sparse.save_npz (or a directory of shards)")
    try:
        M, offset, total = load_shard(path, *((0, 1) if group is None else (group.rank, group.size)))
    except ShardError as error:  # no shards, or shards that do not fit the ranks
        raise InputError(f"--matrix {error}") from error
    except Exception as error:  # noqa: BLE001 (any unreadable file is the same user error)
        raise InputError(f"{path}: not a scipy sparse .npz ({type(error).__name__}); save it with scipy.sparse.save_npz") from error
    if not np.isfinite(M.data).all():
        raise InputError(f"{path}: the matrix holds NaN or inf entries; clean them before calibrating")
    if M.shape[1] == 0:  # a sharded run's empty block is a ShardError
        raise InputError(f"{path}: the matrix has no households")
    return M, Households(offset, M.shape[1], total)


def _read_csv(path: str, option: str, **options):
    """The CSV file given as ``option`` (e.g. --targets), read by pandas."""
    import pandas as pd

    if not os.path.exists(path):
        raise InputError(f"{option} {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{option} {path}: a folder; pass the CSV file")
    try:
        return pd.read_csv(path, **options)
    except Exception as error:  # noqa: BLE001
        raise InputError(f"{option} {path}: not a readable CSV ({type(error).__name__}: {str(error)[:80]})") from error


def _numeric_column(table, column: str, path: str, matrix: MatrixFile, unit: str, numbers: str = "numbers") -> np.ndarray:
    """Column ``column`` of ``table`` as finite fp64, one row per ``unit`` ("target" or "household") of the matrix;
    ``numbers`` says what its entries may be, for the message about one that is not a number."""
    import pandas as pd

    if column not in table.columns:
        raise InputError(f"{path}: no '{column}' column (found {', '.join(map(str, table.columns))}); add a header row with '{column}'")
    rows = matrix.count(unit)
    if len(table) != rows:
        other = "household" if unit == "target" else "target"
        transposed = (f"; {len(table)} is its number of {other}s: the matrix must be targets x households (save M.T "
                      "in its place)") if len(table) == matrix.count(other) else ""
        raise InputError(f"{path}: {len(table)} rows but the matrix {matrix.path} has {rows} {unit}s; give one row per "
                         f"{unit}, in the matrix's order{transposed}")
    entries = table[column]
    values = np.array(pd.to_numeric(entries, errors="coerce"), dtype=np.float64)  # NaN for what is not a number; writable
    words = np.flatnonzero(np.isnan(values) & entries.notna().to_numpy())
    if len(words):
        raise InputError(f"{path}: column '{column}' has entries that are not numbers: {len(words)} (first: data row "
                         f"{words[0] + 1}, {entries.iloc[words[0]]!r}); write them as {numbers}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise InputError(f"{path}: column '{column}' is empty, NaN or inf on {len(bad)} rows (first: data row {bad[0] + 1}); fill "
                         f"them (a row dropped here must be dropped from the matrix too: one row per {unit})")
    return values


def _read_targets(path: str, matrix: MatrixFile) -> tuple:
    table = _read_csv(path, "--targets", dtype={"name": str, "group": str})  # group labels as written ("01" stays "01")
    if "name" not in table.columns:
        raise InputError(f"{path}: no 'name' column (found {', '.join(map(str, table.columns))}); columns must be name,value[,group]")
    y = _numeric_column(table, "value", path, matrix, "target")
    groups = None
    if "group" in table.columns:
        blank = np.flatnonzero(table["group"].isna().to_numpy())
        if len(blank):
            raise InputError(f"{path}: column 'group' is empty on {len(blank)} rows (first: data row {blank[0] + 1}); give every "
                             "target a group (a group of its own, e.g. its name, is fine) or drop the column")
        groups = table["group"].to_numpy()
    return table["name"].fillna("").to_numpy(), y, groups


def _read_weights(path: str, matrix: MatrixFile) -> np.ndarray:
    weights = _numeric_column(_read_csv(path, "--init-weights"), "weight", path, matrix, "household")
    if (weights < 0).any():
        raise InputError(f"{path}: negative weights; initial (design) weights must be > 0")
    zero = np.flatnonzero(weights == 0)
    if len(zero):
        raise InputError(f"{path}: {len(zero)} households have weight 0 (first: data row {zero[0] + 1}); a calibration scales "
                         "design weights, so theirs would stay ~0 yet could count as active: drop those households (their "
                         "matrix columns) or give them a positive weight")
    return weights


def _read_keep(path: str, matrix: MatrixFile) -> np.ndarray:
    table = _read_csv(path, "--keep")
    if "keep" in table.columns:  # true/false in any case, also among 1/0 (pandas reads such a mix as text)
        words = table["keep"].astype(str).str.strip().str.lower()
        table["keep"] = table["keep"].astype(object).mask(words == "true", 1.0).mask(words == "false", 0.0)
    flags = _numeric_column(table, "keep", path, matrix, "household", "1/0 or true/false")
    other = np.flatnonzero(~np.isin(flags, (0.0, 1.0)))
    if len(other):
        raise InputError(f"{path}: column 'keep' must hold 1/0 (or true/false) only; data row {other[0] + 1} holds "
                         f"{flags[other[0]]:g}")
    return flags == 1.0


def calibrate(args: argparse.Namespace, M, y, names, groups, init, keep, block: Households, group=None) -> int:
    """Fit, then write the weights and the report (rank 0 of a sharded fit); prints a summary."""
    import pandas as pd

    import torch

    from .. import SparseCalibrationWeights
    from ..diagnostics import relative_errors, weight_summary
    from ..report import report

    # what the fit and the refit both take
    common = dict(lr=args.lr, lambda_l2=args.lambda_l2, loss_type=args.loss, relative_floor=args.relative_floor,
                  target_groups=None if groups is None else pd.factorize(groups)[0], verbose_freq=args.log_every,
                  progress=_progress(args.progress),
                  weight_bounds=None if args.weight_bounds is None else tuple(args.weight_bounds),
                  process_group=None if group is None else group.group)
    try:
        model = SparseCalibrationWeights(M.shape[1], init_weights=init, seed=args.seed, device=args.device,
                                         household_offset=block.offset, n_features_total=block.total)
        model.to(getattr(torch, args.dtype))
        model.fit(M, y, epochs=args.epochs, target_count=args.target_count,
                  **({} if args.target_count else {"lambda_l0": LAMBDA_L0 if args.lambda_l0 is None else args.lambda_l0}),
                  checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume, keep=keep,
                  checkpoint_seconds=60 * args.checkpoint_minutes if args.checkpoint else None, **common)
        if args.refit_epochs:
            model.refit(M, y, epochs=args.refit_epochs, **common)
    except ValueError as error:  # a checkpoint of other data, or options out of range
        print(f"l0fast calibrate: error: {as_option_message(error)}", file=sys.stderr)
        return 2
    estimate = model.predict(M).double()
    if group is not None:
        from ..distributed import gather_model

        model, estimate = gather_model(model, group), group.sum(estimate)
        if group.rank != 0:
            return 0
    weights = model.get_weights(deterministic=True).detach().double().cpu().numpy()
    table = pd.DataFrame({"household": np.arange(len(weights)), "weight": weights, "active": weights > 0})
    with _writing("--out", args):
        with atomic_open(args.out, "w") as f:
            table.to_csv(f, index=False)
    errors = relative_errors(estimate, torch.as_tensor(y))
    summary = weight_summary(torch.as_tensor(weights), model.initial_weights.cpu())
    print(f"mean |relative error| {float(errors.abs().mean()):.4%} (max {float(errors.abs().max()):.4%}); "
          f"active households {summary['active']:,}/{len(weights):,}; design effect {summary['design_effect']:.2f}")
    print(f"weights: {os.path.abspath(args.out)}")
    if args.report:
        with _writing("--report", args):
            paths = report(model, M, y, args.report, target_names=names, target_groups=groups, estimate=estimate)
        print(f"report: {os.path.abspath(paths['report.md'])}")
    return 0


def _progress(choice: str):
    """fit()'s ``progress`` for ``--progress choice``: auto is a bar on a terminal, else lines."""
    if choice == "auto":
        return True if sys.stderr.isatty() else "lines"
    return FIT_PROGRESS[choice]


@contextmanager
def _writing(option: str, args: argparse.Namespace):
    """InputError for an OSError while writing ``option``'s output (a full disk, a folder made read-only during the
    fit), saying where the fit is kept."""
    try:
        yield
    except OSError as error:
        refit = " (the refit runs again)" if args.refit_epochs else ""
        kept = (f"the fit is kept in --checkpoint {args.checkpoint}: {_resuming_command(args)} writes the outputs again "
                f"without fitting again{refit}" if args.checkpoint and _holds_this_fit(args)
                else "nothing of the fit is kept (--checkpoint PATH keeps it)")
        raise InputError(f"{option}: writing {error.filename or 'it'} failed ({error.strerror or error}); {kept}") from error
