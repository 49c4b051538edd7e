"""IBM's PCM statistical model (Nandakumar et al. 2019; Joshi et al. 2020), checked against its formulas: the
drawn conductances' mean and std at ten target levels and three times, the 1/f read noise's growth with
time, and drift compensation. Tolerances are derived from the sample sizes (5 standard errors)."""

import copy
import math

import pytest
import torch
from torch import nn

import nvcim
from nvcim.circuits.read_noise_pcm import T_R, time_factor
from nvcim.config import override, preset
from nvcim.devices.pcm import drift_mean_std, programming_sigma

G_MAX = 25e-6
LEVELS = torch.linspace(0.1, 1.0, 10)  # normalised targets g_T
CELLS = 4000  # cells per level and chip
T_C = 20.0


def _cells(t_read: float, chips: int = 5, **changes):
    """Conductances (chips, level, cell) at t0 and at t_read of cells programmed to the ten levels."""
    cfg = override(preset("pcm"), {"device.drift.t_read": t_read, "circuit.dac_bits": 0, "circuit.adc_bits": 0,
                                   "device.drift.compensate": False, **changes})
    lin = nn.Linear(CELLS, len(LEVELS), bias=False)
    with torch.no_grad():
        lin.weight.copy_(LEVELS.view(-1, 1).expand(-1, CELLS))  # max|W| = 1 -> g_max: column j at g_T[j]
    m = nvcim.convert(nn.Sequential(lin).eval(), cfg, chips=chips, seed=1)
    lay = m.analog_layers()[0]
    (g0, _), (gt, _) = lay.crossbar.programmed(), lay.crossbar.effective()
    return g0[:, 0].double(), gt[:, 0].double(), m


