"""The digital tail (ReLU, max pooling) fused into a convolution's epilogue changes no result."""

import copy

import pytest
import torch
from helpers import lenet
from torch import nn

import nvcim
from nvcim.chip import Runtime, SimulatedChip
from nvcim.chip.tail import Absorbed
from nvcim.config import override, preset

NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.05, "circuit.dac_bits": 8, "circuit.adc_bits": 6,
                                          "circuit.adc_gain_sigma": 0.02, "circuit.adc_offset_sigma": 0.01,
                                          "array.rows": 64})


def _x(n=12, side=28, seed=0):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _convert(model, chips=4, block=3):
    m = nvcim.convert(model, NOISY, chips=chips, seed=3, runtime=Runtime(compile="on", chip_block=block))
    m.calibrate(_x(16, seed=5) if model[0].in_channels == 1 else torch.rand(16, 3, 28, 28))
    return m


def _inner_calls(m):
    """A counter of calls to the absorbed modules themselves (none when every tail ran fused)."""
    calls = [0]
    for mod in m.net.modules():
        if isinstance(mod, Absorbed):
            mod.inner.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _unfused(m):
    """The same chips with every layer's tail switched off (the model's own modules then run)."""
    for lay in m.analog_layers():
        lay.tail = None
    return m


def test_fused_tail_reproduces_the_unfused_model_exactly():
    m = _convert(lenet())
    assert [lay.tail.ops for lay in m.analog_layers() if lay.tail] == [("relu", 2), ("relu", 2)]
    x = _x()
    m.plan(x)  # its one-image digital probe runs the absorbed modules
    calls = _inner_calls(m)
    with torch.no_grad():
        fused = m(x, read_key=7)
        assert calls[0] == 0
        plain = _unfused(m)(x, read_key=7)
        assert calls[0] == 2 * 2 * 2  # 2 blocks x 2 layers x (ReLU, pooling)
    assert fused.shape == (4, 12, 10)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)


def test_pool_before_relu_odd_sizes_and_multi_tile_layers():
    """Pooling that drops a trailing row and column (27 -> 13), pooling before the ReLU, windows of 3, and a
    second convolution split over several row tiles (the general epilogue)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                          nn.Conv2d(5, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10)).eval()
    m = _convert(model, chips=5, block=2)
    tails = [lay.tail.ops for lay in m.analog_layers() if lay.tail]
    assert tails == [(2, "relu"), ("relu", 3)] and m.analog_layers()[1].row_tiles > 1
    x = _x(7, side=27)
    m.plan(x)
    calls = _inner_calls(m)
    with torch.no_grad():
        fused = m(x, read_key=2)
        assert calls[0] == 0
        plain = _unfused(m)(x, read_key=2)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)


def test_fused_results_do_not_depend_on_batch_or_chunking():
    x = _x(20)
    with torch.no_grad():
        whole = _convert(lenet())(x, read_key=1)
        m = _convert(lenet(), block=3)
        m.runtime = Runtime(compile="on", chip_block=3, memory_mb=1.0)  # sub-batches of a few images
        assert m.plan(x)[1] < 20
        parts = torch.cat([m(x[i:i + 6], image_ids=torch.arange(i, min(i + 6, 20)), read_key=1)
                           for i in range(0, 20, 6)], dim=1)
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)


def test_tree_state_dict_and_digital_model_are_unchanged():
    digital = lenet()
    ref = digital(_x())
    keys = set(digital.state_dict())
    m = _convert(digital)
    assert sum(isinstance(mod, Absorbed) for mod in m.net.modules()) == 4
    assert {k for k in m.net.state_dict() if not any(b in k for b in ("g_", "faults", "drift", "adc", "scale",
            "slice", "chip_ids", "tune", "sram", "row_perm", "dac", "writes"))} == keys
    torch.testing.assert_close(m.digital(_x()), ref)
    loaded = _convert(lenet(seed=9))
    loaded.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(), read_key=3), m(_x(), read_key=3), rtol=0, atol=0)


def test_a_captured_layer_shows_its_own_output_and_the_logits_stay_the_same():
    m = _convert(lenet())
    chip = SimulatedChip(m)
    x = _x()
    with torch.no_grad():
        logits, outs = chip.infer(x, capture=["0"])
        plain = m(x, read_key=5)
    assert outs["0"].shape == (4, 12, 6, 28, 28)  # before the ReLU and the pooling
    assert bool((outs["0"] < 0).any())
    assert logits.shape == plain.shape


def test_deep_copy_keeps_layers_and_their_absorbed_modules_paired():
    m = _convert(lenet())
    twin = copy.deepcopy(m)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(twin(x, read_key=4), m(x, read_key=4), rtol=0, atol=0)


@pytest.mark.parametrize("follower", [nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1), nn.BatchNorm2d(6),
                                      nn.MaxPool2d(2, ceil_mode=True)])
def test_only_exact_stateless_tails_are_absorbed(follower):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), follower, nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)).eval()
    model(_x(2))
    m = _convert(model)
    assert m.analog_layers()[0].tail is None
    assert not any(isinstance(mod, Absorbed) for mod in m.net.modules())
