"""Device models: programming variation (one file each), levels, faults and drift."""

from . import additive, ideal, lognormal, measured, pcm, state_dependent  # noqa: F401  (registration)
from .base import PROGRAMMING_MODELS, ProgrammingModel, get_model, register, round_to_levels
from .drift import DRIFT_MODELS, DriftModel, drift_factor, has_drift
from .effects import FAULT_NONE, FAULT_SA0, FAULT_SA1, apply_faults, fault_codes

__all__ = ["DRIFT_MODELS", "PROGRAMMING_MODELS", "DriftModel", "FAULT_NONE", "FAULT_SA0", "FAULT_SA1",
           "ProgrammingModel", "apply_faults",
           "drift_factor", "fault_codes", "get_model", "has_drift", "register", "round_to_levels"]
