"""Monte Carlo throughput: LeNet-5 on the 10k Fashion-MNIST test images, 100 chips, against plain PyTorch.

Chip config: rram-mlc-4bit programming noise and faults, plus 2 % read noise and 8-bit DAC/ADC.
Figure of merit: chip-images per second divided by plain PyTorch's images per second on the same model,
batch size and machine, measured in the same run: the median over segments of the test set, each
timed between two plain-PyTorch timings on the same images (``ratio_median_of_segments``). Usage:

    .venv/bin/python bench/bench_core.py [--chips 100] [--batch 500] [--memory-mb 256] [--compile on]

``--mode loop`` times instead the README's own loop, ``chips(x)`` over batches, against ``nvcim.evaluate``
on the same chips and images, alternating, both under the default ``Runtime`` (``compile="auto"``):
the figure of merit is ``loop_over_evaluate``, the loop's chip-images per second over evaluate's (the
median of the rounds). Both are warmed up first, so the one-off compile counts for neither.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import nvcim
from nvcim.chip import Runtime
from nvcim.experiments import load_dataset, trained_model


def plain_rate(model: torch.nn.Module, x: torch.Tensor, batch: int, repeats: int = 3) -> float:
    best = 0.0
    with torch.inference_mode():
        model(x[:batch])
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
            if x.is_cuda:
                torch.cuda.synchronize()
            best = max(best, len(x) / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--memory-mb", type=float, default=0.0, help="Runtime.memory_mb (0: auto)")
    ap.add_argument("--compile", default="on", choices=("on", "off"))
    ap.add_argument("--chip-block", type=int, default=0, help="chips per grouped pass (Runtime.chip_block; 0: auto, "
                    "10 on a CPU, sized from the free memory on a GPU)")
    ap.add_argument("--segments", type=int, default=5, help="chip-run segments, each between plain timings")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--mode", default="plain", choices=("plain", "loop"),
                    help="plain: chips against plain PyTorch; loop: the README's chips(x) loop against evaluate")
    ap.add_argument("--rounds", type=int, default=3, help="--mode loop: alternating rounds of each")
    args = ap.parse_args()
    if args.mode == "loop":
        loop_vs_evaluate(args)
        return

    data = load_dataset("fashion-mnist")
    dev = torch.device(args.device)
    model, _ = trained_model("lenet5", data, epochs=3, progress=False, device=dev)
    x, y = data.test[0].to(dev), data.test[1].to(dev)

    plain = {b: plain_rate(model, x, b) for b in sorted({args.batch, 256, 1000} | ({10000} if dev.type == "cuda"
                                                                              else set()))}
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {
        "device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})
    t0 = time.perf_counter()
    chip_model = nvcim.convert(model, cfg, chips=args.chips, seed=0,
                               runtime=Runtime(memory_mb=args.memory_mb, compile=args.compile,
                                               chip_block=args.chip_block))
    chip_model.calibrate(data.train[0][:256].to(dev))
    t_program = time.perf_counter() - t0
    # warm-up (torch.compile builds its kernels here; not counted)
    t0 = time.perf_counter()
    nvcim.evaluate(chip_model, (x[:args.batch], y[:args.batch]), batch_size=args.batch, progress=False)
    t_warm = time.perf_counter() - t0
    # The host is shared and drifts by tens of percent within a minute, so the chip run is cut into
    # segments, each between two timings of plain PyTorch on the same images (the faster one kept): the
    # figure of merit is the median of the per-segment ratios.
    seg = -(-len(x) // args.segments)
    ratios, t_chip, per_chip, n_done, ideal = [], 0.0, torch.zeros(args.chips, dtype=torch.float64), 0, 0.0
    for i0 in range(0, len(x), seg):
        xs, ys = x[i0:i0 + seg], y[i0:i0 + seg]
        before = plain_rate(model, xs, args.batch)
        res = nvcim.evaluate(chip_model, (xs, ys), batch_size=args.batch, progress=False)
        after = plain_rate(model, xs, args.batch)
        ratios.append(res.chip_images_per_s / max(before, after))
        print(f"segment {i0 // seg}: plain {before:.0f} / {after:.0f} img/s, chips {res.chip_images_per_s:.0f} "
              f"chip-img/s, ratio {ratios[-1]:.3f}", flush=True)
        t_chip += res.wall_time_s
        per_chip += torch.tensor(res.accuracy.per_chip, dtype=torch.float64) * len(xs)
        n_done += len(xs)
        ideal += res.ideal_accuracy * len(xs)
    rate = args.chips * n_done / t_chip
    acc = per_chip / n_done
    # plain PyTorch on the whole set again after the chip run, keeping the faster figure
    plain = {b: max(r, plain_rate(model, x, b)) for b, r in plain.items()}
    print(f"median segment ratio {statistics.median(ratios):.3f}, whole run {rate / plain[args.batch]:.3f}", flush=True)
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "chips": args.chips, "images": n_done, "batch": args.batch, "memory_mb": args.memory_mb,
        "chip_block": args.chip_block, "runtime": chip_model.runtime_record(), "segments": len(ratios),
        "compile": args.compile, "plain_images_per_s": plain, "chip_images_per_s": rate,
        "ratio_median_of_segments": statistics.median(ratios), "ratio_segments": ratios,
        "ratio_vs_plain_same_batch": rate / plain[args.batch], "ratio_vs_best_plain": rate / max(plain.values()),
        "program_s": t_program, "warmup_s": t_warm, "eval_s": t_chip,
        "ideal_accuracy": ideal / n_done, "chip_accuracy_mean": float(acc.mean()),
        "chip_accuracy_std": float(acc.std()),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"core_{dev.type}{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def loop_vs_evaluate(args: argparse.Namespace) -> None:
    """The README's Python loop (``chips(x)`` per batch) against ``nvcim.evaluate`` on the same chips."""
    data = load_dataset("fashion-mnist")
    dev = torch.device(args.device)
    model, _ = trained_model("lenet5", data, epochs=3, progress=False, device=dev)
    x, y = data.test[0].to(dev), data.test[1].to(dev)
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {
        "device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})
    chips = nvcim.convert(model, cfg, chips=args.chips, seed=0, runtime=Runtime(chip_block=args.chip_block))
    chips.calibrate(data.train[0][:256].to(dev))
    t0 = time.perf_counter()
    chips(x[:args.batch])  # warm-up: compiles here under compile="auto" (logged), counted for neither
    t_warm = time.perf_counter() - t0

    def loop() -> float:
        t = time.perf_counter()
        correct = torch.zeros(args.chips)
        for i in range(0, len(x), args.batch):  # as a user writes it: no torch.no_grad(), no image ids
            logits = chips(x[i:i + args.batch])
            correct += (logits.argmax(-1) == y[i:i + args.batch]).sum(1).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return args.chips * len(x) / (time.perf_counter() - t)

    rounds = []
    for r in range(args.rounds):
        res = nvcim.evaluate(chips, (x, y), batch_size=args.batch, progress=False)
        rate_loop = loop()
        rounds.append({"evaluate": res.chip_images_per_s, "loop": rate_loop,
                       "ratio": rate_loop / res.chip_images_per_s})
        print(f"round {r}: evaluate {res.chip_images_per_s:.0f}, loop {rate_loop:.0f} chip-img/s, "
              f"loop/evaluate {rounds[-1]['ratio']:.3f}", flush=True)
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "chips": args.chips, "images": len(x), "batch": args.batch, "chip_block": args.chip_block,
        "compile": "auto", "warmup_s": t_warm, "rounds": rounds,
        "loop_over_evaluate": statistics.median(r["ratio"] for r in rounds),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"loop_{dev.type}{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
