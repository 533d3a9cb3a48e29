"""``l0fast calibrate`` end to end: outputs, report, kill -9 and resume, bad files."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from l0fast.cli import main
from l0fast.datasets import make_survey_problem
from l0fast.examples.calibrate import write_problem


@pytest.fixture
def files(tmp_path):
    return write_problem(make_survey_problem(800, n_regions=3, seed=0), str(tmp_path))


def _command(files, tmp_path, *extra):
    return ["calibrate", "--matrix", files["M.npz"], "--targets", files["targets.csv"], "--init-weights",
            files["init_weights.csv"], "--out", str(tmp_path / "weights.csv"), "--progress", "never", *extra]


def test_calibrate_keeps_records_and_bounds_weights(files, tmp_path):
    keep = np.zeros(800, dtype=bool)
    keep[:40] = True
    pd.DataFrame({"keep": keep}).to_csv(tmp_path / "keep.csv", index=False)
    args = _command(files, tmp_path, "--epochs", "60", "--lr", "0.2", "--target-count", "100", "--keep", str(tmp_path / "keep.csv"),
                    "--weight-bounds", "0.5", "3", "--refit-epochs", "100")  # the refit keeps the bounds too
    assert main(args) == 0
    weights = pd.read_csv(tmp_path / "weights.csv")
    w0 = pd.read_csv(files["init_weights.csv"])["weight"].to_numpy()
    active = weights["active"].to_numpy()
    assert active[keep].all() and active[~keep].sum() == 100
    ratio = weights["weight"].to_numpy()[active] / w0[active]
    assert (ratio >= 0.5).all() and (ratio <= 3).all()


@pytest.mark.parametrize("spelled", [("1", "0"), ("true", "false"), ("TRUE", "False"), (" True", "0"), ("1.0", "false")])
def test_keep_reads_one_and_zero_or_true_and_false_in_any_mix(tmp_path, spelled):
    """pandas reads a column of True/False as bools, but a mix (True beside 0, TRUE beside false) as text."""
    from l0fast.cli.calibrate import MatrixFile, _read_keep

    keep = np.arange(9) % 3 == 0
    path = tmp_path / "keep.csv"
    path.write_text("keep\n" + "".join(f"{spelled[0] if k else spelled[1]}\n" for k in keep))
    assert np.array_equal(_read_keep(str(path), MatrixFile("M.npz", 4, 9)), keep)


def test_calibrate_writes_weights_and_a_report(files, tmp_path, capsys):
    assert main(_command(files, tmp_path, "--epochs", "30", "--lr", "0.2", "--report", str(tmp_path / "report"),
                         "--refit-epochs", "10")) == 0
    out = capsys.readouterr().out
    assert "mean |relative error|" in out and str(tmp_path / "weights.csv") in out
    weights = pd.read_csv(tmp_path / "weights.csv")
    assert list(weights.columns) == ["household", "weight", "active"] and len(weights) == 800
    assert ((weights["weight"] > 0) == weights["active"]).all()
    report = tmp_path / "report"
    assert sorted(os.listdir(report)) == ["convergence.png", "errors_by_group.png", "report.md", "targets.csv", "weights.png"]
    for png in ("convergence.png", "errors_by_group.png", "weights.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    targets = pd.read_csv(report / "targets.csv")
    assert len(targets) == len(pd.read_csv(files["targets.csv"])) and targets["group"].str.contains("national").any()
    assert "Kish effective sample size" in (report / "report.md").read_text()


# `python -m l0fast ...` that kills itself with SIGKILL while it writes its second checkpoint, after the temp file:
# a kill at a fixed point, not one raced against the run (on 2 busy cores, the run could finish first).
KILLED_WHILE_WRITING = """
import os, runpy, signal, sys
import l0fast.checkpoint as checkpoint
write_atomic, writes = checkpoint.write_atomic, []
def write_then_die(state, path):
    writes.append(path)
    if len(writes) == 2:
        with open(f"{path}.tmp-{os.getpid()}", "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    write_atomic(state, path)
checkpoint.write_atomic = write_then_die
runpy.run_module("l0fast", run_name="__main__", alter_sys=True)
"""


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    files = write_problem(make_survey_problem(20_000, n_regions=5, seed=1), str(tmp_path))
    ckpt, epochs = str(tmp_path / "fit.ckpt"), "3000"
    options = ["--epochs", epochs, "--target-count", "5000"]  # make run's job: the multiplier is resumed too
    args = _command(files, tmp_path, *options, "--checkpoint", ckpt, "--checkpoint-every", "20")
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    import l0fast.checkpoint as checkpoint

    assert checkpoint.read(ckpt)["fit"]["done"] == 20  # the first checkpoint, whole; the second's temp file left
    assert not os.path.exists(tmp_path / "weights.csv")
    orphans = [name for name in os.listdir(tmp_path) if name.startswith("fit.ckpt.tmp-")]
    assert len(orphans) == 1
    resumed = subprocess.run([sys.executable, "-m", "l0fast", *args, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not os.path.exists(tmp_path / orphans[0])  # removed by the next write
    first = pd.read_csv(tmp_path / "weights.csv")
    os.remove(ckpt)
    assert main(_command(files, tmp_path, *options, "--out", str(tmp_path / "whole.csv"))) == 0
    whole = pd.read_csv(tmp_path / "whole.csv")
    assert np.array_equal(first["weight"].to_numpy(), whole["weight"].to_numpy())


def _bad(files, tmp_path, case):
    """Write one bad input; returns (args, the file the message must name)."""
    targets = pd.read_csv(files["targets.csv"])
    path = str(tmp_path / "bad.csv")
    if case == "targets without value":
        targets.drop(columns="value").to_csv(path, index=False)
        return ["--targets", path], path
    if case == "targets too short":
        targets.iloc[:-1].to_csv(path, index=False)
        return ["--targets", path], path
    if case == "targets with NaN":
        targets.loc[3, "value"] = np.nan
        targets.to_csv(path, index=False)
        return ["--targets", path], (f"{path}: column 'value' is empty, NaN or inf on 1 rows (first: data row 4); fill them "
                                     "(a row dropped here must be dropped from the matrix too: one row per target)")
    if case == "matrix of another shape":
        npz = str(tmp_path / "bad.npz")
        sp.save_npz(npz, sp.random(5, 800, density=0.1, format="csr"))
        return ["--matrix", npz], npz
    if case == "matrix not npz":
        return ["--matrix", files["targets.csv"]], files["targets.csv"]
    if case == "negative init weights":
        pd.DataFrame({"weight": -np.ones(800)}).to_csv(path, index=False)
        return ["--init-weights", path], path
    if case == "keep not 0/1":
        pd.DataFrame({"keep": np.full(800, 2)}).to_csv(path, index=False)
        return ["--keep", path], f"{path}: column 'keep' must hold 1/0 (or true/false) only; data row 1 holds 2"
    if case == "keep a word":
        pd.DataFrame({"keep": ["no"] * 3 + ["yes"] + [0] * 796}).to_csv(path, index=False)
        return ["--keep", path], (f"{path}: column 'keep' has entries that are not numbers: 4 (first: data row 1, 'no'); "
                                  "write them as 1/0 or true/false")
    if case == "targets with a word":
        targets["value"] = targets["value"].astype(object)
        targets.loc[2, "value"] = "12 000"
        targets.to_csv(path, index=False)
        return ["--targets", path], (f"{path}: column 'value' has entries that are not numbers: 1 (first: data row 3, "
                                     "'12 000'); write them as numbers")
    if case == "init weights too long":
        pd.DataFrame({"weight": np.ones(801)}).to_csv(path, index=False)
        return ["--init-weights", path], path
    if case == "zero init weights":
        pd.DataFrame({"weight": np.arange(800) % 7}).to_csv(path, index=False)
        return ["--init-weights", path], path
    if case == "targets with a blank group":
        targets["group"] = targets["group"].astype(object)
        targets.loc[2, "group"] = None
        targets.to_csv(path, index=False)
        return ["--targets", path], path
    if case == "targets missing":
        return ["--targets", str(tmp_path / "nope.csv")], f"--targets {tmp_path / 'nope.csv'}: no such file"
    if case == "targets a folder":
        return ["--targets", str(tmp_path)], f"--targets {tmp_path}: a folder; pass the CSV file"
    if case == "init weights a folder":
        return ["--init-weights", str(tmp_path)], f"--init-weights {tmp_path}: a folder; pass the CSV file"
    if case == "matrix a folder without shards":
        os.makedirs(tmp_path / "empty")
        return ["--matrix", str(tmp_path / "empty")], f"--matrix {tmp_path / 'empty'}: a folder without shard files (*.npz)"
    if case == "unreadable checkpoint":
        ckpt = str(tmp_path / "empty.ckpt")
        open(ckpt, "w").close()
        return ["--checkpoint", ckpt, "--resume", None], ckpt
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["targets without value", "targets too short", "targets with NaN", "matrix of another shape",
                                  "matrix not npz", "negative init weights", "init weights too long", "keep not 0/1",
                                  "keep a word", "targets with a word",
                                  "zero init weights", "targets with a blank group", "unreadable checkpoint",
                                  "targets missing", "targets a folder", "init weights a folder",
                                  "matrix a folder without shards"])
def test_a_bad_file_is_one_line_exit_2_and_nothing_is_overwritten(files, tmp_path, capsys, case):
    out = tmp_path / "weights.csv"
    out.write_text("earlier results\n")
    args, named = _bad(files, tmp_path, case)
    command = _command(files, tmp_path, "--epochs", "5")
    for flag, value in zip(args[::2], args[1::2]):  # value None: a flag without a value
        if flag in command:
            command[command.index(flag) + 1] = value
        else:
            command += [flag] if value is None else [flag, value]
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("l0fast calibrate: error: ") and named in err
    assert out.read_text() == "earlier results\n"


def test_resuming_with_fewer_epochs_than_done_names_the_option(files, tmp_path, capsys):
    ckpt = str(tmp_path / "fit.ckpt")
    assert main(_command(files, tmp_path, "--epochs", "6", "--checkpoint", ckpt)) == 0
    assert main(_command(files, tmp_path, "--epochs", "4", "--checkpoint", ckpt, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("has 6 epochs done, more than --epochs 4; pass --epochs 6 or more"), err


@pytest.mark.parametrize("option,named", [
    (["--device", "cuda:7"], "--device cuda:7"),  # no such GPU here, nor on CI
    (["--device", "meta"], "--device meta"),
    (["--device", "gpu"], "--device gpu"),
    (["--seed", "-1"], "--seed"),
    (["--weight-bounds", "2", "1"], "--weight-bounds"),
    (["--weight-bounds", "0", "0"], "--weight-bounds 0.0 0.0: need 0 <= LO <= HI and HI > 0"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
    (["--epochs", "0"], "--epochs"),
    (["--target-count", "0"], "--target-count must be a positive number of records, got 0"),
    # refused by fit, named as options: fit's argument names read --lr, --loss relative, households=800, ...
    (["--lr", "-1"], "--lr must be"),
    (["--relative-floor", "5"], "--relative-floor only applies to --loss capped_relative, got --loss relative"),
    (["--loss", "capped_relative"], "--loss capped_relative needs --relative-floor > 0 (e.g. --relative-floor 1.0)"),
    (["--target-count", "900"], "--target-count must be an int in [1, households=800], got 900"),
    (["--target-count", "100", "--lambda-l0", "0.5"], "--lambda-l0 and --target-count exclude each other"),
    (["--report", "FILE"], "a file, not a folder"),
    (["--checkpoint", "OUT"], "--checkpoint OUT is --out"),
    (["--out", "TARGETS"], "--out TARGETS is the --targets file"),
    (["--report", "DIR_OF_TARGETS"], "--report's targets.csv DIR_OF_TARGETS/targets.csv is the --targets file"),
    (["--out", "DIR"], "--out DIR: a folder"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint PATH"),
    (["--restart"], "--restart needs --checkpoint PATH"),
])
def test_a_bad_option_is_one_line_exit_2_and_nothing_is_overwritten(files, tmp_path, capsys, option, named):
    """Each a line naming the option (--device and --seed raised a traceback from the model's constructor)."""
    out = tmp_path / "weights.csv"
    out.write_text("earlier results\n")
    (tmp_path / "FILE").write_text("")
    paths = {"FILE": str(tmp_path / "FILE"), "OUT": str(out), "TARGETS": files["targets.csv"], "DIR": str(tmp_path),
             "DIR_OF_TARGETS": os.path.dirname(files["targets.csv"])}
    placeholders = re.compile(r"\b(" + "|".join(sorted(paths, key=len, reverse=True)) + r")\b")
    option, named = [paths.get(o, o) for o in option], placeholders.sub(lambda m: paths[m.group(1)], named)
    assert main(_command(files, tmp_path, "--epochs", "5", *option)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("l0fast calibrate: error: ") and named in err
    assert out.read_text() == "earlier results\n"


def test_the_built_in_example_keeps_its_count_and_bounds(tmp_path, capsys):
    """make run's job, smaller: exactly the target count, every kept weight within the bounds of its design weight."""
    from l0fast.examples.calibrate import main as example

    assert example(["--dir", str(tmp_path), "--households", "2000", "--target-count", "500", "--epochs", "150",
                    "--refit-epochs", "30", "--weight-bounds", "0.2", "5"]) == 0
    assert "mean |relative error|" in capsys.readouterr().out
    weights = pd.read_csv(tmp_path / "weights.csv")
    w0 = pd.read_csv(tmp_path / "init_weights.csv")["weight"].to_numpy()
    ratio = weights["weight"].to_numpy()[weights["active"]] / w0[weights["active"]]
    assert weights["active"].sum() == 500 and (ratio >= 0.2).all() and (ratio <= 5).all()
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "fit.ckpt").is_file()


def test_resume_refuses_other_design_weights_or_seed_naming_them(files, tmp_path, capsys):
    """The checkpoint's design weights and seed would be restored over the new ones: an error instead. The
    message keeps the checkpoint's path as written (a file named lr.ckpt stays lr.ckpt)."""
    ckpt = str(tmp_path / "lr.ckpt")
    assert main(_command(files, tmp_path, "--epochs", "10", "--checkpoint", ckpt)) == 0
    other = str(tmp_path / "other_weights.csv")
    pd.DataFrame({"weight": pd.read_csv(files["init_weights.csv"])["weight"] * 1.5}).to_csv(other, index=False)
    capsys.readouterr()
    for change, named in ((["--init-weights", other], "initial weights"), (["--seed", "5"], "--seed: checkpoint 0, now 5")):
        command = _command(files, tmp_path, "--epochs", "20", "--checkpoint", ckpt, "--resume")
        if change[0] in command:
            command[command.index(change[0]) + 1] = change[1]
        else:
            command += change
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"cannot resume from {ckpt}: the model's settings differ" in err and named in err


def test_resume_refuses_other_weight_bounds_or_keep_naming_them(files, tmp_path, capsys):
    ckpt = str(tmp_path / "fit.ckpt")
    keep = tmp_path / "keep.csv"
    keep.write_text("keep\n" + "1\n" * 40 + "0\n" * 760)
    options = ["--epochs", "10", "--checkpoint", ckpt, "--weight-bounds", "0.5", "3", "--keep", str(keep)]
    assert main(_command(files, tmp_path, *options)) == 0
    other_keep = tmp_path / "other_keep.csv"
    other_keep.write_text("keep\n" + "1\n" * 41 + "0\n" * 759)
    capsys.readouterr()
    for change, named in ((["--weight-bounds", "0.5", "2"], "household options: --weight-bounds: checkpoint (0.5, 3.0), now (0.5, 2.0))"),
                          (["--keep", str(other_keep)], "household options: --keep: checkpoint '40 of 800 records, sha256 ")):
        command = _command(files, tmp_path, *options, "--resume")
        command[command.index(change[0]) + 1:command.index(change[0]) + len(change)] = change[1:]
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"cannot resume from {ckpt}: the fit options differ" in err and named in err, err


def test_a_block_sparse_matrix_file_gives_the_csr_weights_and_the_summary_shows_the_design_effect(files, tmp_path, capsys):
    bsr = str(tmp_path / "M_bsr.npz")
    sp.save_npz(bsr, sp.load_npz(files["M.npz"]).tobsr())
    assert main(_command(files, tmp_path, "--epochs", "10")) == 0
    csr_weights = pd.read_csv(tmp_path / "weights.csv")
    command = _command(files, tmp_path, "--epochs", "10")
    command[command.index("--matrix") + 1] = bsr
    assert main(command) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "weights.csv"), csr_weights)
    assert re.search(r"design effect \d+\.\d\d\n", capsys.readouterr().out)


