"""Real architectures on the chip: every converted layer runs, ideal chips reproduce the model, noisy chips
differ, state_dict round-trips, and the chip dimension is invisible to the model's own forward code."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.chip import AnalogLayer
from nvcim.config import override, preset
from nvcim.errors import NvcimError
from nvcim.experiments.models import ResNet18, mobilenetv2, vit

NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})


class Conv1dNet(nn.Module):
    """A 1-D convolutional classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.fc = nn.Linear(8 * 28, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x.flatten(2).mean(2, keepdim=True).expand(-1, 1, 28))).flatten(1))


class LSTMNet(nn.Module):
    """Rows of the image as a sequence through a two-layer LSTM, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(28, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(self.inp(x[:, 0]))
        return self.head(out[:, -1])


class SeqFirstTransformer(nn.Module):
    """A sequence-first encoder inside a batch-first model, a GRU, and learned queries cross-attending."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(28, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0), 1,
                                         enable_nested_tensor=False)
        self.gru = nn.GRU(16, 16, bidirectional=True)
        self.q = nn.Parameter(torch.randn(1, 2, 32))
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        z = self.enc(self.emb(x[:, 0]).transpose(0, 1))  # (rows, B, 16)
        z, _ = self.gru(z)
        z = z.transpose(0, 1)  # (B, rows, 32)
        o, _ = self.attn(self.q.expand(z.shape[0], -1, -1), z, z)
        return self.head(o.flatten(1))


MODELS = {
    "resnet18": lambda: ResNet18((3, 32, 32), 10, width=16),
    "resnet18-imagenet-stem": lambda: ResNet18((3, 32, 32), 10, width=16, stem="imagenet"),  # 1x1 maps
    "mobilenetv2": lambda: mobilenetv2((3, 32, 32), 10),
    "vit": lambda: vit((1, 28, 28), 10),
    "conv1d": Conv1dNet,
    "lstm": LSTMNet,
    "seq-first-transformer-gru": SeqFirstTransformer,
}
SHAPES = {"resnet18": (3, 32, 32), "resnet18-imagenet-stem": (3, 32, 32), "mobilenetv2": (3, 32, 32)}


def _model(name, seed=0):
    torch.manual_seed(seed)
    net = MODELS[name]().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _x(name, n=3, seed=1):
    return torch.rand(n, *SHAPES.get(name, (1, 28, 28)), generator=torch.Generator().manual_seed(seed))


def _converted_and_ran(m, x):
    """Every analog layer runs in a chip pass (the pass itself raises otherwise): counted here with hooks."""
    seen = set()
    hooks = [lay.register_forward_hook(lambda mod, i, o: seen.add(id(mod))) for lay in m.analog_layers()]
    try:
        with torch.no_grad():
            y = m(x, read_key=5)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {id(lay) for lay in m.analog_layers()}
    return y


