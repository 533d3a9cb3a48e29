"""Exact checkpoint/resume, continued optimizer state, progress bar."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import l0fast.checkpoint as ckpt
from l0fast import SparseCalibrationWeights
from l0fast.target_count import START_LAMBDA

N_FEATURES = 500
FIT = dict(lambda_l0=0.02, lr=0.1, loss_type="relative", verbose_freq=5)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    M = sp.random(15, N_FEATURES, density=0.2, format="csr", random_state=rng)
    return M, M @ rng.uniform(0.5, 2.0, N_FEATURES)


def _state(model):
    return [t.detach().clone() for t in (model.log_weight, model.log_alpha, model.rng_state)]


def _assert_bitwise(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_a_fit_resumed_in_a_new_process_equals_one_that_never_stopped(tmp_path):
    M, y = _problem()
    whole = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=14, **FIT)
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=7, checkpoint=path, **FIT)
    out = tmp_path / "resumed.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import _problem, _state, FIT
        from l0fast import SparseCalibrationWeights
        M, y = _problem()
        model = SparseCalibrationWeights.load_checkpoint({str(path)!r})
        model.fit(M, y, epochs=14, checkpoint={str(path)!r}, resume=True, **FIT)
        torch.save(_state(model) + [model.history], {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    resumed = torch.load(out, weights_only=False)
    _assert_bitwise(_state(whole), resumed[:3])
    # the history continues too; the stopped fit also recorded its last epoch (7)
    assert [row for row in resumed[3] if row["epoch"] != 7] == whole.history
    assert ckpt.read(path)["fit"]["done"] == 14


def test_fit_calls_continue_adam_with_reset_optimizer_false():
    M, y = _problem()
    whole = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=12, **FIT)
    split = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=5, **FIT)
    split.fit(M, y, epochs=7, reset_optimizer=False, **FIT)
    _assert_bitwise(_state(whole), _state(split))
    assert split.optimizer_state.step == 12
    restarted = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=5, **FIT)
    restarted.fit(M, y, epochs=7, **FIT)  # l0's default: a fresh Adam per call
    assert restarted.optimizer_state.step == 7
    assert not torch.equal(restarted.log_weight, whole.log_weight)


def test_resume_with_a_missing_file_starts_and_checkpoints_every_n_epochs(tmp_path, monkeypatch):
    M, y = _problem()
    written = []
    write = ckpt.write_atomic
    monkeypatch.setattr(ckpt, "write_atomic", lambda state, path: written.append(state["fit"]["done"]) or write(state, path))
    path = tmp_path / "new.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=10, checkpoint=path, checkpoint_every=4, resume=True, **FIT)
    assert written == [4, 8, 10]


@pytest.mark.parametrize("change,match", [
    ("matrix", "matrix or targets differ .*matrix content"),
    ("targets", "matrix or targets differ .*targets"),
    ("lr", "fit options differ .*lr: checkpoint 0.1, now 0.2"),
    ("loss_type", "matrix or targets differ .*target loss weights and denominators \\(the loss"),
    ("seed", "model's settings differ .*seed: checkpoint 3, now 4"),
    ("init_weights", "model's settings differ .*initial weights"),
    ("dtype", "written by a torch.float32 model, this one is torch.float64; convert the model"),
])
def test_resuming_against_other_data_or_options_names_what_differs(tmp_path, change, match):
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=4, checkpoint=path, **FIT)
    kwargs = dict(FIT)
    if change == "matrix":
        M = M.copy()
        M.data[0] *= 2
    elif change == "targets":
        y = y * 1.01
    elif change == "lr":
        kwargs["lr"] = 0.2
    elif change == "loss_type":
        kwargs["loss_type"] = "mse"
    model = SparseCalibrationWeights(N_FEATURES, seed=4 if change == "seed" else 3,
                                     init_weights=2.0 if change == "init_weights" else None)
    if change == "dtype":
        model.double()
    with pytest.raises(ValueError, match=match):
        model.fit(M, y, epochs=8, checkpoint=path, resume=True, **kwargs)


HOUSEHOLD = dict(keep=np.arange(N_FEATURES) % 10 == 0, weight_bounds=(0.3, 3))


@pytest.mark.parametrize("change,match", [
    (dict(keep=np.arange(N_FEATURES) % 11 == 0), "household options: keep: checkpoint '50 of 500 records, sha256 [0-9a-f]{16}', "
                                                  "now '46 of 500 records, sha256 [0-9a-f]{16}'\\)"),
    (dict(weight_bounds=(0.3, 2)), "household options: weight_bounds: checkpoint \\(0.3, 3.0\\), now \\(0.3, 2.0\\)\\)"),
    (dict(weight_bounds=None), "household options: weight_bounds: checkpoint \\(0.3, 3.0\\), now None\\)"),
    (dict(lambda_l0=np.full(N_FEATURES, 0.02)), "household options: lambda_l0: checkpoint None, now 'an array, sha256 [0-9a-f]{16}'"),
])
def test_resuming_with_other_household_options_names_the_one_that_differs(tmp_path, change, match):
    """The fingerprint holds one digest of every per-household array; the fit's record names them as given."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=4, checkpoint=path, **HOUSEHOLD, **FIT)
    with pytest.raises(ValueError, match="the fit options differ .*" + match):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=path, resume=True, **{**FIT, **HOUSEHOLD, **change})
    resumed = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=path, resume=True, **FIT, **HOUSEHOLD)
    assert ckpt.read(path)["fit"]["done"] == 8 and resumed.epochs_trained == 8


