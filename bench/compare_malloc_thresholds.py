"""A training loop in a fresh process: glibc's default malloc thresholds vs fixed ones.

glibc gives the free space at the top of its heap back to the system once it
exceeds the trim threshold, twice the mmap threshold, which starts at 128 KiB
and grows to the largest block freed so far (at most 32 MiB).  Early in a
process both are small, and a step whose temporaries (an optimizer's) pass
that size faults their pages in again every step.  This script runs the
``sparse_mlp`` step of ``l0fast bench`` (``SparseMLP(784, 256, 10)``, Adam)
for l0fast, l0-python and the dense twin, each in a fresh process, with
glibc's defaults and with ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` set to those maxima (32 and 64 MiB), alternating
the runs; it prints the median ms per step, the page faults per step and the
ratio to the dense step of the same setting.

    python bench/compare_malloc_thresholds.py --batch 128 --repeats 3
"""

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from l0fast.bench.common import DENSE, L0FAST, MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD, REFERENCE
from l0fast.bench.layers import SparseMLPStep

FIXED = {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD)}


def child(impl: str, batch: int, steps: int, threads: int) -> None:
    """Warm up, then time ``steps`` consecutive steps; print ``ms_per_step faults_per_step``."""
    torch.set_num_threads(threads)
    workload = SparseMLPStep(batch)
    workload.prepare()
    case = workload.build(impl)
    for _ in range(50):
        case.step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        case.step()
    ms = (time.perf_counter() - start) * 1e3 / steps
    print(ms, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch, args.steps, args.threads)
    runs = {}
    for _, impl, fixed in itertools.product(range(args.repeats), (L0FAST, REFERENCE, DENSE), (False, True)):
        env = dict(os.environ, **FIXED) if fixed else {k: v for k, v in os.environ.items() if k not in FIXED}
        command = [sys.executable, __file__, "--child", impl, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--threads", str(args.threads)]
        ms, faults = map(float, subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.split())
        runs.setdefault((impl, fixed), []).append((ms, faults))
    median = {key: (statistics.median(m for m, _ in r), statistics.median(f for _, f in r)) for key, r in runs.items()}
    print(f"SparseMLP(784, 256, 10) + Adam, batch {args.batch}, {args.threads} threads, {args.steps} steps per fresh process, "
          f"median of {args.repeats}")
    print(f"{'impl':<10} {'malloc':<34} {'ms/step':>8} {'faults/step':>12} {'/ dense':>8}")
    for (impl, fixed), (ms, faults) in median.items():
        setting = "MMAP 32 MiB, TRIM 64 MiB" if fixed else "glibc default"
        print(f"{impl:<10} {setting:<34} {ms:8.3f} {faults:12.1f} {ms / median[(DENSE, fixed)][0]:8.2f}")


if __name__ == "__main__":
    main()