@pytest.mark.parametrize("name", list(MODELS))
def test_ideal_chip_reproduces_the_model(name):
    net = _model(name)
    x = _x(name)
    with torch.no_grad():
        ref = net(x)
    m = nvcim.convert(net, "ideal", chips=3, seed=0)
    m.calibrate(x)
    y = _converted_and_ran(m, x)
    assert y.shape == (3, *ref.shape)
    torch.testing.assert_close(y, ref.expand_as(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_noisy_chips_differ_and_round_trip_through_state_dict(name, tmp_path):
    net = _model(name)
    x = _x(name)
    m = nvcim.convert(net, NOISY, chips=3, seed=0)
    m.calibrate(x)
    y = _converted_and_ran(m, x)
    assert torch.isfinite(y).all()
    assert (y[0] - y[1]).abs().max() > 1e-3  # chips differ
    torch.save(m.state_dict(), tmp_path / "chips.pt")
    again = nvcim.convert(_model(name, seed=7), NOISY, chips=3, seed=5)  # other weights, other chips
    again.load_state_dict(torch.load(tmp_path / "chips.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x, read_key=5), y, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18-imagenet-stem", "mobilenetv2", "vit", "lstm"])
def test_batch_of_one_and_channels_last_give_the_same_chip_outputs(name):
    m = nvcim.convert(_model(name), NOISY, chips=2, seed=0)
    x = _x(name, n=3)
    m.calibrate(x)
    with torch.no_grad():
        y = m(x, read_key=9)
        one = torch.cat([m(x[i:i + 1], image_ids=torch.tensor([i]), read_key=9) for i in range(3)], dim=1)
        cl = m(x.contiguous(memory_format=torch.channels_last), read_key=9)
    torch.testing.assert_close(one, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cl, y, rtol=1e-5, atol=1e-5)


def test_convert_copies_the_model_unless_asked_to_convert_it_in_place():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    chips = nvcim.convert(net, preset("ideal"), chips=2, seed=0)
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in net.modules())  # untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert chips.net is not net and isinstance(chips.net[0], AnalogLayer)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(chips(x), net(x).expand(2, -1, -1), atol=1e-5)  # ideal chip = the digital net
    in_place = nvcim.convert(net, preset("ideal"), chips=2, seed=0, inplace=True)
    assert in_place.net is net and isinstance(net[0], AnalogLayer)


def test_a_model_that_cannot_be_copied_names_inplace():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.gen = (i for i in range(3))  # a generator cannot be deep-copied

    with pytest.raises(NvcimError, match="inplace=True"):
        nvcim.convert(Holder(), preset("ideal"), chips=1)
    with pytest.raises(NvcimError, match="inplace"):
        nvcim.convert(Holder(), preset("ideal"), chips=1, inplace="yes")


def test_conversion_report_names_what_was_converted_and_what_stayed_digital():
    m = nvcim.convert(_model("vit"), "ideal", chips=1)
    converted = dict(m.report.converted)
    assert converted["embed"] == "Linear" and converted["blocks.0.self_attn"] == "MultiheadAttention"
    assert m.report.digital == []
    names = {lay.layer_name for lay in m.analog_layers()}
    assert {"blocks.0.self_attn.in_proj", "blocks.0.self_attn.out_proj", "blocks.0.linear1"} <= names
    lstm = nvcim.convert(_model("lstm"), "ideal", chips=1)
    assert {"lstm.ih_l0", "lstm.hh_l0", "lstm.ih_l1", "lstm.hh_l1"} <= {lay.layer_name for lay in lstm.analog_layers()}
    kept = nvcim.convert(_model("lstm"), "ideal", chips=1, filter_fn=lambda mod, name: name != "head")
    assert ("head", "Linear", "excluded by filter_fn") in kept.report.digital
    odd = nn.Sequential(nn.Linear(4, 4), nn.Conv3d(4, 4, 2), nn.MultiheadAttention(4, 2, add_bias_kv=True))
    rep = nvcim.convert(odd.eval(), "ideal", chips=1).report
    assert [(n, k) for n, k, _ in rep.digital] == [("1", "Conv3d"), ("2", "MultiheadAttention")]
    assert "add_bias_kv" in rep.summary() and "no analog layer" in rep.summary()


def test_a_converted_transformer_called_directly_under_inference_mode_is_the_digital_model():
    """The swapped net is the user's own object: calling it outside the model's passes, even under
    inference_mode (where nn.TransformerEncoderLayer takes its fused fast path), gives the digital output."""
    ref = _model("vit")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = ref(x)
    m = nvcim.convert(copy.deepcopy(ref), "rram-mlc-4bit", chips=2)
    with torch.inference_mode():
        got = m.net(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, m.digital(x), rtol=1e-5, atol=1e-5)


def test_a_converted_layer_that_the_model_bypasses_is_an_error():
    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return F.linear(self.a(x), self.b.weight, self.b.bias)  # b's module never runs

    m = nvcim.convert(Bypass().eval(), "ideal", chips=2)
    with pytest.raises(NvcimError, match="did not run in the chip pass.*filter_fn"):
        m(torch.rand(3, 4))


class Residual(nn.Module):
    """Forward code that folding the chips into the batch at the first analog layer used to break."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(8, 8)
        self.q = nn.Parameter(torch.randn(1, 2, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        b = x.shape[0]
        h = x + self.f(x)  # a global residual: x never passes an analog layer
        h = h.view(b, 2, 4).transpose(1, 2).reshape(b, 8)  # batch size taken from the input
        q = self.q.expand(b, -1, -1)  # learned queries, expanded by the batch
        return self.out(h), {"q": self.out(q + h.unsqueeze(1))}  # a tuple with a dict inside


def test_residuals_reshapes_queries_and_tuple_outputs_see_the_chip_dimension_as_batch():
    torch.manual_seed(0)
    net = Residual().eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        ref_y, ref_d = net(x)
    fresh = copy.deepcopy(net)
    m = nvcim.convert(net, "ideal", chips=4)
    with torch.no_grad():
        y, d = m(x)
    assert y.shape == (4, 5, 3) and d["q"].shape == (4, 5, 2, 3)
    torch.testing.assert_close(y, ref_y.expand_as(y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d["q"], ref_d["q"].expand_as(d["q"]), rtol=1e-5, atol=1e-5)
    noisy = nvcim.convert(fresh, override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02}),
                          chips=4)
    with torch.no_grad():
        y, d = noisy(x)
    assert (y[0] - y[1]).abs().max() > 0 and torch.isfinite(d["q"]).all()


def test_shared_first_layer_product_is_the_per_chip_one():
    """The model's own input is the same for every chip, so the first layer may compute all chips from one
    copy; a model that touches the input first gets the per-chip product. Both give the same numbers."""

    class Net(nn.Module):
        def __init__(self, touch):
            super().__init__()
            self.touch = touch
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 36, 4)

        def forward(self, x):
            x = x * 1.0 if self.touch else x  # a new tensor: not provably the shared input
            return self.fc(F.relu(self.conv(x)).flatten(1))

    x = torch.rand(4, 3, 6, 6)
    models = []
    for touch in (False, True):
        torch.manual_seed(0)
        m = nvcim.convert(Net(touch).eval(), NOISY, chips=5, seed=2)
        m.calibrate(x)
        models.append(m)
    with torch.no_grad():
        torch.testing.assert_close(models[0](x, read_key=3), models[1](x, read_key=3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(groups=2, padding=1), dict(groups=6, padding="same"),
                                dict(padding="same", padding_mode="reflect"),
                                dict(padding=2, dilation=2, padding_mode="circular"),
                                dict(groups=3, stride=2, padding=1, padding_mode="replicate")])
@pytest.mark.parametrize("rows", [128, 18])
def test_every_conv2d_form_on_an_ideal_chip_is_the_digital_convolution(kw, rows):
    torch.manual_seed(0)
    k = 4 if kw.get("padding") == "same" and "groups" not in kw else 3
    net = nn.Sequential(nn.Conv2d(6, 6, 1), nn.Conv2d(6, 12, k, **kw), nn.ReLU(),
                        nn.Conv2d(12, 6, 3, groups=kw.get("groups", 1) if 12 % kw.get("groups", 1) == 0 else 1,
                                  padding=1)).eval()
    x = torch.randn(3, 6, 9, 9)
    with torch.no_grad():
        ref = net(x)
    m = nvcim.convert(net, override(preset("ideal"), {"array.rows": rows}), chips=3)
    y = _converted_and_ran(m, x)
    torch.testing.assert_close(y, ref.expand_as(y), rtol=1e-4, atol=1e-5)


def test_depthwise_read_noise_has_the_analytic_spread_of_its_own_group():
    """Each output channel of a depthwise convolution sums only its own channel's cells: its read-noise
    variance is sum x^2 sr^2 (G+^2 + G-^2) scale^2 over that group's rows (within 5 sigma of the sample std)."""
    sr, n = 0.05, 4000
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)).eval()
    model = nvcim.convert(net, override(preset("ideal"), {"device.read_noise": sr}), chips=1, seed=0)
    x = torch.rand(1, 3, 4, 4).expand(n, 3, 4, 4).contiguous()
    with torch.no_grad():
        y = model(x)[0].double()
    m = model.analog_layers()[0].crossbar.mapped()
    w2 = (m.scale.double().view(-1, 1) ** 2) * (sr**2) * (m.pos[0].double() ** 2 + m.neg[0].double() ** 2)
    sd = F.conv2d(x[:1].double() ** 2, w2.view(3, 1, 3, 3), padding=1, groups=3)[0].sqrt()
    assert ((y.std(0) - sd).abs() < 5 * sd / math.sqrt(2 * (n - 1))).all()


