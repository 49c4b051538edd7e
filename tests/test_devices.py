"""The same chips and results on every device PyTorch offers here (the CPU always; a CUDA GPU where there is one).

On a machine without a GPU these tests check the CPU against a fresh CPU build of the same chips; on a GPU
machine (`pytest tests/test_devices.py`) every test also runs with ``device = cuda`` and compares against
the CPU. docs/benchmarks.md records where they last ran on a GPU.
"""

import io
import math

import pytest
import torch
from helpers import copy_of, lenet

import nvcim
from nvcim.chip import Runtime
from nvcim.config import override, preset
from nvcim.experiments import load_dataset, trained_model
from nvcim.methods import TaskData, get, recover

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                           "circuit.adc_bits": 8, "variability.between_sigma": 0.05})


def _x(n=32, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def test_ideal_chip_reproduces_the_digital_model_on_the_device(device):
    net = lenet().to(device)
    x = _x().to(device)
    chips = nvcim.convert(copy_of(net).to(device), preset("ideal"), chips=3, seed=0)
    with torch.no_grad():
        ref, out = net(x), chips(x)
    assert out.device.type == device.type and out.shape == (3, 32, 10)
    torch.testing.assert_close(out, ref.expand(3, -1, -1), rtol=1e-4, atol=1e-4)


def test_chips_programmed_on_the_device_are_the_cpu_chips(device):
    on_cpu = nvcim.convert(lenet(), NOISY, chips=5, seed=3)
    on_dev = nvcim.convert(lenet().to(device), NOISY, chips=5, seed=3)
    for a, b in zip(on_cpu.analog_layers(), on_dev.analog_layers()):
        assert b.crossbar.g_pos.device.type == device.type
        # counter-based draws: the same devices, whatever the device that simulates them
        torch.testing.assert_close(b.crossbar.g_pos.cpu(), a.crossbar.g_pos, rtol=1e-5, atol=1e-9)
        assert torch.equal(b.crossbar.faults_pos.cpu(), a.crossbar.faults_pos)


def test_outputs_on_the_device_match_the_cpu_within_float_rounding(device):
    x = _x()
    ref = nvcim.convert(lenet(), NOISY, chips=4, seed=1)
    dev = nvcim.convert(lenet().to(device), NOISY, chips=4, seed=1)
    ref.calibrate(x)
    dev.calibrate(x.to(device))
    with torch.no_grad():
        a, b = ref(x, read_key=7), dev(x.to(device), read_key=7)
    # ADC rounding can flip a code where float sums differ in the last bit: compare the class decisions
    # and the logits with a tolerance of one ADC step of the last layer.
    agree = (a.argmax(-1) == b.cpu().argmax(-1)).float().mean().item()
    assert agree >= 0.95
    step = 2 * float(ref.analog_layers()[-1].converters.adc_fs.max()) / (2 ** 8 - 1)
    assert (a - b.cpu()).abs().median().item() <= step


def test_state_dict_saved_on_the_device_loads_on_the_cpu(device):
    x = _x(8)
    src = nvcim.convert(lenet().to(device), NOISY, chips=3, seed=2)
    src.calibrate(x.to(device))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = nvcim.convert(lenet(), preset("ideal"), chips=3, seed=99)
    dst.load_state_dict(torch.load(buf, weights_only=True, map_location="cpu"))
    for a, b in zip(src.analog_layers(), dst.analog_layers()):
        xa, xb = a.crossbar, b.crossbar
        assert torch.equal(xa.g_pos.cpu(), xb.g_pos) and torch.equal(xa.faults_neg.cpu(), xb.faults_neg)


def test_evaluate_on_the_device_is_independent_of_chunking(device):
    x, y = _x(40), torch.arange(40) % 10
    a = nvcim.convert(lenet().to(device), NOISY, chips=6, seed=4, runtime=Runtime(chip_block=6))
    b = nvcim.convert(lenet().to(device), NOISY, chips=6, seed=4, runtime=Runtime(chip_block=2))
    auto = nvcim.convert(lenet().to(device), NOISY, chips=6, seed=4)  # chip_block 0: sized for the device
    for m in (a, b, auto):
        m.calibrate(x)
    ra = nvcim.evaluate(a, (x, y), batch_size=40, progress=False)
    rb = nvcim.evaluate(b, (x, y), batch_size=7, progress=False)
    r_auto = nvcim.evaluate(auto, (x, y), batch_size=40, progress=False)
    assert ra.accuracy.per_chip == rb.accuracy.per_chip == r_auto.accuracy.per_chip
    # a CPU computes 10 chips at a time; a GPU every chip that a quarter of its free memory holds (all six)
    assert auto.chip_block() == 6 and auto.runtime_record()["chip_block_resolved"] == 6


MLC = preset("rram-mlc-4bit")
CASES = {  # chain: (config, method options); each is a setting where test_methods shows the gain on the CPU
    "vat": (override(MLC, {"device.faults.sa1": 0.02}), {"epochs": 20}),
    "qvat": (override(MLC, {"device.faults.sa1": 0.02}), {"epochs": 20}),
    "kd": (override(MLC, {"device.faults.sa1": 0.02}), {"epochs": 20}),
    "rsa": (MLC, {"fraction": 0.05, "epochs": 2, "samples": 1024}),
    "write-verify": (preset("rram-sliced-1bit"), {"fraction": 0.1}),
    "self-tune": (override(preset("ideal"), {
        "device.bits_per_cell": 4, "device.programming.model": "lognormal", "device.programming.sigma": 0.05,
        "variability.between_sigma": 0.5, "variability.scope": "array", "array.rows": 32}), {}),
    "chip-kd": (MLC, {"steps": 60}),
    "map-correct": (MLC, {"remap": True}),
    "map-correct:ir": (override(preset("ideal"), {"array.wire_resistance": 4.0, "array.rows": 256,
                                                  "array.cols": 256}), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_recovery_method_runs_and_helps_on_the_device(device, case):
    digits = load_dataset("digits")
    model, _ = trained_model("lenet5", digits, progress=False, device=device)
    cfg, opts = CASES[case]
    chips = nvcim.convert(model, cfg, chips=40, seed=0)
    rep = recover(chips, [get(case.split(":")[0], **opts)], TaskData(digits.train, digits.train[0]), digits.test,
                  progress=False)
    assert all(t.device.type == device.type for t in chips.state_dict().values() if isinstance(t, torch.Tensor))
    d = torch.tensor(rep.after.accuracy.per_chip) - torch.tensor(rep.before.accuracy.per_chip)
    assert d.mean() > 3 * d.std() / math.sqrt(d.numel()) and d.mean() > 0.01, rep.summary()
