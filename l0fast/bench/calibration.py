"""Calibration workload: the steady-state epoch of ``SparseCalibrationWeights.fit``.

Problems (seeded, built in memory):

- ``readme``: ``scipy.sparse.random(200, 10_000, density=0.3)``, the l0-python README shape;
- ``large``:  4,000 targets x 1,000,000 households, 20 distinct random targets per
  household (2x10^7 non-zeros), integer entries 1-4;
- ``xl``:     20,000 x 5,000,000, 20 per household (10^8 non-zeros); l0-python only with ``--full``.

``y = M @ w_true`` with half the households active.  Every implementation fits
with ``lambda_l0=1e-6, lambda_l2=1e-8, lr=0.15, loss_type="relative"`` from the
same initial state (``seed=0``).

**Steady-state epoch time.**  One round times ``fit(epochs=k_lo)`` and
``fit(epochs=k_hi)`` on the same model and reports
``(t_hi - t_lo) / (k_hi - k_lo)`` (for l0fast ``k_hi`` is moved to
``k_lo + L0FAST_SPAN (k_hi - k_lo)``, its epochs being ~100x shorter): the per-call costs (matrix conversion or
cache lookup, optimizer construction, target set-up) cancel, and what is left
is one epoch (forward, loss, backward, Adam step).  One warm-up ``fit(epochs=1)``
per implementation fills the matrix caches and compiles.

**Floor.**  An epoch must read every non-zero of ``M`` at least once: the
floor is one streaming read of its int32 row indices and fp32 values
(8 bytes per non-zero), timed in the same process (``measure_floor``).
l0fast's fused epoch reads each non-zero once (6 bytes with 16-bit rows),
plus 64 bytes per household (parameters, Adam moments and gate read and
written, offsets).

**Checks** (before timing): the deterministic ``predict`` at the initial state
matches l0-python; and with ``use_gates=False`` (no noise, so the fits are
comparable) two epochs of ``fit`` (one above 10^5 households) give matching predictions, which exercises
the backward product and the optimizer path.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse as sp

from .common import COMPILED, GATED_IMPLS, L0FAST, Case, CheckFailed, Workload, close, compile_fn, library

L0FAST_SPAN = 10  # l0fast's epoch difference spans this many times more epochs
FIT_KWARGS = dict(lambda_l0=1e-6, lambda_l2=1e-8, lr=0.15, loss_type="relative")

# name: (targets, households, per-household non-zeros or density)
PROBLEMS = {
    "readme": (200, 10_000, 0.3),
    "large": (4_000, 1_000_000, 20),
    "xl": (20_000, 5_000_000, 20),
}


def random_rows_per_column(n_rows: int, n_cols: int, per_col: int, rng: np.random.Generator) -> sp.csr_matrix:
    """CSR ``(n_rows, n_cols)`` float32 with exactly ``per_col`` distinct random rows per column, entries 1-4."""
    if per_col > n_rows:
        raise ValueError(f"per_col={per_col} > n_rows={n_rows}")
    rows = rng.integers(0, n_rows, size=(n_cols, per_col), dtype=np.int32)
    while True:  # redraw the few columns that drew a row twice
        rows.sort(axis=1)
        dup = (np.diff(rows, axis=1) == 0).any(axis=1)
        if not dup.any():
            break
        rows[dup] = rng.integers(0, n_rows, size=(int(dup.sum()), per_col), dtype=np.int32)
    data = rng.integers(1, 5, size=n_cols * per_col).astype(np.float32)
    indptr = np.arange(0, n_cols * per_col + 1, per_col, dtype=np.int64)
    return sp.csc_matrix((data, rows.ravel(), indptr), shape=(n_rows, n_cols)).tocsr()


def make_problem(n_targets: int, n_households: int, spec: float, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, y)``: ``spec`` < 1 is a density (``scipy.sparse.random``), else non-zeros per household."""
    rng = np.random.default_rng(seed)
    if spec < 1:
        M = sp.random(n_targets, n_households, density=spec, format="csr", random_state=seed, dtype=np.float32)
    else:
        M = random_rows_per_column(n_targets, n_households, int(spec), rng)
    w_true = rng.uniform(0.5, 2.0, n_households) * (rng.random(n_households) < 0.5)
    return M, np.asarray(M @ w_true, dtype=np.float64)