def _nu_moments(g_t: torch.Tensor, log_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E[exp(-k nu L)] for k = 1, 2, nu = |mu + s z| (the fit), by quadrature over z."""
    z = torch.linspace(-9, 9, 20001, dtype=torch.float64)
    w = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi) * (z[1] - z[0])
    mu, s = drift_mean_std(g_t.float() * G_MAX, G_MAX)
    nu = (mu.double().view(-1, 1) + s.double().view(-1, 1) * z).abs()
    return (torch.exp(-nu * log_ratio) * w).sum(1), (torch.exp(-2 * nu * log_ratio) * w).sum(1)


@pytest.mark.parametrize("t", [T_C, T_C + 3600.0, T_C + 3.15576e7])  # the reference read, 1 hour, 1 year
def test_conductance_mean_and_std_at_ten_levels_match_the_fit(t):
    g0, gt, _ = _cells(t)
    n = g0.shape[0] * g0.shape[2]
    target = LEVELS.double() * G_MAX
    sp = programming_sigma(LEVELS * G_MAX, G_MAX).double()
    # programming at t0: mean g_T g_max, std the polynomial (in uS at 25 uS)
    fit = [0.26348 + 0.19650 - 0.011731, 0.26348 + 1.9650 - 1.1731]  # uS at g_T = 0.1 and 1
    torch.testing.assert_close(sp[[0, -1]] / 1e-6, torch.tensor(fit, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    mean0, std0 = g0.mean(dim=(0, 2)), g0.std(dim=(0, 2))
    assert ((mean0 - target).abs() < 5 * sp / math.sqrt(n)).all(), (mean0 - target) / (sp / math.sqrt(n))
    assert ((std0 - sp).abs() < 5 * sp / math.sqrt(2 * n)).all(), std0 / sp
    # at t: G(t) = G0 (t / t_c)^-nu, nu independent of G0
    e1, e2 = _nu_moments(LEVELS.double(), math.log(t / T_C))
    mean_t = target * e1
    std_t = ((target**2 + sp**2) * e2 - mean_t**2).sqrt()
    got_mean, got_std = gt.mean(dim=(0, 2)), gt.std(dim=(0, 2))
    assert ((got_mean - mean_t).abs() < 5 * std_t / math.sqrt(n)).all(), (got_mean - mean_t) / (std_t / math.sqrt(n))
    assert ((got_std - std_t).abs() < 5 * std_t * math.sqrt(2 / n) + 1e-12).all(), got_std / std_t
    if t > T_C:  # drift lowers every level, the lowest most (mu_nu grows as g_T falls)
        assert (got_mean < mean0).all() and (got_mean / mean0)[0] < (got_mean / mean0)[-1]


def test_the_drift_exponent_follows_its_clipped_fit():
    mu, s = drift_mean_std(torch.tensor([1e-9, 0.01, 0.1, 1.0]) * G_MAX, G_MAX)
    ln = torch.log(torch.tensor([1e-7, 0.01, 0.1, 1.0]))  # g_T clipped below at 1e-7, as the fit
    torch.testing.assert_close(mu, (-0.0155 * ln + 0.0244).clamp(0.049, 0.1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s, (-0.0125 * ln - 0.0059).clamp(0.008, 0.045), rtol=1e-5, atol=1e-7)
    assert float(mu[0]) == pytest.approx(0.1) and float(s[-1]) == pytest.approx(0.008)


@pytest.mark.parametrize("t", [T_C + 3600.0, T_C + 3.15576e7])
def test_read_noise_of_a_matrix_vector_product_grows_with_time_as_the_fit_says(t):
    """One-hot input through one noise-free programmed chip (no programming noise, no drift spread): each
    output's read-noise std over many reads is |G| Q_s sqrt(ln((t + t_r) / (2 t_r))) in weight units."""
    g0, gt, m = _cells(t, chips=1, **{"device.programming.sigma": 0.0})
    lay = m.analog_layers()[0]
    reads = 4000
    x = torch.zeros(reads, CELLS)
    x[:, 7] = 1.0  # cell 7 of every level
    with torch.no_grad():
        y = m(x, read_key=3)[0].double()  # (reads, levels)
    g_read, g_prog = gt[0, :, 7], g0[0, :, 7]
    q = (0.0088 / (g_prog / G_MAX).pow(0.65).clamp_min(1e-3)).clamp_max(0.2)
    expected = q * g_read * time_factor(t) * float(lay.crossbar.scale.max())  # weight units per siemens
    got = y.std(0)
    assert ((got - expected).abs() < 5 * expected / math.sqrt(2 * reads)).all(), got / expected
    assert time_factor(T_C + 3.15576e7) / time_factor(T_C + 3600.0) == pytest.approx(
        math.sqrt(math.log((T_C + 3.15576e7 + T_R) / (2 * T_R)) / math.log((T_C + 3600.0 + T_R) / (2 * T_R))))


def test_compensation_returns_a_drifted_noise_free_chip_to_the_digital_output():
    """Drift alone (no programming or read noise, one drift exponent for every cell: the power law with no
    spread) scales every output by (t/t_c)^-nu; global compensation undoes it exactly. With the PCM fit's
    state-dependent drift, compensation restores the outputs' overall scale."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16)).eval()
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref = net(x)
    bias = net[0].bias.detach().clone()
    base = {"device.programming.sigma": 0.0, "device.read_noise": 0.0, "circuit.dac_bits": 0,
            "circuit.adc_bits": 0, "device.drift.t_read": T_C + 3.15576e7}
    uniform = override(preset("pcm"), {**base, "device.drift.model": "power-law", "device.drift.nu_mean": 0.06})
    m = nvcim.convert(copy.deepcopy(net), uniform, chips=2)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], ref, rtol=1e-4, atol=1e-5)
    off = override(uniform, {"device.drift.compensate": False})
    with torch.no_grad():
        y = nvcim.convert(copy.deepcopy(net), off, chips=1)(x)[0]
    assert ((y - bias) / (ref - bias)).median() == pytest.approx((3.15576e7 / T_C + 1) ** -0.06, rel=1e-3)
    fit = nvcim.convert(copy.deepcopy(net), override(preset("pcm"), base), chips=4)
    with torch.no_grad():
        yc, yd = fit(x).mean(0) - bias, fit.digital(x) - bias
    ratio = (yc * yd).sum() / (yd * yd).sum()  # least-squares scale of the mean chip output against the ideal
    assert float(ratio) == pytest.approx(1.0, abs=0.05)


def test_a_rewritten_pcm_cell_draws_its_drift_exponent_again():
    """Re-programming melts and re-forms the cell: its nu is a fresh draw from the fit at its new target
    (untouched cells keep theirs), so a re-written chip's drift factors have the fit's spread, not the old one."""
    t = T_C + 3.15576e7  # a year: drift factors spread widely
    _, _, m = _cells(t, chips=2)
    xb = m.analog_layers()[0].crossbar
    before = xb.drift_pos.clone()
    mask = torch.zeros_like(xb.g_pos, dtype=torch.bool)
    mask[..., : CELLS // 2] = True  # the first half of every level's cells
    xb.rewrite("pos", mask)
    after = xb.drift_pos
    live = mask & (xb.faults_pos == 0)
    assert torch.equal(after[~live], before[~live])  # untouched (and stuck) cells keep their exponent
    changed = (after != before)[live].double().mean()
    assert changed > 0.99  # every re-written cell drew a new one
    # the new factors follow the same law: per level, mean and std of the factor match the untouched half's
    lr = math.log(t / T_C)
    m1, m2 = _nu_moments(LEVELS, lr)
    sd = (m2 - m1**2).sqrt()
    for j in range(len(LEVELS)):
        new = after[:, 0, j, : CELLS // 2].double().flatten()
        new = new[new != 1.0]
        se = float(sd[j]) / math.sqrt(new.numel())
        assert abs(float(new.mean()) - float(m1[j])) < 5 * se + 1e-6