def test_analog_layers_are_registered_not_enumerated():
    from nvcim.chip.registry import converter_for, digital_reason

    assert converter_for(nn.Linear(2, 2)) is not None and converter_for(nn.Conv2d(1, 1, 1)) is not None
    assert converter_for(nn.LSTM(2, 2)) is not None and converter_for(nn.MultiheadAttention(4, 2)) is not None
    assert converter_for(nn.ConvTranspose2d(1, 1, 1)) is not None and converter_for(nn.Conv3d(1, 1, 1)) is None
    assert "no analog layer" in digital_reason(nn.ConvTranspose3d(1, 1, 1))
    assert all(isinstance(lay, AnalogLayer) for lay in nvcim.convert(_model("mobilenetv2"), "ideal",
                                                                     chips=1).analog_layers())


def test_each_read_of_a_layer_in_one_forward_draws_fresh_read_noise():
    """A layer read twice in one forward (a recurrent cell's steps, a shared layer) gets independent read
    noise each time: the two reads' deviations are uncorrelated (|r| within 5 / sqrt(n)) and each has the
    analytic spread of one read."""
    sr, n = 0.05, 4000

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4, bias=False)

        def forward(self, x):
            return torch.stack([self.fc(x), self.fc(x)], dim=1)

    torch.manual_seed(0)
    model = nvcim.convert(Twice().eval(), override(preset("ideal"), {"device.read_noise": sr}), chips=1)
    x = torch.rand(1, 16).expand(n, 16).contiguous()
    with torch.no_grad():
        y = model(x)[0].double()  # (n, 2, 4)
    m = model.analog_layers()[0].crossbar.mapped()
    w2 = (m.scale.double().view(-1, 1) ** 2) * (sr**2) * (m.pos[0].double() ** 2 + m.neg[0].double() ** 2)
    sd = (w2 @ (x[0].double() ** 2)).sqrt()  # (4,)
    for k in range(2):
        assert ((y[:, k].std(0) - sd).abs() < 5 * sd / math.sqrt(2 * (n - 1))).all()
    z = (y - y.mean(0)) / y.std(0)
    assert ((z[:, 0] * z[:, 1]).mean(0).abs() < 5 / math.sqrt(n)).all()


