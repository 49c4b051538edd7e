"""The simulator against the physics it claims: analytic moments, exact limits, invariances."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import copy_of, lenet, linear
from torch import nn

import nvcim
from nvcim.chip import AnalogLinear
from nvcim.config import ChipConfig, override, preset
from nvcim.devices import FAULT_SA0, FAULT_SA1

BASE = override(preset("ideal"), {"name": "test"})


def cfg(**changes):
    return override(BASE, changes)


@pytest.mark.parametrize("changes", [
    {},
    {"array.rows": 32, "array.cols": 16},  # many tiles, partial sums added digitally
    {"mapping.scaling": "column", "array.rows": 32},
    {"mapping.scheme": "offset", "array.cols": 16},
])
def test_ideal_chip_reproduces_digital_logits(changes):
    ref = lenet()
    model = nvcim.convert(copy_of(ref), cfg(**changes), chips=3, seed=1)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        want = ref(x)
    assert out.shape == (3, 16, 10)  # the chip dimension leads
    assert torch.allclose(out, want.expand_as(out), atol=1e-5, rtol=1e-4)
    assert torch.allclose(model.digital(x), want, atol=1e-6)


def test_lognormal_output_spread_matches_analytic():
    sigma, n_chips = 0.2, 4000
    net = linear()
    w = net[0].weight.detach().clone()
    c = cfg(**{"device.programming.model": "lognormal", "device.programming.sigma": sigma})
    model = nvcim.convert(net, c, chips=n_chips, seed=3)
    x = torch.rand(1, 64)
    with torch.no_grad():
        y = model(x)[:, 0, :].double()  # (chips, outputs)
    layer = model.analog_layers()[0]
    m = layer.crossbar.mapped()
    s = m.scale.double()
    gp, gn = m.pos[0].double(), m.neg[0].double()
    xd = x[0].double()
    mean = s * ((gp - gn) @ xd) * math.exp(sigma**2 / 2)
    var = s**2 * ((gp**2 + gn**2) @ xd**2) * (math.exp(sigma**2) - 1) * math.exp(sigma**2)
    se_mean = var.sqrt() / math.sqrt(n_chips)
    assert ((y.mean(0) - mean).abs() < 5 * se_mean).all()
    # the standard error of a sample std is about sd / sqrt(2 (n - 1)) for near-normal sums
    sd = var.sqrt()
    assert ((y.std(0) - sd).abs() < 5 * sd / math.sqrt(2 * (n_chips - 1)) + 1e-9).all()
    assert not torch.allclose(y[0], y[1])
    assert w.shape == (8, 64)


@pytest.mark.parametrize("variance", ["float32", "bfloat16"])
def test_read_noise_variance_matches_analytic(variance):
    sr, n = 0.05, 6000
    net = linear(k=32, o=4)
    model = nvcim.convert(net, cfg(**{"device.read_noise": sr}), chips=1, seed=0,
                          runtime=nvcim.Runtime(variance=variance))
    x = torch.rand(1, 32).expand(n, 32).contiguous()  # the same input read n times
    with torch.no_grad():
        y = model(x)[0].double()
    m = model.analog_layers()[0].crossbar.mapped()
    var = m.scale.double() ** 2 * (sr**2) * ((m.pos[0].double() ** 2 + m.neg[0].double() ** 2) @ x[0].double() ** 2)
    sd = var.sqrt()
    assert ((y.std(0) - sd).abs() < 5 * sd / math.sqrt(2 * (n - 1))).all()
    ideal = F.linear(x[:1], model.analog_layers()[0].weight).double()[0]
    assert ((y.mean(0) - ideal).abs() < 5 * sd / math.sqrt(n)).all()


def test_stuck_at_fault_fractions_within_binomial_interval():
    sa0, sa1 = 0.0175, 0.0904
    model = nvcim.convert(linear(k=128, o=64), cfg(**{"device.faults.sa0": sa0, "device.faults.sa1": sa1}),
                          chips=50, seed=7)
    layer = model.analog_layers()[0]
    codes = torch.cat([layer.crossbar.faults_pos.flatten(), layer.crossbar.faults_neg.flatten()])
    n = codes.numel()
    for code, p in ((FAULT_SA0, sa0), (FAULT_SA1, sa1)):
        frac = (codes == code).double().mean().item()
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n), (code, frac)
    g = torch.cat([layer.crossbar.g_pos.flatten(), layer.crossbar.g_neg.flatten()])
    assert torch.all(g[codes == FAULT_SA0] == BASE.device.g_min)
    assert torch.all(g[codes == FAULT_SA1] == BASE.device.g_max)


def test_training_chips_err_as_programmed_chips_do_layer_by_layer():
    """A training chip is drawn like a programmed one: per layer, the mean relative weight error
    ||W_chip - W_nominal||^2 / ||W_nominal||^2 of 24 training chips matches that of 24 programmed chips within
    4 standard errors. Stuck cells only (independent on the two cells of a pair), so a stream shared by the
    two sides (both cells stuck together: a zero weight instead of a full-range error) shows at once."""
    model = nvcim.convert(lenet(), cfg(**{"device.faults.sa0": 0.0175, "device.faults.sa1": 0.0904}), chips=24,
                          seed=3)
    n = 24
    for lay in model.analog_layers():
        nominal = lay.from_matrix(lay.crossbar.decode(lay.crossbar.conductances(*lay.crossbar.nominal())[0])[0])
        norm = float((nominal**2).sum())

        def rel(w: torch.Tensor) -> float:
            return float(((w - nominal) ** 2).sum()) / norm  # noqa: B023 (used at once)

        def chip(c: int) -> torch.Tensor:
            xb = lay.crossbar  # noqa: B023
            return lay.from_matrix(xb.decode(xb.conductances(*xb.effective(torch.tensor([c])))[0])[0])  # noqa: B023

        programmed = torch.tensor([rel(chip(c)) for c in range(n)])
        training = torch.tensor([rel(lay.fresh_weights(2**30 + 17 * c)) for c in range(n)])
        se = math.sqrt(float(programmed.var() + training.var()) / n)
        assert abs(float(programmed.mean() - training.mean())) < 4 * se, (lay.layer_name, programmed.mean(),
                                                                           training.mean(), se)


def test_training_chip_streams_are_independent():
    """The streams of two keys (two layers, sides or purposes) of one training chip are uncorrelated, and a
    stream is not another's: PyTorch's generator keeps only a seed's low 32 bits, so these must mix every
    bit of the key and the chip."""
    from nvcim.chip import rng

    n = 20000
    keys = [rng.key(0, layer, side, purpose) for layer in ("0", "3") for side in ("pos", "neg")
            for purpose in ("fault", "program")]
    draws = torch.cat([rng.draw_stream("normal", k, 2**30 + 5, (n,)) for k in keys])
    r = torch.corrcoef(draws)
    off = r[~torch.eye(len(keys), dtype=torch.bool)]
    assert float(off.abs().max()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_adc_output_has_at_most_2_to_the_b_codes_per_column(bits):
    net = linear(k=64, o=6)
    model = nvcim.convert(net, cfg(**{"circuit.adc_bits": bits}), chips=2, seed=0)
    x = torch.randn(3000, 64)
    model.calibrate(x[:256])
    with torch.no_grad():
        y = model(x)
    for chip in range(2):
        for col in range(6):
            codes = torch.unique(y[chip, :, col]).numel()
            assert 2 < codes <= 2**bits


def test_rows_spread_evenly_over_tiles_and_each_tile_is_digitised_on_its_own():
    """400 rows on 128-row arrays take 4 tiles of 100 rows (not 3 x 128 + 16); each tile's partial sum
    goes through its own ADC and the digital periphery adds the codes."""
    net = linear(k=400, o=5)
    model = nvcim.convert(net, cfg(**{"array.rows": 128, "circuit.adc_bits": 4}), chips=1, seed=0)
    lay = model.analog_layers()[0]
    assert (lay.row_tiles, lay.rows_per_tile()) == (4, 100)
    assert torch.bincount(lay.row_tile_index()).tolist() == [100] * 4
    x = torch.randn(64, 400)
    model.calibrate(x)
    with torch.no_grad():
        y = model(x)[0]
    pos, neg = lay.crossbar.nominal()
    diff = (pos - neg)[0, 0]  # (O, K)
    delta = lay.converters.adc_fs.expand(4, 1, 5)[:, 0] / 2**3  # (T, O)
    want = sum(torch.clamp(torch.round(x[:, 100 * t:100 * t + 100] @ diff[:, 100 * t:100 * t + 100].T / delta[t]),
                           -8, 7) * delta[t] for t in range(4))
    assert torch.allclose(y, want * lay.crossbar.scale, atol=1e-5 * float(y.abs().max()))
    conv = nvcim.convert(nn.Sequential(nn.Conv2d(6, 4, 5)), cfg(**{"array.rows": 128}), chips=1, seed=0)
    c = conv.analog_layers()[0]
    assert (c.row_tiles, c.ch_per_tile, c.rows_per_tile()) == (2, 3, 75)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_training_through_the_adc_reads_as_the_chip_does(kind):
    """A training pass with ``adc=True`` on a noiseless chip is the chip's own read: each tile's partial sum
    digitised by the calibrated 4-bit ADC, the codes added digitally. Without it the pass is the digital
    layer, several ADC steps away."""
    from nvcim.chip.simulated import SimulatedChip

    torch.manual_seed(0)
    if kind == "linear":
        net, x = nn.Sequential(nn.Linear(100, 6)), torch.randn(32, 100)
    else:
        net, x = nn.Sequential(nn.Conv2d(8, 5, 3)), torch.randn(8, 8, 7, 7)
    model = nvcim.convert(net, cfg(**{"array.rows": 32, "circuit.adc_bits": 4, "circuit.dac_bits": 0}),
                          chips=1, seed=0)
    assert model.analog_layers()[0].row_tiles >= 3
    model.calibrate(x)
    chip = SimulatedChip(model)
    with torch.no_grad():
        read = model(x)[0]
        trained = chip.train_forward(x, 0, adc=True, train=False)
        plain = chip.train_forward(x, 0, adc=False, train=False)
    lay = model.analog_layers()[0]
    # one ADC code in output units, at most
    step = float((lay.converters.adc_fs / 2**3 * lay.crossbar.scale.max()).max())
    assert torch.allclose(trained, read, atol=1e-4 * step)
    assert (plain - read).abs().max() > step / 4  # the ADC matters here, so the test can fail


def test_noiseless_bit_slicing_equals_quantised_weights():
    net = linear(k=48, o=10)
    w = net[0].weight.detach().clone()
    c = cfg(**{"device.bits_per_cell": 1, "mapping.weight_bits": 8})
    model = nvcim.convert(net, c, chips=2, seed=0)
    assert model.analog_layers()[0].n_slices == 7
    m = w.abs().max()
    wq = torch.round(w / m * 127) * m / 127
    x = torch.randn(20, 48)
    with torch.no_grad():
        y = model(x)
    assert torch.allclose(y[0], F.linear(x, wq), atol=1e-5)
    assert not torch.allclose(F.linear(x, wq), F.linear(x, w), atol=1e-5)  # quantisation did something


def test_noiseless_mlc_levels_quantise_weights():
    net = linear(k=16, o=4)
    w = net[0].weight.detach().clone()
    model = nvcim.convert(net, cfg(**{"device.bits_per_cell": 2}), chips=1, seed=0)
    x = torch.eye(16)
    with torch.no_grad():
        eff = model(x)[0].T  # effective weights (o, k)
    steps = torch.round(eff / w.abs().max() * 3)
    assert torch.allclose(eff, steps * w.abs().max() / 3, atol=1e-6)  # 4 levels -> magnitudes in {0, 1/3, 2/3, 1}


@pytest.mark.parametrize("scaling", ["layer", "column"])
def test_clipped_mapping_equals_clamped_weights_and_bounds_the_stuck_at_gmax_error(scaling):
    k_sigma = 1.5
    net = linear(k=64, o=8)
    w = net[0].weight.detach().clone()
    dim = dict(dim=1, keepdim=True) if scaling == "column" else {}
    clip = torch.minimum(w.abs().amax(**dim), k_sigma * w.square().mean(**dim).sqrt())
    assert bool((w.abs() > clip).any())  # the clip cuts some weights
    x = torch.eye(64)
    # noiseless: the chip holds the clamped weights
    model = nvcim.convert(copy.deepcopy(net), cfg(**{"mapping.clip_sigma": k_sigma, "mapping.scaling": scaling}),
                          chips=1, seed=0)
    with torch.no_grad():
        eff = model(x)[0].T
    assert torch.allclose(eff, torch.maximum(torch.minimum(w, clip), -clip), atol=1e-6)
    # stuck at g_max: a g+ stuck under a weight <= 0 reads clip - |w|, an error of exactly the clip (not max|W|);
    # no stuck cell adds more than that
    stuck = nvcim.convert(copy.deepcopy(net), cfg(**{"mapping.clip_sigma": k_sigma, "mapping.scaling": scaling,
                                                  "device.faults.sa1": 0.3}), chips=4, seed=3)
    layer = stuck.analog_layers()[0]
    with torch.no_grad():
        eff = stuck(x).transpose(-1, -2)  # (chips, o, k)
    pos, neg = layer.crossbar.faults_pos[:, 0] == FAULT_SA1, layer.crossbar.faults_neg[:, 0] == FAULT_SA1
    err = (eff - torch.maximum(torch.minimum(w, clip), -clip)).abs()
    full = clip.expand_as(w).expand_as(err)
    hit = pos & ~neg & (w <= 0)
    assert int(hit.sum()) > 10
    assert torch.allclose(err[hit], full[hit], rtol=1e-5, atol=1e-7)
    assert torch.all(err[~pos & ~neg] < 1e-6)
    assert torch.all(err <= full * (1 + 1e-5))


@pytest.mark.parametrize("n_levels", [2, 4, 16, 256])
def test_rounding_to_uniform_levels_is_bucketize_to_the_bit(n_levels):
    from nvcim.devices import round_to_levels

    torch.manual_seed(n_levels)
    levels = torch.linspace(1e-6, 1e-4, n_levels)
    mids = (levels[1:] + levels[:-1]) / 2
    up, down = mids.nextafter(torch.tensor(1.0)), mids.nextafter(torch.tensor(0.0))
    t = torch.cat([torch.rand(20000) * 1.2e-4, mids, up, down, levels]).clamp(1e-6, 1e-4).view(1, 1, -1)
    g, idx = round_to_levels(t, levels)
    want = torch.bucketize(t, mids)  # the nearest level; a midpoint rounds down
    assert idx.dtype == torch.int64 and torch.equal(idx, want) and torch.equal(g, levels[want])
    uneven = torch.cat([levels[:1], levels[1:] ** 1.01 * levels[-1] ** -0.01])  # a measured table's levels
    assert torch.equal(round_to_levels(t, uneven)[1], torch.bucketize(t, (uneven[1:] + uneven[:-1]) / 2))


@pytest.mark.parametrize("scope", ["chip", "array"])
def test_between_chip_component_shifts_cells_together(scope):
    c = cfg(**{"device.bits_per_cell": 0, "device.programming.model": "lognormal",
               "variability.between_sigma": 0.3, "variability.scope": scope, "array.rows": 32})
    model = nvcim.convert(lenet(), c, chips=6, seed=2)
    ratios = []
    for layer in model.analog_layers():
        pos, _ = layer.crossbar.nominal()
        r = (layer.crossbar.g_pos / pos).log()  # theta per cell (no within-chip part)
        if scope == "chip":
            assert torch.allclose(r, r.flatten(1)[:, :1].view(-1, 1, 1, 1).expand_as(r), atol=1e-5)
            ratios.append(r.flatten(1)[:, 0])
        else:
            tiles = layer.row_tile_index()
            assert torch.allclose(r[:, :, :, tiles == 0], r[:, :, :1, :1].expand_as(r[:, :, :, tiles == 0]),
                                  atol=1e-5) if layer.geometry.n_col_tiles == 1 else True
            if layer.row_tiles > 1:
                assert not torch.allclose(r[:, :, 0, tiles == 0][..., 0], r[:, :, 0, tiles == 1][..., 0])
    if scope == "chip":
        assert all(torch.allclose(ratios[0], r, atol=1e-5) for r in ratios)  # one draw shared by all layers
        assert ratios[0].std() > 0.05  # ... and different between chips


def test_drift_follows_power_law_and_compensation_restores_scale():
    nu, t = 0.05, 1000.0
    c = cfg(**{"device.drift.nu_mean": nu, "device.drift.t_read": t})
    net = linear()
    ref = F.linear
    model = nvcim.convert(net, c, chips=2, seed=0)
    layer = model.analog_layers()[0]
    pos, _ = layer.crossbar.nominal()
    xb = layer.crossbar
    assert torch.allclose(xb.effective()[0] / pos, torch.full_like(xb.g_pos, t ** -nu), rtol=1e-5)
    c2 = cfg(**{"device.drift.nu_mean": nu, "device.drift.nu_std": 0.02, "device.drift.t_read": t})
    layer2 = nvcim.convert(linear(), c2, chips=20, seed=0).analog_layers()[0]
    log_ratio = (layer2.crossbar.effective()[0] / layer2.crossbar.nominal()[0]).log().flatten()
    expected = -nu * math.log(t)
    assert abs(log_ratio.mean().item() - expected) < 5 * 0.02 * math.log(t) / math.sqrt(log_ratio.numel())
    comp = cfg(**{"device.drift.nu_mean": nu, "device.drift.t_read": t, "device.drift.compensate": True})
    net3 = linear()
    w = net3[0].weight.detach().clone()
    model3 = nvcim.convert(net3, comp, chips=1, seed=0)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(model3(x)[0], ref(x, w), atol=1e-5)
        assert torch.allclose(model(x)[0], ref(x, w) * t ** -nu, atol=1e-5)


def test_state_dependent_middle_states_spread_s_times_more():
    c = override(preset("fefet-2bit"), {"device.faults.sa0": 0.0})
    model = nvcim.convert(linear(k=256, o=64), c, chips=40, seed=1)
    layer = model.analog_layers()[0]
    pos, _ = layer.crossbar.nominal()
    levels = torch.linspace(c.device.g_min, c.device.g_max, 4)
    err = (layer.crossbar.g_pos - pos) / c.device.g_max
    sd = [err[((pos - lv).abs() < 1e-9).expand_as(err)].std().item() for lv in levels[1:3]]
    low = err[((pos - levels[0]).abs() < 1e-9).expand_as(err)]
    assert all(abs(s / 0.2 - 1) < 0.1 for s in sd)  # middle states: sigma x 2
    # the lowest level is clipped at 0 conductance, so compare the upper half-width only
    assert abs(low[low > 0].pow(2).mean().sqrt().item() / 0.1 - 1) < 0.1


def test_measured_table_sets_level_statistics(tmp_path):
    table = tmp_path / "levels.csv"
    table.write_text("target,mean,std\n1e-6,1.1e-6,0.1e-6\n5e-5,4.8e-5,2e-6\n1e-4,0.99e-4,3e-6\n")
    c = cfg(**{"device.programming.model": "measured", "device.programming.table": str(table),
               "device.bits_per_cell": 2})
    layer = nvcim.convert(linear(k=128, o=32), c, chips=30, seed=0).analog_layers()[0]
    g = layer.crossbar.g_pos
    for target, mean, std in ((1e-6, 1.1e-6, 0.1e-6), (1e-4, 0.99e-4, 3e-6)):
        sel = g[(layer.crossbar.nominal()[0] == target).expand_as(g)]
        assert sel.numel() > 100
        assert abs(sel.mean().item() - mean) < 5 * std / math.sqrt(sel.numel())
        assert abs(sel.std().item() / std - 1) < 0.15


def test_offset_reference_column_noise_shifts_whole_tile():
    c = cfg(**{"mapping.scheme": "offset", "device.programming.model": "additive",
               "device.programming.sigma": 0.05, "array.cols": 4})
    layer = nvcim.convert(linear(k=16, o=8), c, chips=3, seed=0).analog_layers()[0]
    assert layer.crossbar.g_neg.shape == (3, 1, 2, 16)  # one reference column per column tile
    assert not torch.allclose(layer.crossbar.g_neg[0, 0, 0], layer.crossbar.g_neg[0, 0, 1])


def test_ir_drop_lowers_outputs_in_the_simulator():
    net = linear(k=64, o=8)
    w = net[0].weight.detach().clone()
    model = nvcim.convert(net, cfg(**{"array.wire_resistance": 5.0, "array.rows": 32}), chips=1, seed=0)
    x = torch.rand(50, 64)
    with torch.no_grad():
        y = model(x)[0]
    ideal = F.linear(x, w)
    assert 0.001 < ((ideal - y).abs().mean() / ideal.abs().mean()).item() < 0.2


def test_analog_layer_is_a_torch_module():
    model = nvcim.convert(linear(), preset("rram-mlc-4bit"), chips=2, seed=0)
    layer = model.analog_layers()[0]
    assert isinstance(layer, AnalogLinear) and isinstance(layer, nn.Module)
    assert isinstance(model.config, ChipConfig)
    assert layer.crossbar.g_pos.shape == (2, 1, 8, 64)


@pytest.mark.parametrize("compile_,variance", [("off", "float32"), ("on", "float32"), ("on", "bfloat16")])
def test_paired_read_noise_of_a_convolution_is_independent_with_the_analytic_spread(compile_, variance):
    """Columns 2j and 2j+1 take the cosine and the sine of one Box-Muller draw: each must still have the
    analytic read-noise spread, and neighbours of a pair must be uncorrelated (|r| within 5 / sqrt(n)), eager
    and compiled. (The fused tail loops are checked against this path to the bit in test_tail.py.)"""
    from nvcim.chip import Runtime

    sr, n = 0.05, 4000
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    net = nn.Sequential(conv).eval()
    model = nvcim.convert(net, cfg(**{"device.read_noise": sr}), chips=1, seed=0,
                          runtime=Runtime(compile=compile_, variance=variance))
    x = torch.rand(1, 1, 4, 6).expand(n, 1, 4, 6).contiguous()  # the same image read n times
    with torch.no_grad():
        y = model(x)[0].double()  # (n, 3, 4, 6)
    lay = model.analog_layers()[0]
    m = lay.crossbar.mapped()
    w2 = (m.scale.double().view(-1, 1) ** 2) * (sr**2) * (m.pos[0].double() ** 2 + m.neg[0].double() ** 2)
    var = F.conv2d(x[:1].double() ** 2, w2.view(3, 1, 3, 3), padding=1)[0]  # (3, 4, 6)
    sd = var.sqrt()
    assert ((y.std(0) - sd).abs() < 5 * sd / math.sqrt(2 * (n - 1))).all()
    z = (y - y.mean(0)) / y.std(0)
    r = (z[..., 0::2] * z[..., 1::2]).mean(0)  # correlation of each pair of columns
    assert (r.abs() < 5 / math.sqrt(n)).all()
    r_rows = (z[:, :, 0::2] * z[:, :, 1::2]).mean(0)  # neighbouring rows are different pairs
    assert (r_rows.abs() < 5 / math.sqrt(n)).all()


@pytest.mark.parametrize("compile_", ["off", "on"])
def test_bfloat16_variance_scales_each_read_noise_draw_within_its_rounding_bound(compile_):
    """Runtime(variance="bfloat16") rounds x^2 and the G^2 weights to bfloat16 (unit roundoff u = 2^-8) and
    accumulates in float32, then stores the sum in bfloat16: each variance is within (1 + u)^3 - 1 < 1.2 %
    of its float32 value, so each noise std within 0.6 %. With no converters an output is the exact product
    plus sqrt(var) z, and both runs draw the same z for the same read key, so the ratio of the two
    deviations from the noise-free output is exactly the ratio of the two stds."""
    from nvcim.chip import Runtime

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)).eval()
    x = torch.rand(64, 3, 6, 6)
    runs = {}
    for v in ("float32", "bfloat16"):
        model = nvcim.convert(copy.deepcopy(net), cfg(**{"device.read_noise": 0.05}), chips=3, seed=0,
                              runtime=Runtime(compile=compile_, variance=v))
        first = model.analog_layers()[0]
        captured = []
        hook = first.register_forward_hook(lambda mod, inp, out, keep=captured: keep.append(out))
        with torch.no_grad():
            model(x, read_key=5)
            hook.remove()
            ideal = first.digital(x).double()
        runs[v] = captured[-1].double().view(64, 3, 8, 6, 6).transpose(0, 1) - ideal  # (chips, B, ...)
    dev32, dev16 = runs["float32"], runs["bfloat16"]
    big = dev32.abs() > 1e-3 * dev32.abs().max()  # away from float32's own rounding of tiny deviations
    ratio = dev16[big] / dev32[big]
    assert (ratio - 1).abs().max() < 0.006, float((ratio - 1).abs().max())
    assert (ratio != 1).float().mean() > 0.5  # the reduced products did run
    assert float((ratio - 1).abs().mean()) < 0.002  # rounding errors average over the summed terms


def test_variance_format_auto_picks_bfloat16_only_for_float32_runs_on_cpus_that_have_it(monkeypatch):
    from nvcim.chip import Runtime
    from nvcim.chip import runtime as chip_model

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native, expect in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(chip_model, "native_bf16", lambda native=native: native)
        assert chip_model.variance_dtype(Runtime(), torch.float32, cpu) == expect
        assert chip_model.variance_dtype(Runtime(), torch.float64, cpu) is None  # float64 runs stay exact
        assert chip_model.variance_dtype(Runtime(), torch.float32, gpu) is None
        assert chip_model.variance_dtype(Runtime(variance="float32"), torch.float32, cpu) is None
        assert chip_model.variance_dtype(Runtime(variance="bfloat16"), torch.float32, gpu) == torch.bfloat16
    with pytest.raises(nvcim.ConfigError, match="variance.*'auto', 'float32', 'bfloat16'"):
        Runtime(variance="half")
