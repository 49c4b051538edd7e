"""Statistics of a metric over chips: mean, spread, worst case (KPP) and confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def kpp(per_chip: Tensor, k: float) -> float:
    """k-th percentile accuracy over chips (the order statistic of rank ceil(k/100 n), i.e. 'worst k %')."""
    v = per_chip.double().sort().values
    rank = max(1, math.ceil(k / 100.0 * v.numel()))
    return float(v[rank - 1])


def _binom_cdf(r: int, n: int, p: float) -> float:
    if r < 0:
        return 0.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if r >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
                                 + (n - i) * lq) for i in range(0, min(r, n) + 1)))


def percentile_ci(per_chip: Tensor, k: float, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the k-th percentile from order statistics (binomial ranks).

    Ranks are clamped to [1, n]: with few chips and small k the lower end is the sample minimum, and the
    interval is then wider than nominal on that side (the data cannot say more).
    """
    v = per_chip.double().sort().values
    n, p, a = v.numel(), k / 100.0, (1 - level) / 2
    lo = max([r for r in range(1, n + 1) if _binom_cdf(r - 1, n, p) <= a] or [1])
    hi = min([r for r in range(1, n + 1) if _binom_cdf(r - 1, n, p) >= 1 - a] or [n])
    return float(v[lo - 1]), float(v[hi - 1])


@dataclass
class AccuracyStats:
    """Per-chip values of a metric (accuracies are fractions in [0, 1]) and their summary. ``kpp`` is the
    worst k %: the k-th percentile when higher is better, the (100 - k)-th when lower is (perplexity, error)."""

    per_chip: list[float]
    kpp_k: float = 1.0
    higher_is_better: bool = True
    mean: float = field(init=False)
    std: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)
    kpp: float = field(init=False)
    ci95: tuple[float, float] = field(init=False)
    kpp_ci95: tuple[float, float] = field(init=False)
    percentiles: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        t = torch.tensor(self.per_chip, dtype=torch.float64)
        n = t.numel()
        self.mean = float(t.mean())
        self.std = float(t.std(unbiased=True)) if n > 1 else 0.0
        self.min, self.max = float(t.min()), float(t.max())
        half = 1.96 * self.std / math.sqrt(n)
        self.ci95 = (self.mean - half, self.mean + half)
        if self.higher_is_better:
            self.kpp, self.kpp_ci95 = kpp(t, self.kpp_k), percentile_ci(t, self.kpp_k)
        else:  # the right tail: the worst k % of -v, negated back
            lo, hi = percentile_ci(-t, self.kpp_k)
            self.kpp, self.kpp_ci95 = -kpp(-t, self.kpp_k), (-hi, -lo)
        self.percentiles = {str(k): kpp(t, k) for k in (1, 5, 50)}

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "kpp": self.kpp,
                "kpp_k": self.kpp_k, "higher_is_better": self.higher_is_better, "ci95": list(self.ci95),
                "kpp_ci95": list(self.kpp_ci95),
                "percentiles": self.percentiles, "per_chip": self.per_chip}
