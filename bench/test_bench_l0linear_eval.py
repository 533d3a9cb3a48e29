"""pytest-benchmark: L0Linear(784, 256) eval-mode forward under no_grad at batch 1, 32, 128 and 1024, beside nn.Linear.

Workload definition, sizes and correctness checks: ``l0fast.bench`` (see bench/conftest.py).
"""

WORKLOAD = "l0linear_eval"


def test_l0linear_eval(run_bench, workload_key, impl):
    run_bench(workload_key, impl)
