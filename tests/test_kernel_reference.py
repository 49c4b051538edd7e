"""The fused epilogue loops against the plain reference (nvcim/chip/reference.py), and the converter and
read-noise models behind their interfaces."""

from __future__ import annotations

import pytest
import torch

import nvcim
from nvcim.chip.context import EpilogueOperands, ReadNoiseOperands
from nvcim.chip.kernel import analog_epilogue
from nvcim.chip.reference import reference_epilogue
from nvcim.circuits import ADC_MODELS, READ_NOISE_MODELS, get_adc, get_read_noise
from nvcim.errors import ConfigError


def _operands(shape, adc_model, seed, noise=True, adc_error=True, layout="cl"):
    b, n_l, c, t, s, o = shape
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g) * 3
    if layout == "cm":  # positions innermost in memory, as a one-channel convolution returns them
        y = y.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)
    rn = None
    if noise:
        var = torch.rand(shape, generator=g) * 0.2
        ck = torch.randint(-2**31, 2**31 - 1, (c,), generator=g, dtype=torch.int64).to(torch.int32)
        ik = torch.randint(-2**31, 2**31 - 1, (b,), generator=g, dtype=torch.int64).to(torch.int32)
        rn = ReadNoiseOperands(var, ck, ik)
    gain = 1 + 0.05 * torch.randn(c, t, s, o, generator=g) if adc_error else None
    offset = 0.05 * torch.randn(c, t, s, o, generator=g) if adc_error else None
    adc = get_adc(adc_model)
    lo, hi = adc.codes(6)
    ops = EpilogueOperands(gain, offset, adc.step(torch.tensor(4.0), 6).expand(t, s, o), lo, hi,
                           2.0 ** -torch.arange(s, dtype=torch.float32), torch.rand(c, o, generator=g) + 0.5,
                           torch.randn(o, generator=g), None, adc_model)
    return y, rn, ops


CASES = [  # (B, L, c, T, S, O), (H, W)
    ((3, 1, 4, 1, 1, 7), (1, 1)),  # a linear layer: one tile, one slice
    ((2, 24, 3, 1, 1, 5), (4, 6)),  # a convolution: paired columns
    ((2, 15, 3, 1, 1, 4), (3, 5)),  # odd width: the last column pairs with nothing
    ((2, 12, 2, 3, 2, 5), (3, 4)),  # row tiles and bit slices: the general loop
]


@pytest.mark.parametrize("adc_model", ADC_MODELS.names())
@pytest.mark.parametrize("shape, hw", CASES)
def test_fused_epilogue_matches_the_plain_reference(shape, hw, adc_model):
    for noise, adc_error in ((True, True), (True, False), (False, True)):
        y, rn, ops = _operands(shape, adc_model, seed=sum(shape), noise=noise, adc_error=adc_error)
        got, want = analog_epilogue(y, rn, ops, hw=hw), reference_epilogue(y, rn, ops, hw=hw)
        # the same noise and codes element for element; only the order of the shift-and-add differs
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if noise:  # and the noise is really there: without it the result moves by about its std
            bare = reference_epilogue(y, None, ops, hw=hw)
            assert (bare - want).abs().mean() > 0.05


def test_fused_epilogue_in_position_innermost_memory_matches_the_reference():
    y, rn, ops = _operands((2, 20, 2, 1, 1, 3), "uniform", seed=5, layout="cm")
    assert y.stride()[1] == 1
    torch.testing.assert_close(analog_epilogue(y, rn, ops, hw=(4, 5)), reference_epilogue(y, rn, ops, hw=(4, 5)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tail", [(("relu",), 4, 6), ((2, "relu"), 4, 6), ((2,), 5, 4), ((3, "relu"), 6, 6)])
@pytest.mark.parametrize("tiles", [(1, 1), (2, 2)])
def test_fused_tail_matches_the_reference(tail, tiles):
    """ReLU and max pooling fused into the epilogue (with even windows: pooled in place, pairs of columns
    from one draw) equal the plain epilogue followed by the plain tail."""
    h, w = tail[1], tail[2]
    y, rn, ops = _operands((2, h * w, 3, *tiles, 4), "uniform", seed=h * w)
    torch.testing.assert_close(analog_epilogue(y, rn, ops, tail=tail), reference_epilogue(y, rn, ops, tail=tail),
                               rtol=1e-5, atol=1e-5)


def test_adc_models_quantise_as_documented():
    y = torch.linspace(-3, 3, 601)
    delta = torch.tensor(0.5)
    uni, mid = get_adc("uniform"), get_adc("midrise")
    lo, hi = uni.codes(3)  # -4 .. 3
    q = uni.quantize(y, delta, lo, hi)
    assert torch.equal(q, torch.clamp(torch.round(y / 0.5), -4, 3) * 0.5)
    assert float(q.min()) == -2.0 and float(q.max()) == 1.5  # 8 codes, mid-tread: 0 is a level
    m = mid.quantize(y, delta, lo, hi)
    assert not bool((m == 0).any())  # mid-rise: 0 is no level, the bins' centres are
    inside = (y > -2) & (y < 2)
    assert float((m - y)[inside].abs().max()) <= 0.25 + 1e-6  # error within half an LSB inside the range
    assert float((m - y)[inside].mean().abs()) < 0.01  # and unbiased over a uniform ramp


def test_read_noise_models_give_their_documented_spread():
    g = torch.tensor([1e-6, 5e-5, 1e-4]).repeat(20000, 1)
    z = torch.randn(g.shape, generator=torch.Generator().manual_seed(0))
    n = g.shape[0]
    device = nvcim.override(nvcim.preset("ideal"), {"device.read_noise": 0.02, "device.g_max": 1e-4}).device
    for name, want in (("proportional", 0.02 * g[0]), ("additive", torch.full((3,), 0.02 * 1e-4))):
        model = get_read_noise(name)
        got = model.sample(g, z, device).std(0)
        # the std of a sample std is about std / sqrt(2 n)
        assert torch.allclose(got, want, rtol=5 / (2 * n) ** 0.5), name
        var = model.pair_variance(g[0], g[0], device)
        assert torch.allclose(var, 2 * want**2, rtol=1e-6)


def test_the_additive_read_noise_model_reaches_the_chip_outputs():
    """With the same sigma, a floor of sigma g_max is noisier than sigma G (cells sit below g_max)."""
    from helpers import linear

    x = torch.rand(64, 32)
    spread = {}
    for name in READ_NOISE_MODELS.names():
        cfg = nvcim.override(nvcim.preset("ideal"), {"device.read_noise": 0.05, "device.read_noise_model": name})
        m = nvcim.convert(linear(k=32, o=8), cfg, chips=2, seed=0)
        with torch.no_grad():
            spread[name] = float((m(x, read_key=1) - m(x, read_key=2)).std())
    assert spread["additive"] > 1.2 * spread["proportional"] > 0


def test_unknown_converter_models_name_the_field_and_the_choices():
    with pytest.raises(ConfigError, match="circuit.adc.model.*'midrise', 'symmetric', 'uniform'"):
        nvcim.override(nvcim.preset("ideal"), {"circuit.adc_model": "flash"})
    with pytest.raises(ConfigError, match="device.read_noise_model"):
        nvcim.override(nvcim.preset("ideal"), {"device.read_noise_model": "pink"})
