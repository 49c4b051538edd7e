"""Managed reads (aihwkit's inference I/O): per-vector input scaling, output noise and bound management,
against plain statements of their arithmetic."""

import copy
import math

import pytest
import torch
from helpers import copy_of, lenet, linear
from torch import nn

import nvcim
from nvcim.chip.managed_io import max_rounds
from nvcim.chip.model import Runtime
from nvcim.circuits import get_adc, get_dac
from nvcim.config import override, preset
from nvcim.errors import ConfigError

BASE = override(preset("ideal"), {"name": "test"})
AIHWKIT_IO = {"circuit.input_scaling": "absmax", "circuit.dac_bits": 7, "circuit.dac_model": "symmetric",
              "circuit.adc_bits": 9, "circuit.adc_model": "symmetric", "circuit.adc_range_cells": 12.0,
              "circuit.out_noise": 0.005, "circuit.bound_management": True}


def cfg(**changes):
    return override(BASE, changes)


def grouped() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("net,shape,changes", [
    ("lenet", (1, 28, 28), {}),
    ("lenet", (1, 28, 28), {"array.rows": 32, "array.cols": 16}),  # several tiles, each with its own scale
    ("grouped", (4, 6, 6), {"array.rows": 16}),
])
def test_absmax_reads_of_an_ideal_chip_reproduce_the_digital_model(net, shape, changes):
    ref = lenet() if net == "lenet" else grouped()
    model = nvcim.convert(copy_of(ref) if net == "lenet" else grouped(),
                          cfg(**{"circuit.input_scaling": "absmax", **changes}), chips=3, seed=1)
    x = torch.randn(9, *shape)
    with torch.no_grad():
        out, want = model(x), ref(x)
    assert torch.allclose(out, want.expand_as(out), atol=1e-5, rtol=1e-4)


