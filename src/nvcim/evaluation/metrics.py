"""Statistics of a metric over chips: mean, spread, worst case (KPP) and confidence intervals.

One definition of the worst k % is used everywhere (result.json, the store, the HTML report, the plots):
the order statistic of rank ``ceil(k/100 n)`` from the bad end. Its confidence interval is the exact
distribution-free one from order statistics (Hahn & Meeker, *Statistical Intervals*, 1991, sec. 5.2): for a
sample of n, ``P(X_(l) <= xi_p <= X_(u)) = F(u-1) - F(l-1)`` with F the Bin(n, p) CDF, whatever the
distribution (at least that for discrete values such as accuracies). An end that no order statistic can
give at the stated level is unbounded: it is reported as ``None``, with the number of chips a bound needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def kpp_rank(n: int, k: float) -> int:
    """The 1-based rank from the bad end of the worst-k % order statistic among ``n`` chips."""
    return min(n, max(1, math.ceil(k / 100.0 * n - 1e-9)))


def kpp(per_chip: Tensor | list[float], k: float, higher_is_better: bool = True) -> float:
    """The worst k % of chips: the order statistic of rank ceil(k/100 n) from the bad end (the lowest values
    when higher is better, the highest when lower is, e.g. perplexity)."""
    v = torch.as_tensor(per_chip, dtype=torch.float64).flatten().sort().values
    if v.numel() == 0:
        return math.nan
    r = kpp_rank(v.numel(), k)
    return float(v[r - 1] if higher_is_better else v[v.numel() - r])


def binom_cdf_table(n: int, p: float) -> list[float]:
    """[F(-1), F(0), ..., F(n)] of Binomial(n, p), in O(n): ``table[r + 1] = P(B <= r)``."""
    if p <= 0 or p >= 1:
        return [0.0] + [1.0 if (p <= 0 or r >= n) else 0.0 for r in range(n + 1)]
    lp, lq, c, out, acc = math.log(p), math.log1p(-p), math.lgamma(n + 1), [0.0], 0.0
    for i in range(n + 1):
        acc += math.exp(c - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        out.append(min(1.0, acc))
    out[-1] = 1.0
    return out


def percentile_ranks(n: int, k: float, level: float = 0.95) -> tuple[int | None, int | None]:
    """1-based ranks (ascending) of the equal-tailed distribution-free CI of the k-th percentile, each end
    covering with probability >= 1 - (1 - level)/2; ``None`` where no order statistic of n can."""
    a = (1 - level) / 2
    cdf = binom_cdf_table(n, k / 100.0)  # cdf[r] = F(r - 1)
    lows = [r for r in range(1, n + 1) if cdf[r] <= a]          # P(X_(r) > xi_p) = F(r - 1) <= a
    highs = [r for r in range(1, n + 1) if 1 - cdf[r] <= a]     # P(X_(r) < xi_p) = 1 - F(r - 1) <= a
    return (max(lows) if lows else None), (min(highs) if highs else None)


def percentile_coverage(n: int, k: float, level: float = 0.95) -> float:
    """The exact coverage of :func:`percentile_ci` for a continuous distribution (an unbounded end covers
    always); for discrete values the coverage is at least this."""
    lo, hi = percentile_ranks(n, k, level)
    cdf = binom_cdf_table(n, k / 100.0)  # cdf[r] = F(r - 1)
    return (cdf[hi] if hi is not None else 1.0) - (cdf[lo] if lo is not None else 0.0)


def chips_for_bound(k: float, level: float = 0.95) -> int:
    """The fewest chips for which both ends of the k-th percentile's CI are bounded at ``level``."""
    p, a = k / 100.0, (1 - level) / 2
    small = min(p, 1 - p)  # the end nearer the tail needs (1 - small)^n <= a
    n = max(1, math.ceil(math.log(a) / math.log1p(-small)) - 2) if 0 < small < 1 else 1
    while None in percentile_ranks(n, k, level):
        n += 1
    return n


def percentile_ci(per_chip: Tensor | list[float], k: float, level: float = 0.95
                  ) -> tuple[float | None, float | None]:
    """Distribution-free CI of the k-th percentile from order statistics (ascending values). An end that
    the sample cannot bound at ``level`` is ``None`` (unbounded), never the sample extreme."""
    v = torch.as_tensor(per_chip, dtype=torch.float64).flatten().sort().values
    lo, hi = percentile_ranks(v.numel(), k, level)
    return (None if lo is None else float(v[lo - 1])), (None if hi is None else float(v[hi - 1]))


def kpp_ci(per_chip: Tensor | list[float], k: float, higher_is_better: bool = True, level: float = 0.95
           ) -> tuple[float | None, float | None]:
    """CI (low, high) of the worst k %: the k-th percentile, or the (100 - k)-th when lower is better."""
    if higher_is_better:
        return percentile_ci(per_chip, k, level)
    lo, hi = percentile_ci(-torch.as_tensor(per_chip, dtype=torch.float64), k, level)
    return (None if hi is None else -hi), (None if lo is None else -lo)


def fmt_interval(ci: tuple[float | None, float | None], fmt: Any = "{:.4g}".format) -> str:
    """'[a, b]' with an unbounded end written as -inf / +inf."""
    return f"[{'-inf' if ci[0] is None else fmt(ci[0])}, {'+inf' if ci[1] is None else fmt(ci[1])}]"


@dataclass
class AccuracyStats:
    """Per-chip values of a metric (accuracies are fractions in [0, 1]) and their summary. ``kpp`` is the
    worst k %: the k-th percentile when higher is better, the (100 - k)-th when lower is (perplexity, error).
    ``kpp_ci95`` is its exact 95 % interval; an end the chips cannot bound is ``None``, and
    ``kpp_bound_chips`` says how many chips a two-sided bound needs."""

    per_chip: list[float]
    kpp_k: float = 1.0
    higher_is_better: bool = True
    mean: float = field(init=False)
    std: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)
    kpp: float = field(init=False)
    ci95: tuple[float, float] = field(init=False)
    kpp_ci95: tuple[float | None, float | None] = field(init=False)
    kpp_bound_chips: int = field(init=False)
    percentiles: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        t = torch.tensor(self.per_chip, dtype=torch.float64)
        n = t.numel()
        self.mean = float(t.mean())
        self.std = float(t.std(unbiased=True)) if n > 1 else 0.0
        self.min, self.max = float(t.min()), float(t.max())
        half = 1.96 * self.std / math.sqrt(n)
        self.ci95 = (self.mean - half, self.mean + half)
        self.kpp = kpp(t, self.kpp_k, self.higher_is_better)
        self.kpp_ci95 = kpp_ci(t, self.kpp_k, self.higher_is_better)
        self.kpp_bound_chips = chips_for_bound(self.kpp_k)
        self.percentiles = {str(k): kpp(t, k) for k in (1, 5, 50)}

    @property
    def kpp_bounded(self) -> bool:
        return None not in self.kpp_ci95

    def kpp_note(self) -> str:
        """A sentence for a summary when the worst-k % interval is unbounded on a side."""
        if self.kpp_bounded:
            return ""
        return (f"the 95 % CI of the worst {self.kpp_k:g} % is unbounded on one side with "
                f"{len(self.per_chip)} chips; a two-sided bound needs >= {self.kpp_bound_chips}")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "kpp": self.kpp,
                "kpp_k": self.kpp_k, "higher_is_better": self.higher_is_better, "ci95": list(self.ci95),
                "kpp_ci95": list(self.kpp_ci95), "kpp_bound_chips": self.kpp_bound_chips,
                "percentiles": self.percentiles, "per_chip": self.per_chip}
