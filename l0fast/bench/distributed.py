"""``l0fast bench --distributed P``: the sharded calibration fit on P processes against one process.

The problem (``large`` by default, :data:`l0fast.bench.calibration.PROBLEMS`)
is written as P per-shard files; then ``torchrun --standalone`` runs it on
1 process with P threads and on P processes with one thread each (gloo).
Each rank loads only its shard, times ``fit(epochs=k_lo)`` and
``fit(epochs=k_hi)`` on fresh models after a warm-up fit (epoch = the
difference over ``k_hi - k_lo``, per-call costs cancel) and reports its peak RSS, so the
memory split and the cost of the per-epoch exchange are visible side by
side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

EPOCHS = (2, 12)


def _rank_main(argv: list[str]) -> int:
    """One rank of a measurement (started by torchrun): prints rank 0's JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards")
    parser.add_argument("--targets")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from .. import SparseCalibrationWeights
    from ..distributed import join_from_environment, launched_by_torchrun, load_shard
    from .calibration import FIT_KWARGS

    torch.set_num_threads(args.threads)
    group = join_from_environment("cpu")[0] if launched_by_torchrun() else None
    rank, size = (0, 1) if group is None else (group.rank, group.size)
    M, offset, total = load_shard(args.shards, rank, size)
    y = np.load(args.targets)
    times = []
    for epochs in (1, *EPOCHS):  # the first, untimed, warms up (imports, first-call costs)
        model = SparseCalibrationWeights(M.shape[1], seed=0, household_offset=offset, n_features_total=total)
        start = time.perf_counter()
        model.fit(M, y, epochs=epochs, process_group=None if group is None else group.group, **FIT_KWARGS)
        times.append(time.perf_counter() - start)
    epoch_ms = 1e3 * (times[2] - times[1]) / (EPOCHS[1] - EPOCHS[0])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = [peak_mb] if group is None else group.objects(peak_mb)
    if rank == 0:
        print(json.dumps({"processes": size, "threads": args.threads, "epoch_ms": epoch_ms, "peak_mb": peaks}))
    if group is not None:
        group.close()
    return 0


def problem_size(mode: str, workloads: list[str] | None) -> str:
    """The calibration size of a ``--distributed`` run: the one ``--workload`` names, else readme (``--tiny``) or large."""
    from .calibration import PROBLEMS

    named = [size for size in PROBLEMS if any(w == size or w.endswith("/" + size) for w in workloads or ())]
    if len(named) > 1 or (workloads and not named):
        raise SystemExit(f"--distributed runs one calibration size; --workload must name one of {sorted(PROBLEMS)}, got {workloads}")
    return named[0] if named else ("readme" if mode == "tiny" else "large")


def run(processes: int, size: str = "large", log=print) -> list[dict]:
    """Rows ``{processes, threads, epoch_ms, peak_mb (per rank)}`` for 1 process x P threads and P x 1."""
    import numpy as np

    from ..distributed import write_shards
    from .calibration import PROBLEMS, make_problem

    if processes < 2:
        raise ValueError(f"--distributed needs P >= 2 processes, got {processes}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        log(f"== distributed calibration fit, {size} {PROBLEMS[size][:2]}: writing {processes} shards")
        M, y = make_problem(*PROBLEMS[size])
        write_shards(M, os.path.join(folder, "shards"), processes)
        np.save(os.path.join(folder, "y.npy"), y)
        del M
        for nproc, threads in ((1, processes), (processes, 1)):
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                       "-m", "l0fast.bench.distributed", "--shards", os.path.join(folder, "shards"),
                       "--targets", os.path.join(folder, "y.npy"), "--threads", str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if done.returncode != 0:
                raise RuntimeError(f"the {nproc}-process measurement failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            log(f"{nproc} process(es) x {threads} thread(s): epoch {r['epoch_ms']:.1f} ms, peak RSS per rank "
                + ", ".join(f"{p:.0f} MB" for p in r["peak_mb"]))
    one, many = rows
    log(f"P={processes} vs 1: epoch {many['epoch_ms'] / one['epoch_ms']:.2f}x, largest rank's peak RSS "
        f"{max(many['peak_mb']) / one['peak_mb'][0]:.2f}x")
    return rows


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1:]))