def _tile_dac(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Each row vector x (N, R) quantised on its own range max|x| with a symmetric bits-bit DAC."""
    alpha = x.abs().amax(-1, keepdim=True)
    steps = 2 ** (bits - 1) - 1
    return torch.round(x / alpha * steps).clamp(-steps, steps) / steps * alpha


def test_absmax_dac_quantises_each_vector_of_each_row_tile_on_its_own_range():
    net = linear(k=64, o=8, bias=True)
    m = nvcim.convert(linear(k=64, o=8, bias=True), cfg(**{"circuit.input_scaling": "absmax", "circuit.dac_bits": 4,
                                                          "array.rows": 32}), chips=2, seed=0)
    x = torch.randn(20, 64) * torch.linspace(0.1, 3, 64)  # the two tiles get different ranges
    m.calibrate(x)
    w, b = net[0].weight, net[0].bias
    want = _tile_dac(x[:, :32], 4) @ w[:, :32].T + _tile_dac(x[:, 32:], 4) @ w[:, 32:].T + b
    with torch.no_grad():
        out = m(x)
    assert torch.allclose(out, want.expand_as(out), atol=1e-5)
    assert not torch.allclose(want, _tile_dac(x, 4) @ w.T + b, atol=1e-3)  # one range over all 64 rows differs


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2d(6, 4, 3, stride=2, padding=2, dilation=2), (6, 9, 8)),  # 2 tiles of 3 channels
    (lambda: nn.Conv2d(7, 5, 3, padding=1), (7, 6, 6)),  # 3 tiles of 3 channels, the last one padded
    (lambda: nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), (3, 7, 5)),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 5, 5)),
    (lambda: nn.Conv1d(5, 3, 3, stride=2, padding=1), (5, 17)),
    (lambda: nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1), (6, 4, 5)),
])
def test_absmax_dac_quantises_each_patch_of_each_row_tile_on_its_own_range(make, shape):
    """Convolutions: each output position's receptive field, tile by tile, gets its own range (F.unfold's
    patches here, the simulator's own strided patches and max-pooled ranges there)."""
    torch.manual_seed(3)
    conv = make().eval()
    m = nvcim.convert(nn.Sequential(copy.deepcopy(conv)), cfg(**{"circuit.input_scaling": "absmax",
                                                           "circuit.dac_bits": 4, "array.rows": 32}),
                      chips=2, seed=0)
    lay = m.net[0]
    x = torch.randn(3, *shape) + 0.3
    x4 = x.unsqueeze(2) if x.dim() == 3 else x
    padding, stride = lay.patch_args()
    cols = torch.nn.functional.unfold(lay.pad_input(x4), lay.kernel_size, lay.dilation, padding, stride)
    b, _, n_l = cols.shape
    g, k, r = lay.groups, lay.k, lay.rows_per_tile()
    rows = cols.view(b, g, k, n_l).permute(0, 3, 1, 2)  # (B, L, g, K)
    w = lay.weight_matrix().detach().view(g, -1, k)  # (g, O/g, K)
    want = torch.zeros(b, n_l, g, w.shape[1])
    for t0 in range(0, k, r):
        q = _tile_dac(rows[..., t0:t0 + r].reshape(-1, min(r, k - t0)), 4).view(b, n_l, g, -1)
        want += torch.einsum("blgr,gor->blgo", q, w[..., t0:t0 + r])
    want = want.reshape(b, n_l, -1) + (lay.bias.detach() if lay.bias is not None else 0)
    m.calibrate(x)
    with torch.no_grad():
        out = m(x)
    assert torch.allclose(out.reshape(2, b, -1, n_l).transpose(-1, -2), want.expand(2, -1, -1, -1), atol=1e-5)


def test_symmetric_converters_have_as_many_codes_on_each_side():
    adc = get_adc("symmetric")
    assert adc.codes(9) == (-255, 255)
    assert float(adc.step(torch.tensor(12.0), 9)) == pytest.approx(12 / 255)  # aihwkit: 2 * 12 / (2^9 - 2)
    x = torch.linspace(0, 1, 1001)
    levels = get_dac("symmetric").quantize(x, torch.tensor(1.0), 7, False).unique()
    assert len(levels) == 64  # 0 ... 63 / 63: a sign bit and six magnitude bits, whatever the inputs' sign
    assert len(get_dac("uniform").quantize(x, torch.tensor(1.0), 7, False).unique()) == 128


@pytest.mark.parametrize("bits,rounds", [(7, 5), (8, 6), (4, 2), (3, 1), (0, 11)])
def test_bound_management_stops_at_two_bits_of_input_resolution(bits, rounds):
    # aihwkit: passes once the reduction f exceeds max_bm_res / inp_res = 0.25 (2^b - 2) / 2, or 1000
    limit = min(1000.0, (2**bits - 2) / 8) if bits else 1000.0
    fs = [2.0**j for j in range(rounds)]
    assert max_rounds(bits) == rounds
    assert fs[-1] > limit and (rounds == 1 or fs[-2] <= limit)


def test_output_noise_has_the_configured_std_relative_to_the_adc_full_scale():
    """out_noise x ADC full scale, in signal units; in weight units (x column scale max|W| / (g_max - g_min)
    and the vector's scale alpha): sigma = out_noise x cells x max|W| x alpha."""
    net, cells, out_noise = linear(k=64, o=8), 4.0, 0.02
    m = nvcim.convert(linear(k=64, o=8), cfg(**{"circuit.input_scaling": "absmax", "circuit.out_noise": out_noise,
                                               "circuit.adc_range_cells": cells}), chips=50, seed=0)
    x = torch.rand(40, 64) * 2 - 1
    x[:, 0] = 2.0  # alpha = 2 for every vector
    m.calibrate(x)
    with torch.no_grad():
        err = m(x) - net(x)  # (chips, images, outputs)
    n = err.numel()
    sigma = out_noise * cells * float(net[0].weight.detach().abs().max()) * 2.0
    se = sigma / math.sqrt(2 * (n - 1))  # standard error of a sample std of n normals
    assert abs(float(err.std()) - sigma) < 4 * se
    assert abs(float(err.mean())) < 4 * sigma / math.sqrt(n)
    # independent across chips and images: the correlation of neighbours is within its sampling error
    a, b = err[:-1].reshape(-1), err[1:].reshape(-1)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 4 / math.sqrt(a.numel())


def _reference_bound_managed(x, w, cells, bits_in, bits_out, manage):
    """A plain statement of aihwkit's forward for one tile without noise: abs-max scaling, symmetric DAC,
    symmetric ADC with bound cells x max|W| (weights normalised to max|W| = 1: bound = cells), and iterative
    halving while any output saturates."""
    wmax = w.abs().max()
    wn = w / wmax
    alpha = x.abs().amax(-1, keepdim=True)
    steps_in, top = 2 ** (bits_in - 1) - 1, 2 ** (bits_out - 1) - 1
    delta = cells / top
    out = torch.empty(x.shape[0], w.shape[0])
    for i in range(x.shape[0]):
        f = 1.0
        while True:
            # the DAC's own order of operations: at f = 2 the largest input sits exactly on a rounding tie
            lsb_in = torch.tensor(1.0) / steps_in
            xn = torch.round(x[i] / (alpha[i] * f) / lsb_in).clamp(-steps_in, steps_in) * lsb_in
            code = torch.round(wn @ xn / delta)
            if not manage or code.abs().max() <= top or f > (2**bits_in - 2) / 8:
                break
            f *= 2
        out[i] = code.clamp(-top, top) * delta * alpha[i] * f * wmax
    return out


def test_bound_management_reads_saturated_vectors_again_at_half_the_input():
    net = linear(k=64, o=8)
    w = net[0].weight.detach()
    x = torch.randn(64, 64)
    x[:16] = x[:16].abs()  # vectors of one sign: their outputs saturate a small ADC range
    bound = 3.0 * float(w.abs().max()) * x.abs().amax(-1, keepdim=True)  # the ADC range in output units
    err = {}
    for manage in (False, True):
        cfg_ = cfg(**{**AIHWKIT_IO, "circuit.out_noise": 0.0, "circuit.adc_range_cells": 3.0,
                      "circuit.bound_management": manage})
        m = nvcim.convert(linear(k=64, o=8), cfg_, chips=1, seed=0)
        m.calibrate(x)
        want = _reference_bound_managed(x, w, 3.0, 7, 9, manage)
        with torch.no_grad():
            out = m(x)[0]
            err[manage] = (out - net(x)).abs()[:16].mean()
        assert bool(((out - want).abs() <= bound / 255 * 16 * 1.001).all())  # at most one code apart
        assert float((out - want).abs().lt(1e-5).float().mean()) > 0.99
        if not manage:
            assert int((out[:16].abs() >= bound[:16] * 0.999).any(-1).sum()) > 8  # the one-sign vectors clip
    assert float(err[True]) < 0.5 * float(err[False])  # the clipping error goes; resolution costs some


def test_managed_reads_do_not_depend_on_batch_or_chip_block():
    ref = lenet()
    x = torch.rand(12, 1, 28, 28)
    m = nvcim.convert(copy_of(ref), override(preset("pcm"), AIHWKIT_IO), chips=4, seed=3)
    m.calibrate(x)
    with torch.no_grad():
        full = m(x, read_key=5)
        halves = torch.cat([m(x[:5], image_ids=torch.arange(5), read_key=5),
                            m(x[5:], image_ids=torch.arange(5, 12), read_key=5)], dim=1)
        m.runtime = Runtime(chip_block=1)
        one_by_one = m(x, read_key=5)
        again = m(x, read_key=5)
        fresh = m(x, read_key=6)
    assert torch.equal(full, halves)
    assert torch.equal(full, one_by_one)
    assert torch.equal(full, again) and not torch.equal(full, fresh)  # keyed, fresh per read


def test_adc_range_is_calibrated_on_normalised_signals():
    """With abs-max scaling every input vector reaches 1, so a calibrated ADC range lies within one tile's
    largest possible signal, rows x (g_max - g_min) x 1, whatever the inputs' magnitude."""
    net = linear(k=64, o=8)
    m = nvcim.convert(copy_of_linear(net), cfg(**{"circuit.input_scaling": "absmax", "circuit.adc_bits": 8,
                                                  "circuit.adc_model": "symmetric", "circuit.adc_percentile": 100.0}),
                      chips=2, seed=0)
    x = torch.randn(50, 64) * 1000.0
    m.calibrate(x)
    lay = m.analog_layers()[0]
    d = m.config.device
    assert 0 < float(lay.converters.adc_fs.max()) <= 64 * (d.g_max - d.g_min)
    with torch.no_grad():
        out = m(x)
    alpha = x.abs().amax(-1, keepdim=True)
    # the largest signal is a code
    lsb = float(lay.converters.adc_fs.max()) / 127 * float(lay.crossbar.scale.max()) * alpha
    assert bool(((out - net(x)).abs() <= lsb / 2 * 1.001).all())


def copy_of_linear(net):
    m = linear(k=64, o=8)
    m.load_state_dict(net.state_dict())
    return m


@pytest.mark.parametrize("field,changes", [
    ("bound_management", {"circuit.bound_management": True}),
    ("adc_range_cells", {"circuit.adc_bits": 8, "circuit.adc_range": 0.5, "circuit.adc_range_cells": 12.0}),
    ("input_scaling", {"circuit.input_scaling": "per-row"}),
    ("out_noise", {"circuit.out_noise": -0.1}),
])
def test_bad_io_settings_name_the_field(field, changes):
    with pytest.raises(ConfigError, match=field):
        cfg(**changes)
