"""Monte Carlo throughput on real architectures: 100 chips against plain PyTorch, per model, in one run.

Chip config as bench_core.py: rram-mlc-4bit programming noise and faults, 2 % read noise, 8-bit DAC/ADC.
Models: LeNet-5 (28x28, trained and cached), the 32x32 ResNet-18 (Fashion-MNIST padded to 32x32 and
repeated over 3 channels) and the small ViT (28x28). The ResNet-18 and the ViT run with their initial
weights: the time of a pass does not depend on the weights' values, and training them on 2 cores takes
hours; their accuracies are therefore not reported. Figure of merit: chip-images per second over plain
PyTorch's images per second on the same model, images and batch size, the median of segments each timed
between two plain timings (the faster kept). Usage:

    .venv/bin/python bench/bench_models.py [--models lenet5 resnet18 vit] [--chips 100] [--tag T]

Also records the time to convert (map and program) each model, and the process's peak resident memory
against the memory budget plus the programmed state.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_core import plain_rate

import nvcim
from nvcim.chip import Runtime
from nvcim.chip.conversion import state_bytes_per_chip
from nvcim.experiments import build_model, load_dataset, trained_model

IMAGES = {"lenet5": 2000, "resnet18": 60, "vit": 500}  # per model: about a minute of chip passes each
BATCH = {"lenet5": 500, "resnet18": 30, "vit": 250}


def inputs(name: str, x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1) if name == "resnet18" else x


def bench_model(name: str, data, args: argparse.Namespace, dev: torch.device) -> dict:
    if name == "lenet5":
        model, _ = trained_model("lenet5", data, epochs=3, progress=False, device=dev)
    else:
        torch.manual_seed(0)
        shape = (3, 32, 32) if name == "resnet18" else data.in_shape
        model = build_model(name, shape, data.classes).to(dev).eval()
    n, batch = args.images or IMAGES[name], args.batch or BATCH[name]
    x, y = inputs(name, data.test[0][:n]).to(dev), data.test[1][:n].to(dev)
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {
        "device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})
    runtime = Runtime(memory_mb=args.memory_mb)
    t0 = time.perf_counter()
    chips = nvcim.convert(copy.deepcopy(model), cfg, chips=args.chips, seed=0, runtime=runtime)  # plain stays plain
    t_convert = time.perf_counter() - t0
    chips.calibrate(inputs(name, data.train[0][:256]).to(dev))
    t0 = time.perf_counter()  # warm-up: compiles here (cached on disk after the first run), not counted
    nvcim.evaluate(chips, (x[:batch], y[:batch]), batch_size=batch, progress=False)
    t_warm = time.perf_counter() - t0
    seg = -(-n // args.segments)
    ratios, rates, plain = [], [], []
    for i0 in range(0, n, seg):
        xs, ys = x[i0:i0 + seg], y[i0:i0 + seg]
        before = plain_rate(model, xs, batch)
        res = nvcim.evaluate(chips, (xs, ys), batch_size=batch, progress=False)
        after = plain_rate(model, xs, batch)
        plain.append(max(before, after))
        rates.append(res.chip_images_per_s)
        ratios.append(rates[-1] / plain[-1])
        print(f"{name} segment {i0 // seg}: plain {plain[-1]:.1f} img/s, chips {rates[-1]:.1f} chip-img/s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    state = args.chips * state_bytes_per_chip(chips)
    out = {"model": name, "trained": name == "lenet5", "images": n, "batch": batch,
           "weights": sum(lay.weight.numel() for lay in chips.analog_layers()),
           "convert_s": t_convert, "warmup_s": t_warm, "plain_images_per_s": statistics.median(plain),
           "chip_images_per_s": statistics.median(rates), "ratio_median_of_segments": statistics.median(ratios),
           "ratio_segments": ratios, "state_gib": state / 2**30, "runtime": chips.runtime_record(),
           "budget_gib": chips.activation_budget() / 2**30}
    if name == "lenet5":
        out["chip_accuracy_mean_last_segment"] = res.accuracy.mean
    del chips
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet18", "vit"], choices=sorted(IMAGES))
    ap.add_argument("--chips", type=int, default=100)
    ap.add_argument("--images", type=int, default=0, help="test images per model (default: per model)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: per model)")
    ap.add_argument("--memory-mb", type=float, default=0.0, help="Runtime.memory_mb (0: auto)")
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load_dataset("fashion-mnist")
    results = [bench_model(name, data, args, dev) for name in args.models]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "chips": args.chips, "memory_mb": args.memory_mb, "peak_rss_gib": peak / 2**30,
        "largest_state_plus_budget_gib": max(r["state_gib"] + r["budget_gib"] for r in results),
        "models": results,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"models_{dev.type}{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