def test_a_checkpoint_without_the_options_as_given_resumes_and_shows_their_digest(tmp_path):
    """Checkpoints written before the options as given were recorded: still resumed, and a change is refused by
    the one digest."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=4, checkpoint=path, **HOUSEHOLD, **FIT)
    state = torch.load(path, weights_only=False)
    del state["fit"]["household options as given"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="the fit options differ \\(household options: checkpoint '[0-9a-f]{64}', now '[0-9a-f]{64}'\\)"):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=path, resume=True, **{**FIT, **HOUSEHOLD, "weight_bounds": (0.3, 2)})
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=path, resume=True, **FIT, **HOUSEHOLD)
    assert ckpt.read(path)["fit"]["done"] == 8


def test_resuming_from_a_saved_model_says_it_holds_no_running_fit(tmp_path):
    """A save_checkpoint file has no fit record (data, options, epochs done): it is refused as such, not as
    'a None model' or 'the matrix differs'."""
    M, y = _problem()
    path = tmp_path / "model.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=2, **FIT).save_checkpoint(path)
    with pytest.raises(ValueError, match="holds a model \\(save_checkpoint\\), not the checkpoint of a running fit.*load_checkpoint"):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=4, checkpoint=path, resume=True, **FIT)


def test_resuming_a_sharded_checkpoint_in_one_process_names_the_process_count(tmp_path):
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    torch.save({"format": "l0fast.sharded-calibration-checkpoint/1", "ranks": 3, "done": 4, "blocks": [], "files": []}, path)
    with pytest.raises(ValueError, match="written by a fit sharded over 3 processes; resume it with as many"):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=path, resume=True, **FIT)


def test_temp_files_of_writes_killed_mid_write_go_at_the_next_write(tmp_path):
    from l0fast.atomic import atomic_open

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(done.stdout), os.getppid()
    path = tmp_path / "fit.ckpt"
    for pid in (dead, alive):
        (tmp_path / f"fit.ckpt.tmp-{pid}").write_bytes(b"half a checkpoint")
    (tmp_path / f"other.ckpt.tmp-{dead}").write_bytes(b"another file's")
    with atomic_open(path) as f:
        f.write(b"whole")
    assert sorted(os.listdir(tmp_path)) == sorted(["fit.ckpt", f"fit.ckpt.tmp-{alive}", f"other.ckpt.tmp-{dead}"])


def test_an_atomic_write_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    """The rename replaced the link with a plain file, and the file it pointed to kept the old content."""
    from l0fast.atomic import atomic_open

    (tmp_path / "store").mkdir()
    target, link = tmp_path / "store" / "weights.csv", tmp_path / "weights.csv"
    target.write_text("old\n")
    link.symlink_to(target)
    with atomic_open(link, "w") as f:
        f.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    M, y = _problem()
    model = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=3, **FIT)
    path = tmp_path / "model.ckpt"
    model.save_checkpoint(path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        model.fit(M, y, epochs=3, **FIT).save_checkpoint(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.ckpt"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_load_checkpoint_restores_the_model(dtype, tmp_path):
    """...in its dtype: a .double() model came back as float32, with other predictions."""
    M, y = _problem()
    model = SparseCalibrationWeights(N_FEATURES, seed=3, beta=0.5, use_gates=True).to(dtype).fit(M, y, epochs=6, **FIT)
    model.save_checkpoint(tmp_path / "model.ckpt")
    loaded = SparseCalibrationWeights.load_checkpoint(tmp_path / "model.ckpt")
    assert loaded.beta == 0.5 and loaded.epochs_trained == 6 and loaded.history == model.history
    assert loaded.log_weight.dtype == loaded.log_alpha.dtype == loaded.initial_weights.dtype == dtype
    _assert_bitwise(_state(model), _state(loaded))
    assert torch.equal(loaded.predict(M), model.predict(M))
    assert loaded.optimizer_state.step == 6


@pytest.mark.parametrize("kwargs,match", [
    ({"checkpoint_every": 5}, "need checkpoint="),
    ({"resume": True}, "need checkpoint="),
    ({"checkpoint": "/no/such/folder/x.ckpt"}, "does not exist"),
    ({"checkpoint": "x.ckpt", "checkpoint_every": 0}, "checkpoint_every must be a positive int"),
    ({"progress": "yes"}, "progress must be"),
])
def test_bad_checkpoint_and_progress_arguments(kwargs, match):
    M, y = _problem()
    with pytest.raises(ValueError, match=match):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=2, **kwargs)


def test_a_folder_as_checkpoint_is_refused_before_the_fit(tmp_path, monkeypatch):
    """It raised IsADirectoryError when the first checkpoint was written: at the end of the fit without checkpoint_every."""
    M, y = _problem()
    monkeypatch.setattr("l0fast.calibration.run_epochs", lambda *a, **k: pytest.fail("fitted before checking checkpoint="))
    with pytest.raises(ValueError, match="a folder; pass a file path"):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=2, checkpoint=str(tmp_path))


def test_save_and_load_checkpoint_name_a_folder_or_a_missing_folder(tmp_path):
    """They raised IsADirectoryError / FileNotFoundError on the temp file's name ('x.ckpt.tmp-1234')."""
    M, y = _problem()
    model = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=2)
    with pytest.raises(ValueError, match=r"path='.*': a folder; pass a file path"):
        model.save_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"path='.*nodir/x\.ckpt': its folder does not exist; create it first"):
        model.save_checkpoint(tmp_path / "nodir" / "x.ckpt")
    (tmp_path / "afile").write_text("kept\n")
    with pytest.raises(ValueError, match=r"path='.*afile/x\.ckpt': its folder .*afile is a file; pass a path in a folder"):
        model.save_checkpoint(tmp_path / "afile" / "x.ckpt")
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file; pass the file"):
        SparseCalibrationWeights.load_checkpoint(tmp_path)
    assert os.listdir(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "kept\n"


def test_a_checkpoint_in_a_folder_that_cannot_be_written_is_refused_before_the_fit(tmp_path, monkeypatch):
    """It raised PermissionError at the first checkpoint write, after the epochs before it (root may write anywhere,
    so the folder is made unwritable for os.access)."""
    M, y = _problem()
    monkeypatch.setattr("l0fast.calibration.run_epochs", lambda *a, **k: pytest.fail("fitted before checking checkpoint="))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(tmp_path) else real_access(path, mode))
    with pytest.raises(ValueError, match=r"checkpoint='.*fit\.ckpt': its folder is not writable; write it elsewhere"):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=2, checkpoint=str(tmp_path / "fit.ckpt"))