def test_the_example_resumes_on_its_own_files_and_refuses_other_options(tmp_path, capsys):
    """--resume fits the files the checkpoint was written for: with other problem options it stops before
    rewriting them (they would no longer match the folder's weights and report)."""
    from l0fast.examples.calibrate import main as example

    small = ["--dir", str(tmp_path), "--regions", "2", "--epochs", "40", "--target-count", "200", "--refit-epochs", "5"]
    assert example([*small, "--households", "1000"]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("M.npz", "targets.csv", "init_weights.csv")}
    assert example([*small, "--households", "1200", "--resume"]) == 2
    assert "holds the problem of other --households" in capsys.readouterr().err
    assert before == {name: (tmp_path / name).read_bytes() for name in before}
    assert example([*small, "--households", "1000", "--resume", "--epochs", "60"]) == 0
    assert before == {name: (tmp_path / name).read_bytes() for name in before}


def test_ctrl_c_in_a_long_chunk_before_any_checkpoint_stops_and_says_the_run_starts_over(tmp_path):
    """The engine ran whole --log-every chunks: Ctrl-C waited for the chunk (~10 min here, 170 us an epoch); and the
    message promised a resume from a checkpoint that had not been written."""
    files = write_problem(make_survey_problem(5000, n_regions=2, seed=1), str(tmp_path))
    ckpt = str(tmp_path / "fit.ckpt")
    command = [sys.executable, "-m", "l0fast", *_command(files, tmp_path, "--epochs", "10000000", "--log-every", "5000000",
                                                         "--checkpoint", ckpt, "--resume", "--progress", "lines")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("no checkpoint at")  # the fit has started
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == (f"l0fast calibrate: interrupted; no checkpoint of this run was written yet ({ckpt}): the same command starts "
                           "over (--checkpoint-every or --checkpoint-minutes write them sooner)")


def test_ctrl_c_stops_with_130_and_says_how_to_resume(tmp_path):
    files = write_problem(make_survey_problem(5000, n_regions=2, seed=1), str(tmp_path))
    ckpt = str(tmp_path / "fit.ckpt")
    command = [sys.executable, "-m", "l0fast", *_command(files, tmp_path, "--epochs", "100000", "--checkpoint", ckpt,
                                                         "--checkpoint-every", "20")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(ckpt) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == f"l0fast calibrate: interrupted; the fit resumes from its last checkpoint with the same command and --resume ({ckpt})"
    assert not os.path.exists(tmp_path / "weights.csv")


def test_an_existing_checkpoint_needs_resume_or_restart(files, tmp_path, capsys):
    """A run without --resume wrote over the checkpoint of an interrupted one: its epochs were lost, silently."""
    ckpt = tmp_path / "fit.ckpt"
    assert main(_command(files, tmp_path, "--epochs", "6", "--checkpoint", str(ckpt))) == 0
    saved = ckpt.read_bytes()
    capsys.readouterr()
    assert main(_command(files, tmp_path, "--epochs", "3", "--checkpoint", str(ckpt))) == 2
    assert capsys.readouterr().err.strip() == (f"l0fast calibrate: error: --checkpoint {ckpt} exists: add --resume to continue "
                                               "the fit saved there, or --restart to start a new one that replaces it")
    assert ckpt.read_bytes() == saved
    assert main(_command(files, tmp_path, "--epochs", "3", "--checkpoint", str(ckpt), "--restart")) == 0
    assert ckpt.read_bytes() != saved
    with pytest.raises(SystemExit) as stop:
        main(_command(files, tmp_path, "--epochs", "3", "--checkpoint", str(ckpt), "--restart", "--resume"))
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_no_terminal_say_where_a_resume_starts(files, tmp_path, capsys):
    """--progress auto printed nothing to a log file; a resume did not say whether it found a checkpoint."""
    ckpt = str(tmp_path / "fit.ckpt")
    command = _command(files, tmp_path, "--checkpoint", ckpt, "--target-count", "100", "--refit-epochs", "10", "--log-every", "10",
                       "--progress", "auto", "--lr", "0.2")
    assert main(command + ["--epochs", "20", "--resume"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"no checkpoint at {ckpt} to resume: starting a new fit"
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 10/20", "epoch 20/20", "epoch 20/20 (final weights)",
                                                          "refit epoch 10/10"]
    assert lines[3].endswith("active 100") and "mean |relative error|" in lines[3]
    assert main(command + ["--epochs", "30", "--resume"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"resuming {ckpt} at epoch 20 of 30" and lines[1].startswith("epoch 30/30:")
    assert main(command + ["--epochs", "30", "--resume", "--progress", "never"]) == 0
    assert capsys.readouterr().err == ""


def test_an_output_that_cannot_be_written_after_the_fit_is_one_line_naming_the_checkpoint(files, tmp_path, capsys, monkeypatch):
    """A full disk (or a folder made read-only during the fit) ended the run with a traceback."""
    import errno
    import importlib

    def disk_full(model, M, y, folder, **options):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, "targets.csv"))

    monkeypatch.setattr(importlib.import_module("l0fast.report"), "report", disk_full)  # l0fast.report is also the function
    ckpt, report = tmp_path / "fit.ckpt", tmp_path / "report"
    assert main(_command(files, tmp_path, "--epochs", "5", "--checkpoint", str(ckpt), "--report", str(report))) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"l0fast calibrate: error: --report: writing {report / 'targets.csv'} failed (No space left on device); the "
                   f"fit is kept in --checkpoint {ckpt}: the same command and --resume writes the outputs again without fitting again")
    assert ckpt.exists()


def test_an_existing_report_folder_is_checked_itself_before_the_fit(files, tmp_path, capsys, monkeypatch):
    """Its parent was checked: a read-only report folder failed after the fit (root, here, may write anywhere)."""
    report = tmp_path / "report"
    report.mkdir()
    access = os.access
    monkeypatch.setattr("l0fast.output_paths.os.access", lambda path, mode: path != str(report) and access(path, mode))
    monkeypatch.setattr("l0fast.cli.calibrate.calibrate", lambda *a, **k: pytest.fail("fitted before checking --report"))
    assert main(_command(files, tmp_path, "--epochs", "5", "--report", str(report))) == 2
    assert f"--report's report.md {report / 'report.md'}: its folder is not writable" in capsys.readouterr().err


def test_a_report_without_matplotlib_is_refused_before_the_fit(files, tmp_path, capsys, monkeypatch):
    """It fitted first, then stopped with a traceback and exit 1, leaving a report folder with targets.csv alone."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr("l0fast.cli.calibrate.calibrate", lambda *a, **k: pytest.fail("fitted before checking --report"))
    report = tmp_path / "report"
    assert main(_command(files, tmp_path, "--epochs", "5", "--report", str(report))) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"l0fast calibrate: error: --report {report}: the report's plots need matplotlib: pip install 'matplotlib>=3.5'"
    assert not report.exists()


@pytest.mark.parametrize("option,named", [
    (["--households", "0"], "argument --households: must be an int >= 1, got 0"),
    (["--regions", "-2"], "argument --regions: must be an int >= 1, got -2"),
    (["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    (["--refit-epochs", "-1"], "argument --refit-epochs: must be an int >= 0, got -1"),
    (["--dir", "FILE"], "--dir FILE: a file; pass a folder"),
])
def test_the_built_in_example_names_a_bad_option_and_writes_nothing(tmp_path, capsys, option, named):
    """--households 0 raised a traceback naming n_households; --dir FILE raised FileExistsError."""
    from l0fast.examples.calibrate import main as example

    (tmp_path / "FILE").write_text("kept\n")
    option, named = [o.replace("FILE", str(tmp_path / "FILE")) for o in option], named.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(SystemExit) as exit_:
        example(["--dir", str(tmp_path / "run"), *option])
    assert exit_.value.code == 2 and named in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["FILE"] and (tmp_path / "FILE").read_text() == "kept\n"


def test_the_built_in_example_without_matplotlib_writes_nothing(tmp_path, capsys, monkeypatch):
    """It wrote its input files, then the CLI refused --report (the example always asks for one)."""
    import sys

    from l0fast.examples.calibrate import main as example

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(SystemExit) as exit_:
        example(["--dir", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "the report's plots need matplotlib" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_world_size_without_torchrun_s_other_variables_is_one_line(files, tmp_path, capsys, monkeypatch):
    """A leftover WORLD_SIZE (or another launcher) ended in torch's traceback about RANK."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(_command(files, tmp_path, "--epochs", "5")) == 2
    assert capsys.readouterr().err.strip() == (
        "l0fast calibrate: error: WORLD_SIZE=2 asks for a run over several processes, but RANK, MASTER_ADDR, MASTER_PORT are "
        "not set: start it with torchrun (which sets them), or unset WORLD_SIZE to run one process")


def test_resuming_with_another_loss_names_the_option(files, tmp_path, capsys):
    """It read 'the matrix or targets differ (target loss weights and denominators ...: checkpoint '31cacff7...'"."""
    ckpt = str(tmp_path / "fit.ckpt")
    assert main(_command(files, tmp_path, "--epochs", "4", "--checkpoint", ckpt)) == 0
    assert main(_command(files, tmp_path, "--epochs", "8", "--checkpoint", ckpt, "--resume", "--loss", "mse")) == 2
    assert "the groups): --loss: checkpoint 'relative', now 'mse')" in capsys.readouterr().err


def test_after_restart_the_replaced_fit_s_checkpoint_is_not_offered_for_resuming(tmp_path):
    """Interrupted before its first checkpoint, a --restart run offered the replaced fit's checkpoint, and a command
    with both --restart and --resume, which argparse refuses."""
    import argparse

    from l0fast.cli.calibrate import _resume_hint

    ckpt = tmp_path / "fit.ckpt"
    ckpt.write_text("the replaced fit's")
    os.utime(ckpt, (time.time() - 60, time.time() - 60))
    args = argparse.Namespace(checkpoint=str(ckpt), resume=False, restart=True, started=time.time())
    assert _resume_hint(args).startswith(f"; no checkpoint of this run was written yet ({ckpt})")
    os.utime(ckpt)  # written by this run
    assert _resume_hint(args) == (f"; the fit resumes from its last checkpoint with the same command with --resume in place "
                                  f"of --restart ({ckpt})")
    args.resume, args.restart = True, False
    os.utime(ckpt, (time.time() - 60, time.time() - 60))  # the fit this run resumed
    assert _resume_hint(args) == f"; the fit resumes from its last checkpoint with the same command ({ckpt})"


def test_an_output_link_into_a_missing_folder_is_refused_before_the_fit(files, tmp_path, capsys, monkeypatch):
    """The write follows the link: its target's folder is the one that must exist (the fit ran, then failed)."""
    link = tmp_path / "fit.ckpt"
    link.symlink_to(tmp_path / "gone" / "fit.ckpt")
    monkeypatch.setattr("l0fast.cli.calibrate.calibrate", lambda *a, **k: pytest.fail("fitted before checking --checkpoint"))
    assert main(_command(files, tmp_path, "--epochs", "5", "--checkpoint", str(link))) == 2
    assert f"--checkpoint {link}: its folder does not exist" in capsys.readouterr().err


def test_dtype_float64_fits_where_float32_diverges_and_the_advice_names_the_option(files, tmp_path, capsys):
    """Targets of ~1e15 with --loss mse overflow float32's gradients at the first step: the error's advice is this
    command's option (it said ``model.double()``), and the option fits."""
    targets = pd.read_csv(files["targets.csv"])
    targets["value"] *= 1e12
    big = str(tmp_path / "big_targets.csv")
    targets.to_csv(big, index=False)
    command = _command(files, tmp_path, "--loss", "mse", "--epochs", "30")
    command[command.index(files["targets.csv"])] = big
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "or fit in float64 (--dtype float64)" in err and "double()" not in err
    assert main(command + ["--dtype", "float64"]) == 0
    assert np.isfinite(pd.read_csv(tmp_path / "weights.csv")["weight"]).all()


def test_resuming_in_another_dtype_or_from_a_saved_model_gives_the_command_s_advice(files, tmp_path, capsys):
    import l0fast as l0

    ckpt = str(tmp_path / "fit.ckpt")
    assert main(_command(files, tmp_path, "--epochs", "4", "--checkpoint", ckpt, "--dtype", "float64")) == 0
    assert main(_command(files, tmp_path, "--epochs", "8", "--checkpoint", ckpt, "--resume")) == 2
    err = capsys.readouterr().err
    assert "written by a torch.float64 model, this one is torch.float32; pass the --dtype it was written with" in err
    assert main(_command(files, tmp_path, "--epochs", "8", "--checkpoint", ckpt, "--resume", "--dtype", "float64")) == 0
    saved = str(tmp_path / "model.pt")
    l0.SparseCalibrationWeights(800, seed=0).save_checkpoint(saved)
    capsys.readouterr()
    assert main(_command(files, tmp_path, "--epochs", "8", "--checkpoint", saved, "--resume")) == 2
    err = capsys.readouterr().err
    assert "not the checkpoint of a running fit (--checkpoint); give another --checkpoint, or --restart to replace it" in err
    assert "load_checkpoint" not in err and "fit(" not in err


def test_a_transposed_matrix_is_named_as_such(files, tmp_path, capsys):
    """A households x targets matrix: the targets file's rows are the matrix's columns, and the error says to save
    M.T (it said only that the counts differ).  Python's fit says the same of M."""
    import l0fast as l0

    M = sp.load_npz(files["M.npz"])
    flipped = str(tmp_path / "M_T.npz")
    sp.save_npz(flipped, M.T.tocsr())
    command = _command(files, tmp_path)
    command[command.index(files["M.npz"])] = flipped
    assert main(command) == 2
    targets = M.shape[0]
    assert (f"{targets} rows but the matrix {flipped} has 800 targets; give one row per target, in the matrix's order; "
            f"{targets} is its number of households: the matrix must be targets x households (save M.T in its place)"
            in capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"M has \d+ columns but the model has n_features=800; pass a \(n_targets, 800\) "
                                         r"matrix \(M\.T: its 800 rows are the households\)"):
        l0.SparseCalibrationWeights(800, seed=0).fit(M.T.tocsr(), np.ones(targets), epochs=1)
