"""The counter-based generator against the distributions it claims (tolerances from the sample size)."""

import math

import pytest
import torch

from nvcim import arith
from nvcim.chip import rng

N = 1 << 21


def keys(n: int = N, seed: int = 0) -> torch.Tensor:
    return rng.element_keys(rng.chip_keys(rng.key("test", seed), torch.arange(1)), n, (n,))[0]


def test_log_unit_matches_the_float64_log():  # nvcim.arith.log_unit, also reached as rng.log_unit
    u = torch.cat([(torch.arange(1, 1 << 16, dtype=torch.float32) * 2.0**-16),  # a grid over (0, 1)
                   torch.tensor([2.0**-24, 2.0**-23, 0.5 * 2.0**-23, 1.0 - 2.0**-24, 1.0])])
    ref = torch.log(u.double())
    err = (rng.log_unit(u).double() - ref).abs()
    far = ref.abs() > 1e-3
    assert float((err[far] / ref[far].abs()).max()) < 2e-7  # about one float32 ulp (measured 8e-8)
    assert float(err[~far].max()) < 2e-7  # near u = 1 (|log u| < 1e-3) the error is absolute
    assert float(rng.log_unit(torch.tensor([1.0]))) == 0.0


@pytest.mark.parametrize("which", ["pair", "cells"])
def test_normals_have_the_standard_moments_and_tails(which):
    k = keys()
    if which == "pair":
        a, b = rng.normal_pair(k)
        z = torch.cat([a, b]).double()
        r = float((a.double() * b.double()).mean())
        assert abs(r) < 5 / math.sqrt(N), r  # the two of a pair are uncorrelated
        r2 = float((a.double() ** 2 * b.double() ** 2).mean() - 1)  # and not dependent through the radius^2
        assert abs(r2) < 5 * math.sqrt(8 / N), r2  # var(a^2 b^2) = 9 - 1 = 8 for independent normals
    else:  # the programming draws: N normals from N/2 pairs (odd count: one pair half used)
        z = rng.draw("normal", rng.key("test", 2), torch.arange(1), (N - 1,))[0].double()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)  # var(z^4) = 105 - 9
    for t in (1.0, 2.0, 3.0):
        p = math.erfc(t / math.sqrt(2))
        frac = float((z.abs() > t).double().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (t, frac, p)
    assert float(z.abs().max()) < math.sqrt(-2 * math.log(0.5 * 2.0**-23)) + 1e-4  # the 23-bit radius bound


def test_normal_pair_is_uniform_in_angle_over_the_eight_octants():
    a, b = rng.normal_pair(keys(seed=1))
    octant = ((torch.atan2(b.double(), a.double()) % (2 * math.pi)) / (math.pi / 4)).floor().long()
    counts = torch.bincount(octant, minlength=8).double()
    p = 1 / 8
    assert ((counts / N - p).abs() < 5 * math.sqrt(p * (1 - p) / N)).all(), counts


def test_compiled_normal_pair_agrees_with_eager():
    k = keys(1 << 16)
    ea, eb = rng.normal_pair(k)
    ca, cb = torch.compile(rng.normal_pair)(k)
    # the compiled loop contracts multiply-adds: the same numbers to a few float32 ulps
    assert torch.allclose(ca, ea, rtol=1e-5, atol=1e-6) and torch.allclose(cb, eb, rtol=1e-5, atol=1e-6)


def test_arith_exp_and_sqrt_match_float64():
    x = torch.linspace(-87.0, 88.0, 200_001)
    ref = torch.exp(x.double())
    assert float(((arith.exp(x).double() - ref) / ref).abs().max()) < 3e-7  # about 2 float32 ulps
    assert float(arith.exp(torch.tensor([0.0]))) == 1.0
    assert torch.isfinite(arith.exp(torch.tensor([1e4, -1e4]))).all()  # clipped, no inf or denormal
    y = torch.cat([torch.logspace(-30, 30, 200_001), torch.tensor([1.0, 4.0, 2.0**-126])])
    rel = (arith.sqrt(y).double() - torch.sqrt(y.double())) / torch.sqrt(y.double())
    assert float(rel.abs().max()) < 3e-7


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_compiled_draws_are_the_eager_draws_to_the_bit(kind, monkeypatch):
    """Programmed chips must not depend on whether their draws ran compiled: plain arithmetic only."""
    monkeypatch.setattr(rng, "COMPILE_MIN", 1)
    ids = torch.tensor([0, 3, 7])
    for shape in ((4097,), (3, 5, 331)):  # odd sizes: the second half of the pairs is cut
        eager = rng.draw(kind, rng.key("bits", 1), ids, shape)
        compiled = rng.draw(kind, rng.key("bits", 1), ids, shape, compiled=True)
        assert torch.equal(eager.view(torch.int32), compiled.view(torch.int32))
        # and a chip's draws do not depend on which other chips are drawn with it
        assert torch.equal(eager[1:2], rng.draw(kind, rng.key("bits", 1), ids[1:2], shape))
