"""Nothing digital without saying so: every matrix weight is on the chip or named in the conversion report,
with its share; a layer fed a tensor that does not follow the batch is a clear error, never mixed chips.

These tests need no package beyond the core; tests/test_transformers_models.py runs real Hugging Face models."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.chip.transposed_linear import AnalogTransposedLinear
from nvcim.config import override, preset
from nvcim.errors import ConversionError, NvcimError
from nvcim.experiments.models import MODELS as BUILTIN

NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})


class Conv1D(nn.Module):
    """The layout of ``transformers.pytorch_utils.Conv1D`` (GPT-2): y = x @ W + b with W of shape (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class MyLinear(nn.Module):
    """A layer kind nvcim does not know: its product would silently stay digital without the report."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / i**0.5)

    def forward(self, x):
        return F.linear(x, self.weight)


def test_a_gpt2_conv1d_is_on_the_chip_exactly_as_the_linear_layer_with_its_transposed_weight():
    """Same draws (same layer name and seed), same cells: each chip's outputs equal, read noise, DAC and
    ADC included, and the layer keeps the module's own (in, out) Parameter in its state_dict."""
    torch.manual_seed(0)
    conv = nn.Sequential(Conv1D(12, 20)).eval()
    lin = nn.Sequential(nn.Linear(20, 12)).eval()
    with torch.no_grad():
        lin[0].weight.copy_(conv[0].weight.T)
        lin[0].bias.copy_(conv[0].bias)
    x = torch.randn(5, 7, 20)
    with torch.no_grad():
        ref = conv(x)
    a, b = nvcim.convert(conv, NOISY, chips=4, seed=3), nvcim.convert(lin, NOISY, chips=4, seed=3)
    assert isinstance(a.net[0], AnalogTransposedLinear) and a.report.analog_share == 1.0
    a.calibrate(x)
    b.calibrate(x)
    with torch.no_grad():
        ya, yb = a(x, read_key=1), b(x, read_key=1)
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
    assert (ya[0] - ya[1]).abs().max() > 1e-3  # the chips differ
    assert a.net.state_dict()["0.weight"].shape == (20, 12)
    ideal = nvcim.convert(nn.Sequential(Conv1D(12, 20)).eval(), "ideal", chips=2)
    with torch.no_grad():
        torch.testing.assert_close(ideal(x)[1], ideal.digital(x), rtol=1e-5, atol=1e-5)
    assert ref.shape == ya.shape[1:]


def test_a_module_that_only_looks_like_conv1d_is_not_converted_but_reported():
    """Structure, not the name alone: a ``Conv1D`` without ``nf`` matching its weight is left digital and
    named as a module kind with no analog layer."""

    class Conv1D(MyLinear):  # noqa: N801 - the name of the class the matcher looks for
        pass

    net = nn.Sequential(nn.Linear(6, 6), Conv1D(6, 6)).eval()
    rep = nvcim.convert(net, "ideal", chips=1).report
    assert [n for n, _, _ in rep.digital] == ["1"] and rep.digital_weights == {"1": 36}


def test_the_report_counts_every_matrix_weight_and_warns_above_one_percent(caplog):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), MyLinear(10, 5), nn.LayerNorm(5), nn.Embedding(7, 5)).eval()
    with caplog.at_level(logging.INFO, logger="nvcim"):
        m = nvcim.convert(net, "ideal", chips=1)
    rep = m.report
    # the Linear's 100 weights on the chip; MyLinear's 50 digital; the norm and the table are no matrix
    assert rep.analog_weights == 100 and rep.digital_weights == {"1": 50}
    assert rep.analog_share == pytest.approx(100 / 150)
    assert [(n, k) for n, k, _ in rep.digital] == [("1", "MyLinear")]
    assert "66.7 % of the matrix weights on the chip (100 of 150)" in rep.summary()
    assert "1 (MyLinear" in rep.summary() and "50 weights, 33.3 %" in rep.summary()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "MyLinear" in warned[0].getMessage()
    d = rep.to_dict()
    assert d["analog_share"] == pytest.approx(2 / 3) and d["digital_weights"] == {"1": 50}


