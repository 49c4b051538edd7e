"""Device models: programming variation (one file each), levels, faults and drift."""

from . import additive, ideal, lognormal, measured, state_dependent  # noqa: F401  (registration)
from .base import ProgrammingModel, get_model, register, round_to_levels
from .effects import FAULT_NONE, FAULT_SA0, FAULT_SA1, apply_faults, drift, fault_codes

__all__ = ["FAULT_NONE", "FAULT_SA0", "FAULT_SA1", "ProgrammingModel", "apply_faults", "drift",
           "fault_codes", "get_model", "register", "round_to_levels"]