@pytest.mark.parametrize("damage", ["one flipped bit", "cut short"])
def test_a_damaged_checkpoint_is_refused_not_loaded(tmp_path, damage):
    """torch.load does not check the CRC-32 its zip records carry: a flipped bit loaded as another weight (or a NaN
    that fit then blamed on lr), silently; a file cut short gave a bare 'OSError: [Errno 22] Invalid argument'."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=3, checkpoint=str(path), **FIT)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:  # the largest record: the tensors' bytes
        record = max(archive.infolist(), key=lambda info: info.file_size)
        start = record.header_offset + 30 + len(record.filename) + len(record.extra)
    if damage == "one flipped bit":
        data[start + record.file_size // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    for load in (lambda: SparseCalibrationWeights.load_checkpoint(path),
                 lambda: SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=5, checkpoint=str(path), resume=True, **FIT)):
        with pytest.raises(ValueError, match="is not a readable checkpoint .*; delete it to start afresh"):
            load()


def test_progress_bar(capsys):
    M, y = _problem()
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=10, progress="always", **FIT)
    err = capsys.readouterr().err
    assert "10/10" in err and "epoch" in err and "active=" in err
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=10, progress=True, **FIT)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_a_checkpoint_written_mid_fit_resumes_to_the_same_weights(tmp_path):
    """checkpoint_every saves inside a fit; resuming from one of those equals the fit that went on."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    whole = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=13, checkpoint=path, checkpoint_every=4, **FIT)
    mid = tmp_path / "mid.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=13, checkpoint=mid, checkpoint_every=4, **FIT)
    state = ckpt.read(mid)
    assert state["fit"]["done"] == 13
    # rewind: the checkpoint after epoch 8, as a process killed before epoch 12 would have left it
    partial = tmp_path / "partial.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=8, checkpoint=partial, checkpoint_every=4, **FIT)
    saved = ckpt.read(partial)
    saved["fit"]["epochs"] = 13  # what the killed 13-epoch fit had written at epoch 8
    ckpt.write_atomic(saved, partial)
    resumed = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=13, checkpoint=partial, resume=True, **FIT)
    _assert_bitwise(_state(whole), _state(resumed))


