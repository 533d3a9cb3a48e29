"""Run a function on P local processes joined in a gloo group, for the distributed tests.

The group meets through a file store in a fresh temp folder (no ports to
collide), every collective times out after ``collective_timeout`` seconds,
and the whole run after ``timeout``: a hang fails the test, it does not
stall CI.  A rank that dies without reporting is reported as dead.  ``fn(rank, size, *args)`` must be a module-level function
(the processes are spawned) returning something picklable.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_errors
import tempfile
import time
import traceback
from datetime import timedelta

def _worker(fn, rank: int, size: int, store: str, results, args, threads: int, collective_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=collective_timeout))
    try:
        # plain pickle: tensors travel as bytes, not as shared memory the exiting process would take along
        results.put((rank, True, pickle.dumps(fn(rank, size, *args))))
    except BaseException as error:  # noqa: BLE001 (reported to the test, whatever it is)
        results.put((rank, False, f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, size: int, *args, timeout: float = 180.0, threads: int = 1,
              collective_timeout: float = 60.0) -> list[tuple[bool, object]]:
    """``[(ok, value or error text)]`` of ``fn`` on each of ``size`` ranks, in rank order; AssertionError on a hang."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        procs = [ctx.Process(target=_worker, args=(fn, r, size, store, results, args, threads, collective_timeout))
                 for r in range(size)]
        for p in procs:
            p.start()
        outcome: dict[int, tuple[bool, object]] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(outcome) < size and time.monotonic() < deadline:
                try:
                    rank, ok, value = results.get(timeout=0.5)
                    outcome[rank] = (ok, pickle.loads(value) if ok else value)
                except queue_errors.Empty:
                    if all(r in outcome or not p.is_alive() for r, p in enumerate(procs)) and results.empty():
                        break
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
    missing = [r for r in range(size) if r not in outcome]
    if missing and all(p.exitcode == 0 for p in procs):
        raise AssertionError(f"ranks {missing} reported nothing within {timeout} s (a hang)")
    return [outcome.get(r, (False, f"rank {r} died (exit code {procs[r].exitcode})")) for r in range(size)]


def values_of(outcome: list[tuple[bool, object]]) -> list:
    """The ranks' return values; AssertionError with every failing rank's error otherwise."""
    failed = [f"rank {r}: {value}" for r, (ok, value) in enumerate(outcome) if not ok]
    assert not failed, "\n".join(failed)
    return [value for _, value in outcome]
