"""pytest-benchmark suites over the workloads of ``l0fast.bench`` (the same definitions ``l0fast bench`` runs).

    pytest bench                                   # --quick sizes, all implementations
    L0FAST_BENCH_MODE=standard pytest bench -k hard_concrete
    L0FAST_BENCH_COMPILE=0 pytest bench            # without torch.compile(l0-python)

Each test builds the l0-python reference and the implementation from the same
seeded inputs, checks the implementation against the reference, warms it up,
then times ``case.step`` with ``benchmark.pedantic`` (for the calibration fit,
one call is ``fit(epochs=k_hi)``; ``l0fast bench`` reports the steady-state
epoch instead).  A module names its workload family in ``WORKLOAD``.
Needs ``pip install 'l0fast[bench]'`` (pytest-benchmark, l0-python).
"""

import importlib
import os

import pytest
import torch

from l0fast.bench.common import COMPILED, IMPLS, INSTALL_HINT, L0, CheckFailed, l0_available
from l0fast.bench.runner import workloads

MODE = os.environ.get("L0FAST_BENCH_MODE", "quick")
THREADS = int(os.environ.get("L0FAST_BENCH_THREADS", "2"))
DEVICE = os.environ.get("L0FAST_BENCH_DEVICE", "cpu")
BENCH_IMPLS = [i for i in IMPLS if i != COMPILED or os.environ.get("L0FAST_BENCH_COMPILE", "1") != "0"]


try:
    importlib.import_module("pytest_benchmark")
except ImportError:  # not the bench extra: each benchmark says so, and the other suites of the session still run

    @pytest.fixture
    def benchmark():
        pytest.fail("pytest bench needs pytest-benchmark: make bench, or pip install 'l0fast[bench]' "
                    "(pytest-benchmark, l0-python)", pytrace=False)


def pytest_generate_tests(metafunc):
    if {"workload_key", "impl"} <= set(metafunc.fixturenames):
        pairs = [(w.key, i) for w in workloads(MODE, DEVICE) if w.name == metafunc.module.WORKLOAD for i in w.impls if i in BENCH_IMPLS]
        metafunc.parametrize("workload_key,impl", pairs, ids=[f"{k.split('/', 1)[1]}-{i}" for k, i in pairs])


@pytest.fixture(scope="session", autouse=True)
def _pinned_threads():
    torch.set_num_threads(THREADS)


@pytest.fixture
def run_bench(benchmark):
    def run(key: str, impl: str) -> None:
        if not l0_available():
            pytest.skip(INSTALL_HINT)
        (w,) = [w for w in workloads(MODE, DEVICE) if w.key == key]
        w.prepare()
        if impl == COMPILED:
            torch._dynamo.reset()
        try:
            try:
                ref = w.build(L0)
                case = ref if impl == L0 else w.build(impl)
                check = "reference" if impl == L0 else w.check(ref, case)  # before any warm-up step
                case.warmup()
            except CheckFailed:
                raise
            except Exception as error:
                if impl != COMPILED:
                    raise
                pytest.xfail(f"does not compile: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            del ref
            benchmark.group = key
            benchmark.extra_info.update(workload=w.name, size=w.size, impl=impl, threads=THREADS, check=check,
                                        call=f"fit(epochs={w.k_hi})" if w.unit == "epoch" else f"one {w.unit}")
            benchmark.pedantic(case.step, rounds=w.rounds, iterations=1, warmup_rounds=0)
        finally:
            w.release()

    return run
