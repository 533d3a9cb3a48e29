"""l0fast custom ops (``torch.ops.l0fast.*``) and their differentiable wrappers."""

from .calibration import calibration_objective
from .gated_spmv import GatedSparseProduct, HouseholdMajorMatrix, gated_sparse_product
from .hard_concrete import hard_concrete_mean, hard_concrete_sample
from .hard_concrete_gated import hard_concrete_gated
from .l0_penalty import l0_penalty
from .philox import philox_uniform
from .registry import REGISTRY, backend_info

__all__ = [
    "REGISTRY",
    "GatedSparseProduct",
    "HouseholdMajorMatrix",
    "backend_info",
    "calibration_objective",
    "gated_sparse_product",
    "hard_concrete_gated",
    "hard_concrete_mean",
    "hard_concrete_sample",
    "l0_penalty",
    "philox_uniform",
]
