"""pytest-benchmark: SparseMLP 784-256-10 train step (cross-entropy + L0 loss, backward, Adam) at batch 128 and 1024.

Workload definition, sizes and correctness checks: ``l0fast.bench`` (see bench/conftest.py).
"""

WORKLOAD = "sparse_mlp"


def test_sparse_mlp(run_bench, workload_key, impl):
    run_bench(workload_key, impl)
