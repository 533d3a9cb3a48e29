"""``torchrun --standalone --nproc-per-node 2 -m l0fast calibrate`` writes what one process writes.

The same files (the matrix as per-shard files, or one .npz every rank
slices) calibrated by one process and by two under torchrun (gloo, one
thread each): the weights agree to 1e-5 relative, with the same active
households, and rank 0 writes the report and a sharded checkpoint.
"""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from own_session import run_in_own_session

from l0fast.cli import main
from l0fast.datasets import make_survey_problem
from l0fast.distributed import write_shards
from l0fast.examples.calibrate import write_problem

HOUSEHOLDS = 900


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The input files, the job's options and the single-process weights."""
    folder = tmp_path_factory.mktemp("job")
    files = write_problem(make_survey_problem(HOUSEHOLDS, n_regions=3, seed=2), str(folder))
    write_shards(sp.load_npz(files["M.npz"]), str(folder / "shards"), 3)
    keep = np.arange(HOUSEHOLDS) % 50 == 0
    pd.DataFrame({"keep": keep}).to_csv(folder / "keep.csv", index=False)
    options = ["--targets", files["targets.csv"], "--init-weights", files["init_weights.csv"], "--keep", str(folder / "keep.csv"),
               "--epochs", "80", "--lr", "0.2", "--target-count", "200", "--refit-epochs", "20", "--log-every", "40",
               "--progress", "never"]
    assert main(["calibrate", "--matrix", files["M.npz"], "--out", str(folder / "single.csv"), *options]) == 0
    return folder, files, options, pd.read_csv(folder / "single.csv")


@pytest.mark.parametrize("source", ["shards", "one npz"])
def test_torchrun_two_processes_write_the_single_process_weights(job, source):
    folder, files, options, single = job
    matrix = str(folder / "shards") if source == "shards" else files["M.npz"]
    out, report, checkpoint = folder / f"{source}.csv", folder / f"report-{source}", folder / f"{source}.ckpt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "l0fast",
               "calibrate", "--matrix", matrix, "--out", str(out), "--report", str(report), "--checkpoint", str(checkpoint),
               *options]
    done = run_in_own_session(command, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mean |relative error|") == 1  # rank 0 alone prints the summary
    sharded = pd.read_csv(out)
    assert len(sharded) == HOUSEHOLDS
    np.testing.assert_array_equal(sharded["active"], single["active"])
    np.testing.assert_allclose(sharded["weight"], single["weight"], rtol=1e-5, atol=1e-5 * single["weight"].max())
    assert sorted(os.listdir(report)) == ["convergence.png", "errors_by_group.png", "report.md", "targets.csv", "weights.png"]
    assert sorted(p for p in os.listdir(folder) if p.startswith(f"{source}.ckpt")) == [
        f"{source}.ckpt", f"{source}.ckpt.e80.rank0-of-2", f"{source}.ckpt.e80.rank1-of-2"]


def test_more_ranks_than_shard_files_is_a_clear_error(job, capsys):
    folder, _, options, _ = job
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m", "l0fast",
               "calibrate", "--matrix", str(folder / "shards"), "--out", str(folder / "four.csv"), *options]
    done = run_in_own_session(command, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "holds 3 shard files (*.npz) but there are 4 ranks" in done.stderr
    assert not (folder / "four.csv").exists()


def test_an_error_on_one_rank_ends_the_job_at_once(job, tmp_path):
    """A NaN in the shard file only rank 1 reads: rank 1 prints the one-line error and leaves the group without
    waiting for the others (which wait for it), so the job ends in seconds, not at the group's 10-minute timeout."""
    folder, files, options, _ = job
    shards = tmp_path / "shards"
    write_shards(sp.load_npz(files["M.npz"]), str(shards), 2)
    second = sorted(shards.glob("*.npz"))[1]
    matrix = sp.load_npz(second)
    matrix.data[0] = np.nan
    sp.save_npz(second, matrix)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "l0fast",
               "calibrate", "--matrix", str(shards), "--out", str(tmp_path / "w.csv"), *options]
    done = run_in_own_session(command, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and not (tmp_path / "w.csv").exists()
    assert f"l0fast calibrate: error: {shards}: the matrix holds NaN or inf entries" in done.stderr
    assert os.path.join("l0fast", "cli") not in done.stderr, "one line per rank, no traceback through the command"