@pytest.mark.parametrize("options", [
    {"target_count": 120},
    {"target_count": 120, "keep": np.arange(N_FEATURES) % 25 == 0, "weight_bounds": (0.3, 3.0)},
])
def test_a_target_count_fit_killed_mid_fit_resumes_to_the_same_weights(tmp_path, monkeypatch, options):
    """The multiplier that target_count moves is in each checkpoint: a checkpoint held the one from before the
    fit (None), so a resumed fit restarted the dual ascent and ended elsewhere."""
    import l0fast.fit_loop as fit_loop

    M, y = _problem()
    kwargs = {k: v for k, v in FIT.items() if k != "lambda_l0"} | options | {"epochs": 16, "checkpoint_every": 4}
    whole = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=tmp_path / "whole.ckpt", **kwargs)
    save = fit_loop.save_checkpoint

    def killed_after_epoch_8(model, run, stop):
        save(model, run, stop)
        if stop == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_loop, "save_checkpoint", killed_after_epoch_8)
    path = tmp_path / "killed.ckpt"
    with pytest.raises(KeyboardInterrupt):
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=path, **kwargs)
    monkeypatch.setattr(fit_loop, "save_checkpoint", save)
    assert ckpt.read(path)["lambda_l0"] not in (None, START_LAMBDA), "the multiplier should have moved by epoch 8"
    resumed = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=path, resume=True, **kwargs)
    _assert_bitwise(_state(whole), _state(resumed))
    assert resumed.lambda_l0_ == whole.lambda_l0_ and resumed.history == whole.history
    kept = int(options["keep"].sum()) if "keep" in options else 0
    assert resumed.get_active_weights()["count"] == 120 + kept


@pytest.mark.parametrize("options", [
    {"target_count": 120},
    {"keep": np.arange(N_FEATURES) % 25 == 0, "weight_bounds": (0.3, 3.0)},
    {"target_count": 120, "keep": np.arange(N_FEATURES) % 25 == 0, "weight_bounds": (0.3, 3.0)},
])
def test_a_finished_fit_is_what_its_checkpoint_its_state_dict_and_its_last_history_row_hold(tmp_path, options):
    """The end of a fit (the snap to target_count, the projection into the bounds, kept records opened) comes after
    the last epoch: load_checkpoint gave the model before it (597 of 600 records open instead of 120), a
    state_dict lost the kept records (their gates were held open by the keep mask alone), and the last history
    row counted the records before the snap. A resume of the finished fit gives the same bits."""
    M, y = _problem()
    kwargs = {k: v for k, v in FIT.items() if k != "lambda_l0" or "target_count" not in options} | options | {"epochs": 12}
    path = tmp_path / "fit.ckpt"
    model = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=path, **kwargs)
    weights = model.get_weights(deterministic=True)
    _assert_bitwise([SparseCalibrationWeights.load_checkpoint(path).get_weights(deterministic=True)], [weights])
    fresh = SparseCalibrationWeights(N_FEATURES, seed=3)
    fresh.load_state_dict(model.state_dict(), strict=True)
    _assert_bitwise([fresh.get_weights(deterministic=True)], [weights])
    assert model.history[-1]["active"] == int((weights > 0).sum())
    resumed = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=path, resume=True, **kwargs)
    _assert_bitwise(_state(resumed), _state(model))
    longer = kwargs | {"epochs": 20}  # a finished fit extended goes on from before its end, as one longer fit
    extended = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, checkpoint=path, resume=True, **longer)
    straight = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, **longer)
    _assert_bitwise(_state(extended), _state(straight))
    assert [row for row in extended.history if row["epoch"] != 12] == straight.history  # plus the first call's last row