@pytest.mark.parametrize("kw", [dict(stride=2), dict(stride=2, padding=1, output_padding=1),
                                dict(stride=3, padding=2, dilation=2, groups=2), dict(stride=(2, 1), padding=(0, 1))])
def test_conv_transpose2d_on_an_ideal_chip_is_the_digital_one_and_keeps_its_weight_layout(kw, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ConvTranspose2d(4, 6, 3, **kw), nn.ReLU(),
                        nn.ConvTranspose2d(6, 2, 2, stride=2)).eval()
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        ref = net(x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    m = nvcim.convert(net, override(preset("ideal"), {"array.rows": 9}), chips=3)
    y = _converted_and_ran(m, x)
    torch.testing.assert_close(y, ref.expand_as(y), rtol=1e-4, atol=1e-5)
    lay = m.analog_layers()[1]
    assert torch.equal(lay.from_matrix(lay.as_matrix(lay.weight.detach())), lay.weight.detach())
    torch.testing.assert_close(lay.fresh_weights(7), lay.weight.detach(), rtol=0, atol=1e-6)  # training's chip
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in m.net.state_dict().items()
                                                       if k in state}
    noisy = nvcim.convert(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, **kw)).eval(), NOISY, chips=2)
    noisy.calibrate(x)
    with torch.no_grad():
        out = noisy(x)
    assert torch.isfinite(out).all() and (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_where_torchvision_is_installed(arch):
    """pip install 'nvcim[vision]' (torchvision; not installable beside this machine's CPU torch build)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = getattr(tv.models, arch)(num_classes=10, width_mult=0.25) if arch == "mobilenet_v2" else \
        getattr(tv.models, arch)(num_classes=10)
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    m = nvcim.convert(net, "ideal", chips=2)
    y = _converted_and_ran(m, x)
    torch.testing.assert_close(y, ref.expand_as(y), rtol=1e-4, atol=1e-4)
    noisy = nvcim.convert(getattr(tv.models, arch)(num_classes=10).eval(), NOISY, chips=2)
    noisy.calibrate(x)
    with torch.no_grad():
        assert torch.isfinite(noisy(x)).all()


@pytest.mark.parametrize("name", ["ideal", "rram-sliced-1bit"])
def test_the_training_chip_holds_the_current_weights_after_training_moved_them(name):
    """Noise-injection training draws a chip programmed with the *current* weights. Once training has moved
    the weights (here: grown 3x, per column differently), a noise-free fresh chip must decode to them, not to
    them rescaled by the column scale of the chips programmed before training (the qvat defect of 382c7f0)."""
    torch.manual_seed(0)
    cfg = preset(name) if name == "ideal" else override(preset(name), {
        "device.programming.sigma": 0.0, "device.faults.sa0": 0.0, "device.faults.sa1": 0.0,
        "device.read_noise": 0.0})
    m = nvcim.convert(nn.Sequential(nn.Linear(16, 6)).eval(), cfg, chips=2)
    lay = m.analog_layers()[0]
    with torch.no_grad():
        lay.weight.mul_(torch.linspace(1.0, 3.0, 6).view(-1, 1)).add_(0.05 * torch.randn_like(lay.weight))
    w = lay.weight.detach()
    # 8-bit weights (sign included): 127 levels a side of the largest column, rounding at most half a step
    half_step = 1.001 * float(w.abs().max()) / 254 if name != "ideal" else 1e-6
    torch.testing.assert_close(lay.fresh_weights(7), w, rtol=0, atol=half_step)
