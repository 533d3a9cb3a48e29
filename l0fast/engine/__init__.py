"""The calibration fit engine: epochs of ``SparseCalibrationWeights.fit`` behind one interface.

``make_fit(...)`` returns the implementation for the model's device, chosen
like the ops' backends (:mod:`l0fast._capability`, ``L0FAST_BACKEND``):

- ``cpp``: :class:`~l0fast.engine.cpu.CppFit`, the fused C++ loop (whole
  epochs per call, one pass over M per epoch);
- ``triton``: :class:`~l0fast.engine.gpu.TritonFit`, a fixed sequence of
  Triton launches per epoch with no host sync (CUDA; CPU tensors under
  ``TRITON_INTERPRET=1`` with ``L0FAST_BACKEND=triton``);
- ``reference``: :class:`~l0fast.engine.reference.ReferenceFit`, the
  PyTorch loop over the ops (two passes per epoch), which the fused
  implementations are tested against (and the fallback where neither is available).

Each has ``run(epochs, finish) -> (epochs, 4)`` fp64 per-epoch statistics
(data loss, the L0 sum ``sum_h s_h p_h`` that ``lambda_l0`` multiplies (``sum p``
without household options), ``sum exp(log_weight)^2``, the epoch's ``lambda_l0``),
``lambda_l0`` (the multiplier of the next epoch: it moves only with a
``target_count``) and keeps the fit's pending
state between calls, so a fit run in chunks (progress, checkpoints) equals
one run in a single call.
"""

from __future__ import annotations

from .. import _capability
from .reference import ReferenceFit
from .state import AdamState, FitDiverged, FitOptions, FitShard, FitTargets, HouseholdOptions, next_lambda

__all__ = ["AdamState", "FitDiverged", "FitOptions", "FitShard", "FitTargets", "HouseholdOptions", "ReferenceFit",
           "engine_backend", "make_fit", "next_lambda"]


def engine_backend(device: str) -> str:
    """``"cpp"``, ``"triton"`` or ``"reference"``: the implementation of the fit loop on ``device`` ("cpu" or "cuda")."""
    choice = _capability.choose(device, has_cpp=True, has_triton=True)
    return choice if choice in ("cpp", "triton") else "reference"


def make_fit(matrix, targets: FitTargets, log_weight, log_alpha, rng_state, adam: AdamState, options: FitOptions,
             shard: FitShard | None = None):
    """The fit implementation for ``log_weight``'s device (see the module docstring); ``shard``: a sharded fit's part."""
    backend = engine_backend(log_weight.device.type)
    if backend == "cpp":
        from .cpu import CppFit

        return CppFit(matrix, targets, log_weight, log_alpha, rng_state, adam, options, shard)
    if backend == "triton":
        from .gpu import TritonFit

        return TritonFit(matrix, targets, log_weight, log_alpha, rng_state, adam, options, shard)
    if shard is not None:
        raise ValueError(f"a fit sharded over processes runs on the fused engines (cpp on CPU, triton on CUDA), not on the "
                         f"'{backend}' one: unset L0FAST_BACKEND=reference or use a CPU/CUDA device")
    return ReferenceFit(matrix, targets, log_weight, log_alpha, rng_state, adam, options)