def test_loading_a_checkpoint_leaves_torch_s_generator_where_it_was(tmp_path):
    """A checkpoint of a seed=None model rebuilt it, drawing a seed and a jitter from torch's generator, so a script
    seeded with torch.manual_seed drew other numbers after a load than without it."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES).fit(M, y, epochs=2, checkpoint=str(path), **FIT)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    SparseCalibrationWeights.load_checkpoint(path)
    assert torch.equal(torch.rand(3), expected)


class _CtrlCWhilePickled:
    """Sends this process SIGINT while torch.save pickles it: a Ctrl-C in the middle of a checkpoint write."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return int, (7,)


def test_ctrl_c_during_a_checkpoint_write_stops_after_it_with_the_file_whole(tmp_path):
    """The KeyboardInterrupt comes when the write is done (torch.save's zip writer, interrupted, raised its own
    'unexpected pos' RuntimeError in its place, so l0fast calibrate printed a traceback, not its Ctrl-C line)."""
    path = tmp_path / "fit.ckpt"
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomic({"weights": torch.arange(100_000.0), "interrupt": _CtrlCWhilePickled()}, path)
    state = torch.load(path, weights_only=False)
    assert state["interrupt"] == 7 and torch.equal(state["weights"], torch.arange(100_000.0))
    assert os.listdir(tmp_path) == ["fit.ckpt"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("seconds,saved_at", [(None, [12]), (0, [5, 10, 12]), (3600, [12])])
def test_checkpoint_seconds_saves_at_the_history_rows_once_due(tmp_path, monkeypatch, seconds, saved_at):
    """``checkpoint_seconds=S``: a checkpoint at the first history row S seconds after the last (0: at every row)."""
    import l0fast.fit_loop as fit_loop

    M, y = _problem()
    stops, save = [], fit_loop.save_checkpoint
    monkeypatch.setattr(fit_loop, "save_checkpoint", lambda model, run, stop, *a: (stops.append(stop), save(model, run, stop, *a)))
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=12, checkpoint=tmp_path / "c.ckpt",
                                                     checkpoint_seconds=seconds, **FIT)
    assert stops == saved_at


def test_epochs_run_in_pieces_give_the_same_fit(monkeypatch):
    """Chunks are run in pieces of ~PIECE_SECONDS (so Ctrl-C and the bar need not wait for a chunk); pieces of one
    epoch each give the same bits."""
    import l0fast.fit_loop as fit_loop

    M, y = _problem()
    whole = SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=13, **FIT)
    monkeypatch.setattr(fit_loop, "PIECE_SECONDS", 0.0)  # one epoch per engine call
    calls = []
    pieces = SparseCalibrationWeights(N_FEATURES, seed=3)
    original = fit_loop._pieces
    monkeypatch.setattr(fit_loop, "_pieces", lambda engine, *a: original(_Counted(engine, calls), *a))
    pieces.fit(M, y, epochs=13, **FIT)
    assert calls == [1] * 13
    assert torch.equal(pieces.log_weight, whole.log_weight) and torch.equal(pieces.log_alpha, whole.log_alpha)
    assert pieces.history == whole.history


class _Counted:
    """An engine whose ``run`` calls are recorded (their epoch counts) in ``calls``."""

    def __init__(self, engine, calls):
        self.engine, self.calls = engine, calls

    def run(self, epochs, finish):
        self.calls.append(epochs)
        return self.engine.run(epochs, finish)


@pytest.mark.parametrize("change, named", [
    ({"loss_type": "mse"}, "target loss weights and denominators (the loss, its relative floor, the groups): loss_type: "
                           "checkpoint 'relative', now 'mse'"),
    ({"target_groups": np.arange(15) % 2}, "the groups): target_groups: checkpoint None, now '2 groups, sha256 "),
    ({"y_row": 3}, "targets: row 3 (first of 1 that differ): checkpoint "),
])
def test_resuming_with_another_loss_or_target_names_it(tmp_path, change, named):
    """The error showed two SHA-256 digests of the loss weights, or of the targets."""
    M, y = _problem()
    path = tmp_path / "fit.ckpt"
    SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=5, checkpoint=path, **FIT)
    change = dict(change)
    if "y_row" in change:
        y = np.array(y, dtype=np.float64)
        y[change.pop("y_row")] += 1
    with pytest.raises(ValueError) as error:
        SparseCalibrationWeights(N_FEATURES, seed=3).fit(M, y, epochs=9, checkpoint=path, resume=True, **{**FIT, **change})
    assert named in str(error.value) and not re.search("[0-9a-f]{64}", str(error.value)), error.value
