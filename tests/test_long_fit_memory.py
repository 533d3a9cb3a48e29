"""Long fits stay flat: RSS after warm-up does not grow over 5,000 epochs, 20 chunked fits, or 15 new matrices.

Runs in a subprocess (Linux: VmRSS from /proc) so the test process's own allocations do not count.
"""

import json
import subprocess
import sys
import textwrap

GROWTH_LIMIT_MB = 20

SCRIPT = textwrap.dedent("""
    import gc, json, numpy as np, scipy.sparse as sp
    from l0fast import SparseCalibrationWeights
    from l0fast.bench.calibration import make_problem

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    M, y = make_problem(300, 30_000, 10)
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    kwargs = dict(lambda_l0=1e-6, lr=0.1, loss_type="relative")
    model.fit(M, y, epochs=250, **kwargs)
    for _ in range(2):  # warm-up: first chunked calls, the new-matrix path
        model.fit(M, y, epochs=250, reset_optimizer=False, **kwargs)
        model.fit(make_problem(300, 30_000, 10, seed=1)[0], y, epochs=5, **kwargs)
    gc.collect()
    out = {"warm": rss_mb()}
    model.fit(M, y, epochs=5000, **kwargs)
    gc.collect()
    out["after 5000 epochs"] = rss_mb()
    for _ in range(20):
        model.fit(M, y, epochs=250, reset_optimizer=False, **kwargs)
    gc.collect()
    out["after 20 chunked fits"] = rss_mb()
    for seed in range(15):
        model.fit(make_problem(300, 30_000, 10, seed=seed)[0], y, epochs=5, **kwargs)
    gc.collect()
    out["after 15 new matrices"] = rss_mb()
    out["history rows"] = len(model.history)
    print(json.dumps(out))
""")


def test_rss_stays_flat_over_long_and_chunked_fits():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    for stage in ("after 5000 epochs", "after 20 chunked fits", "after 15 new matrices"):
        assert rss[stage] - rss["warm"] < GROWTH_LIMIT_MB, (stage, rss)