class CalibrationEpoch(Workload):
    name = "calibration_fit"
    unit = "epoch"

    def __init__(self, size: str, device: str = "cpu", rounds: int = 3, epochs: tuple[int, int] = (1, 6), shape: tuple | None = None,
                 impls: tuple[str, ...] = GATED_IMPLS):
        super().__init__(device)
        self.impls = impls
        self.size, self.rounds = size, rounds
        self.k_lo, self.k_hi = epochs
        if not 0 < self.k_lo < self.k_hi:
            raise ValueError(f"epochs must be (k_lo, k_hi) with 0 < k_lo < k_hi, got {epochs}")
        self.shape = shape or PROBLEMS[size]
        self.M = self.y = None

    def describe(self) -> str:
        q, n, spec = self.shape
        nnz = f"{self.M.nnz:,} nnz" if self.M is not None else (f"density {spec}" if spec < 1 else f"{spec}/household")
        k_fast = self.k_lo + L0FAST_SPAN * (self.k_hi - self.k_lo)
        return f"{self.key} ({q:,} x {n:,}, {nnz}; epoch = fit({self.k_hi}) - fit({self.k_lo}), l0fast fit({k_fast}) - fit({self.k_lo}))"

    def prepare(self) -> None:
        self.M, self.y = make_problem(*self.shape)

    def release(self) -> None:
        self.M = self.y = None

    def _model(self, impl: str, **kw):
        return library(impl).SparseCalibrationWeights(self.M.shape[1], seed=0, device=self.device, **kw)

    def build(self, impl: str) -> Case:
        model = self._model(impl)
        if impl == COMPILED:
            # fill l0's matrix cache eagerly first (fit() does the same before its loop): dynamo
            # cannot trace l0's numpy-to-COO conversion (torch.LongTensor of an int32 array)
            model._convert_sparse_to_torch(self.M)
            model.forward = compile_fn(model.forward)  # fit() and predict() call self.forward
        M, y = self.M, self.y

        def fit(epochs: int):
            return lambda: model.fit(M, y, epochs=epochs, **FIT_KWARGS)

        # l0fast's epoch is ~100x shorter: a longer difference keeps per-call noise out of it
        k_hi = self.k_lo + (self.k_hi - self.k_lo) * (L0FAST_SPAN if impl == L0FAST else 1)
        fit_lo, fit_hi, span = fit(self.k_lo), fit(k_hi), k_hi - self.k_lo

        def measure(timer) -> float:
            return (timer(fit_hi) - timer(fit_lo)) / span

        return Case(impl, fit_hi, {"model": model}, measure=measure, warm=fit(1))

    def check(self, ref: Case, case: Case) -> str:
        scale = float(np.abs(self.y).max()) + 1.0
        p_ref, p = ref.state["model"].predict(self.M), case.state["model"].predict(self.M)
        err = close(p, p_ref, "predict at init", rtol=1e-4, atol=1e-5 * scale)
        msg = f"predict max|diff| {err:.2g}"
        if case.impl == L0FAST:
            fitted, epochs = [], 2 if self.M.shape[1] <= 100_000 else 1
            for impl in (ref.impl, case.impl):
                model = self._model(impl, use_gates=False)
                model.fit(self.M, self.y, epochs=epochs, **FIT_KWARGS)
                fitted.append(model.predict(self.M))
                del model
            err = close(fitted[1], fitted[0], f"use_gates=False fit({epochs}) predict", rtol=2e-3, atol=1e-4 * scale)
            msg += f"; ungated fit({epochs}) max|diff| {err:.2g}"
        if not torch.isfinite(p).all():
            raise CheckFailed("predict not finite")
        return msg

    def measure_floor(self, timer) -> float:
        """Fastest of 5 streaming reads of M's int32 row indices and fp32 values, in ms.

        A read is ``amax`` of each array: a vectorized reduction at memory speed
        (torch's int32 ``sum`` widens to int64 and runs ~20x slower).
        """
        indices = torch.from_numpy(self.M.indices.astype(np.int32, copy=False)).to(self.device)
        values = torch.from_numpy(self.M.data.astype(np.float32, copy=False)).to(self.device)
        return min(timer(lambda: (indices.amax(), values.amax())) for _ in range(5))
