"""pytest-benchmark: HardConcrete train step (sampled forward, gates.sum() + get_penalty(), backward) at 1e5, 1e6, 1e7 gates.

Workload definition, sizes and correctness checks: ``l0fast.bench`` (see bench/conftest.py).
"""

WORKLOAD = "hard_concrete"


def test_hard_concrete(run_bench, workload_key, impl):
    run_bench(workload_key, impl)
