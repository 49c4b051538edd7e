"""Device models: programming variation (one file each), levels, faults and drift."""

from . import ideal  # noqa: F401  (registration)
from .additive import AdditiveConfig
from .base import PROGRAMMING_MODELS, ProgrammingModel, get_model, register, round_to_levels
from .drift import DRIFT_MODELS, DriftModel, drift_factor, has_drift
from .effects import FAULT_NONE, FAULT_SA0, FAULT_SA1, apply_faults, fault_codes
from .lognormal import LognormalConfig
from .measured import MeasuredConfig
from .pcm import PCMDriftConfig, PCMProgrammingConfig
from .state_dependent import StateDependentConfig

__all__ = ["DRIFT_MODELS", "PROGRAMMING_MODELS", "AdditiveConfig", "DriftModel", "FAULT_NONE", "FAULT_SA0",
           "FAULT_SA1", "LognormalConfig", "MeasuredConfig", "PCMDriftConfig", "PCMProgrammingConfig",
           "ProgrammingModel", "StateDependentConfig", "apply_faults",
           "drift_factor", "fault_codes", "get_model", "has_drift", "register", "round_to_levels"]
