"""Golden chip outputs: every preset on LeNet-5 and the ResNet-8, fixed seeds, frozen so that a refactoring
of the chip core can show it changed no number. Regenerate only for an intended, explained change:

    .venv/bin/python tests/golden_cases.py --write      # rewrites tests/golden/outputs.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import nvcim
from nvcim.config import override, preset, preset_names
from nvcim.experiments.models import lenet5, resnet

PATH = Path(__file__).parent / "golden" / "outputs.pt"
MODELS = {"lenet5": lenet5, "resnet": resnet}


def cases() -> list[tuple[str, str]]:
    return [(m, p) for m in MODELS for p in preset_names()]


def output(model: str, name: str) -> torch.Tensor:
    """Chip outputs (3 chips, 8 images, 10 classes) of ``model`` on preset ``name`` with read noise and 8-bit
    converters added (the ideal preset as it is), variance products in float32, eager."""
    torch.manual_seed(0)
    net = MODELS[model]((1, 28, 28), 10).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    cfg = preset(name)
    if name != "ideal":
        cfg = override(cfg, {"device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})
    chips = nvcim.convert(net, cfg, chips=3, seed=4,
                          runtime=nvcim.Runtime(compile="off", variance="float32", chip_block=2))
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    chips.calibrate(x)
    with torch.no_grad():
        return chips(x, read_key=11)


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit(__doc__)
    torch.set_num_threads(2)
    PATH.parent.mkdir(exist_ok=True)
    torch.save({f"{m}/{p}": output(m, p) for m, p in cases()}, PATH)
    print(f"wrote {len(cases())} golden outputs to {PATH}")
