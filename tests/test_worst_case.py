"""Worst-case statistics: the exact order-statistic CI of the worst k % covers at its nominal level
(checked by Monte Carlo), an end that cannot be bounded is None, and one definition of worst-k % is used by
result.json and the HTML report."""

import json
import math

import pytest
import torch

from nvcim.evaluation.metrics import (
    AccuracyStats,
    chips_for_bound,
    kpp,
    kpp_ci,
    percentile_ci,
    percentile_coverage,
    percentile_ranks,
)
from nvcim.experiments.report import _stats

REPS = 2000  # Monte-Carlo repetitions: the coverage's standard error is sqrt(c (1 - c) / REPS) ~ 0.005


def _mc_coverage(n: int, k: float, draw, true_q: float, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    samples = draw(REPS, n, g)
    hits = 0
    for v in samples:
        lo, hi = percentile_ci(v, k)
        hits += (lo is None or lo <= true_q) and (hi is None or hi >= true_q)
    return hits / REPS


def _normal(reps, n, g):
    return torch.randn(reps, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n,k", [(100, 5), (1000, 1), (200, 5), (100, 1)])
def test_the_worst_case_ci_covers_at_its_nominal_level(n, k):
    q = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(k / 100.0, dtype=torch.float64)))
    exact = percentile_coverage(n, k)
    assert exact >= 0.95  # the ranks are chosen so that the interval is conservative
    mc = _mc_coverage(n, k, _normal, q, seed=n + int(k))
    se = math.sqrt(exact * (1 - exact) / REPS)
    assert abs(mc - exact) <= 4 * se, (mc, exact)  # Monte Carlo agrees with the binomial arithmetic
    assert mc >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / REPS)


def test_the_old_clamped_interval_undercovered_and_the_new_one_does_not():
    # 100 chips, worst 1 %: clamping the lower end to the sample minimum covered the true 1st percentile
    # only when the minimum lay below it: probability 1 - 0.99^100 = 0.634
    n, k = 100, 1
    lo, hi = percentile_ranks(n, k)
    assert lo is None and hi is not None
    assert 1 - 0.99 ** 100 == pytest.approx(0.634, abs=1e-3)
    q = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.01, dtype=torch.float64)))
    g = torch.Generator().manual_seed(5)
    v = torch.randn(REPS, n, generator=g, dtype=torch.float64).sort(dim=1).values
    clamped = ((v[:, 0] <= q) & (v[:, hi - 1] >= q)).double().mean().item()
    assert clamped < 0.7
    assert _mc_coverage(n, k, _normal, q, seed=5) >= 0.95


def test_discrete_accuracies_cover_at_least_nominally():
    # accuracies on 200 images are multiples of 1/200 with ties; order-statistic intervals stay conservative
    n, k, images, p = 300, 5, 200, 0.8
    dist = torch.distributions.Binomial(images, torch.tensor(p, dtype=torch.float64))
    cdf = torch.cumsum(dist.log_prob(torch.arange(images + 1, dtype=torch.float64)).exp(), 0)
    true_q = float(torch.nonzero(cdf >= k / 100.0)[0]) / images  # the smallest value with F >= p

    def draw(reps, n, g):
        return torch.binomial(torch.full((reps, n), float(images), dtype=torch.float64),
                              torch.full((reps, n), p, dtype=torch.float64), generator=g) / images
    assert _mc_coverage(n, k, draw, true_q, seed=3) >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / REPS)


@pytest.mark.parametrize("k", [1.0, 5.0, 0.5])
def test_chips_for_bound_is_the_fewest_that_bound_both_ends(k):
    n = chips_for_bound(k)
    assert None not in percentile_ranks(n, k) and None in percentile_ranks(n - 1, k)
    # the lower end needs (1 - p)^n <= 0.025: the chance that no chip lies below the percentile
    assert (1 - k / 100) ** n <= 0.025 < (1 - k / 100) ** (n - 1)


def test_an_unbounded_end_is_none_in_the_result_and_its_json():
    v = [float(i) for i in range(100)]
    a = AccuracyStats(v, 1.0)
    assert a.kpp_ci95[0] is None and a.kpp_ci95[1] is not None and not a.kpp_bounded
    assert a.kpp_bound_chips == 368 and "368" in a.kpp_note()
    d = json.loads(json.dumps(a.to_dict()))
    assert d["kpp_ci95"][0] is None and d["kpp_bound_chips"] == 368
    down = AccuracyStats(v, 1.0, higher_is_better=False)  # the high tail: its upper end is the open one
    assert down.kpp_ci95[1] is None and down.kpp_ci95[0] is not None
    b = AccuracyStats([float(i) for i in range(1000)], 1.0)
    assert b.kpp_bounded and b.kpp_ci95[0] <= b.kpp <= b.kpp_ci95[1] and b.kpp_note() == ""


def test_one_definition_of_the_worst_k_percent():
    v = [float(i) for i in range(100)]  # the audit's case: an order statistic 0.0 against an interpolated 0.99
    assert kpp(v, 1.0) == 0.0 and _stats(v)["kpp"] == 0.0 == AccuracyStats(v, 1.0).kpp
    assert kpp(v, 1.0, higher_is_better=False) == 99.0 == _stats(v, higher_is_better=False)["kpp"]
    w = [float(i) for i in range(1000)]
    assert kpp(w, 1.0) == 9.0 and kpp(w, 5.0) == 49.0  # rank ceil(k n / 100) from the bad end
    lo, hi = kpp_ci(w, 1.0, higher_is_better=False)
    assert lo is not None and hi is not None and lo <= kpp(w, 1.0, higher_is_better=False) <= hi
