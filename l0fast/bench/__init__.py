"""Benchmark suite behind ``l0fast bench``: workloads (one module per family) and the runner.

    l0fast bench --quick --json out.json --plot out.png

See :mod:`l0fast.bench.runner` for what is measured and how.
"""

from .common import COMPILED, IMPLS, L0, L0FAST, Case, CheckFailed, Timer, Workload
from .runner import run, workloads

__all__ = ["run", "workloads", "Workload", "Case", "CheckFailed", "Timer", "IMPLS", "L0FAST", "L0", "COMPILED"]
