"""pytest-benchmark: SparseCalibrationWeights.fit on the readme and large problems (one call = fit(epochs=k_hi)).

Workload definition, sizes and correctness checks: ``l0fast.bench`` (see bench/conftest.py).
"""

WORKLOAD = "calibration_fit"


def test_calibration_fit(run_bench, workload_key, impl):
    run_bench(workload_key, impl)
