"""Monte-Carlo evaluation over chips, the metrics chips are scored on, and their statistics."""

from .evaluate import EvalResult, evaluate
from .metrics import AccuracyStats, kpp, percentile_ci
from .task_metrics import Metric, from_callable, get_metric

__all__ = ["AccuracyStats", "EvalResult", "Metric", "evaluate", "from_callable", "get_metric", "kpp",
           "percentile_ci"]
