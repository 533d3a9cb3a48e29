"""pytest-benchmark: L0 penalty forward + backward (get_penalty().backward()) at 1e7 gates.

Workload definition, sizes and correctness checks: ``l0fast.bench`` (see bench/conftest.py).
"""

WORKLOAD = "l0_penalty"


def test_l0_penalty(run_bench, workload_key, impl):
    run_bench(workload_key, impl)
