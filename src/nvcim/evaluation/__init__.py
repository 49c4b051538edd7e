"""Monte-Carlo evaluation over chips and its statistics."""

from .evaluate import EvalResult, evaluate
from .metrics import AccuracyStats, kpp, percentile_ci

__all__ = ["AccuracyStats", "EvalResult", "evaluate", "kpp", "percentile_ci"]