def test_under_one_percent_or_by_filter_fn_is_no_warning(caplog):
    big = nn.Sequential(nn.Linear(100, 100), MyLinear(10, 5)).eval()  # 50 of 10 050: 0.5 %
    with caplog.at_level(logging.INFO, logger="nvcim"):
        rep = nvcim.convert(big, "ideal", chips=1).report
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert rep.analog_share == pytest.approx(10000 / 10050)
    caplog.clear()
    kept = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)).eval()
    with caplog.at_level(logging.INFO, logger="nvcim"):
        rep = nvcim.convert(kept, "ideal", chips=1, filter_fn=lambda mod, n: n != "1").report
    assert rep.analog_share == 0.5 and rep.digital == [("1", "Linear", "excluded by filter_fn")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("excluded by filter_fn" in r.getMessage() for r in caplog.records)  # said, at INFO


def test_strict_refuses_and_leaves_the_model_as_it_was():
    net = nn.Sequential(nn.Linear(8, 8), MyLinear(8, 8), nn.Conv3d(1, 1, 2)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConversionError, match=r"strict conversion.*1 \(MyLinear.*2 \(Conv3d"):
        nvcim.convert(net, "ideal", chips=1, strict=True)
    assert type(net[0]) is nn.Linear  # the swap was undone
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # excluded on purpose is not refused
    ok = nvcim.convert(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).eval(), "ideal", chips=1, strict=True,
                       filter_fn=lambda mod, n: n == "0")
    assert ok.report.analog_share == 0.5
    with pytest.raises(nvcim.ConfigError, match="strict"):
        nvcim.convert(nn.Sequential(nn.Linear(2, 2)), "ideal", chips=1, strict="yes")


def test_tables_norms_and_tied_weights_are_not_counted_twice_or_as_digital():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.pos = nn.Parameter(torch.zeros(1, 4, 6))  # a positional table, broadcast over the batch
            self.norm = nn.LayerNorm(6)
            self.head = nn.Linear(6, 11, bias=False)
            self.head.weight = self.emb.weight  # tied, as language models do

        def forward(self, t):
            return self.head(self.norm(self.emb(t) + self.pos))

    m = nvcim.convert(Tied().eval(), "ideal", chips=2)
    assert m.report.analog_weights == 66 and m.report.digital == [] and m.report.analog_share == 1.0
    t = torch.randint(0, 11, (3, 4))
    with torch.no_grad():
        torch.testing.assert_close(m(t)[0], m.digital(t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_model_is_wholly_on_the_chip(name):
    shape = (3, 32, 32) if name in ("resnet18", "mobilenetv2", "vgg") else (64,) if name == "gpt" else (1, 28, 28)
    classes = 256 if name == "gpt" else 10
    rep = nvcim.convert(BUILTIN[name](shape, classes).eval(), "ideal", chips=1).report
    assert rep.digital == [] and rep.analog_share == 1.0 and rep.analog_weights > 0


class Queries(nn.Module):
    """Learned queries through an analog projection, as DETR and Perceiver do: ``self.proj(self.queries)``."""

    def __init__(self, q: int, expand: bool) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(q, 8))
        self.proj, self.inp, self.expand = nn.Linear(8, 8), nn.Linear(8, 8), expand

    def forward(self, x):
        h = self.inp(x)  # (B, 8)
        if self.expand:  # the queries made batch-shaped first: every chip's projection is its own
            return torch.einsum("bqe,be->bq", self.proj(self.queries.expand(x.shape[0], -1, -1)), h)
        return h @ self.proj(self.queries).T  # (B, Q)


@pytest.mark.parametrize("q", [4, 12, 5])  # the batch, batch x chips of a block, neither
def test_a_layer_applied_to_a_learned_parameter_is_a_clear_error_never_mixed_chips(q):
    torch.manual_seed(0)
    m = nvcim.convert(Queries(q, expand=False).eval(), NOISY, chips=3)
    x = torch.randn(4, 8)
    with pytest.raises(NvcimError, match=r"analog layer 'proj' multiplies a tensor that does not depend on the "
                                         r"batch.*filter_fn=lambda m, n: n != 'proj'"):
        m.calibrate(x)
    kept = nvcim.convert(Queries(q, expand=False).eval(), NOISY, chips=3, filter_fn=lambda mod, n: n != "proj")
    kept.calibrate(x)
    with torch.no_grad():
        assert kept(x).shape == (3, 4, q)


def test_learned_queries_made_batch_shaped_give_each_chip_its_own_output():
    """The way out the error names: each chip's output equals the plain model run with that chip's weights
    (noise-free chips with programming variation, so that chips differ deterministically)."""
    torch.manual_seed(0)
    cfg = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.0})
    net = Queries(4, expand=True).eval()
    m = nvcim.convert(net, cfg, chips=3)
    x = torch.randn(4, 8)
    m.calibrate(x)
    with torch.no_grad():
        y = m(x)
    layers = {lay.layer_name: lay for lay in m.analog_layers()}
    read = {n: lay.crossbar.decode(lay.crossbar.conductances(*lay.crossbar.effective())[0])  # (chips, O, K)
            for n, lay in layers.items()}
    for k in range(3):
        w = {name: read[name][k] for name in ("proj", "inp")}
        h = F.linear(x, w["inp"], net.inp.bias)
        q = F.linear(net.queries, w["proj"], net.proj.bias)
        torch.testing.assert_close(y[k], h @ q.T, rtol=1e-4, atol=1e-4)
    assert (y[0] - y[1]).abs().max() > 1e-3
