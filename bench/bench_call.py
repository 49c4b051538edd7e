"""The time of one chip call, ``chips(x)``, without plain-PyTorch timings around it: for A/B comparisons of
two versions of the code on the same host (run each version in its own process, alternating).

    .venv/bin/python bench/bench_call.py [--chips 100] [--images 500] [--calls 3] [--rounds 5]

LeNet-5 (trained 3 epochs on Fashion-MNIST, cached), the bench chip (rram-mlc-4bit, 2 % read noise, 8-bit
DAC and ADC), compiled passes. Converts, calibrates, makes three warm calls, then prints the best over
``--rounds`` of the mean time of ``--calls`` calls. To compare with an older tree:
``PYTHONPATH=<old tree>/src .venv/bin/python bench/bench_call.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

import nvcim
from nvcim.chip import Runtime
from nvcim.experiments import load_dataset, trained_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=100)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    net, _ = trained_model("lenet5", data, epochs=3, progress=False)
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                                         "circuit.adc_bits": 8})
    chips = nvcim.convert(net, cfg, chips=args.chips, seed=0, runtime=Runtime(compile="on"))
    chips.calibrate(data.test[0][:500])
    x = data.test[0][:args.images]
    with torch.no_grad():
        for _ in range(3):
            chips(x)
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.calls):
                chips(x)
            best = min(best, (time.perf_counter() - t) / args.calls)
    print(f"{nvcim.__file__}: {args.chips} chips x {args.images} images: {best * 1e3:.1f} ms per call "
          f"({args.chips * args.images / best:.0f} chip-images/s)")


if __name__ == "__main__":
    main()
