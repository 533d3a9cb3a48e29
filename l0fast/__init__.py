"""l0fast: L0 regularization on fused kernels, a drop-in for ``l0-python`` (``import l0fast as l0``)."""

__version__ = "0.1.0"

from .calibration import SparseCalibrationWeights
from .distributions import HardConcrete
from .gates import FeatureGate, HybridGate, L0Gate, SampleGate
from .layers import InputDtypeError, InputShapeError, L0Conv2d, L0DepthwiseConv2d, L0Linear, SparseMLP, prune_model
from .ops import backend_info
from .penalties import (
    PenaltyTracker,
    TemperatureScheduler,
    compute_l0_penalty,
    compute_l0l2_penalty,
    compute_l2_penalty,
    get_active_parameter_count,
    get_sparsity_stats,
    update_temperatures,
)
from .recompute import checkpoint_context
from .report import report
from .rng import load_rng_state_dict, reseed_rng_state, rng_state_dict
from .sparse import SparseL0Linear

__all__ = [
    "HardConcrete",
    "L0Linear",
    "L0Conv2d",
    "L0DepthwiseConv2d",
    "SparseMLP",
    "prune_model",
    "L0Gate",
    "SampleGate",
    "FeatureGate",
    "HybridGate",
    "compute_l0_penalty",
    "compute_l2_penalty",
    "compute_l0l2_penalty",
    "get_sparsity_stats",
    "get_active_parameter_count",
    "TemperatureScheduler",
    "update_temperatures",
    "PenaltyTracker",
    "SparseL0Linear",
    "SparseCalibrationWeights",
    "backend_info",
    "rng_state_dict",
    "load_rng_state_dict",
    "reseed_rng_state",
    "checkpoint_context",
    "InputDtypeError",
    "InputShapeError",
    "report",
]
