"""One training step of each training-based recovery method against a plain training step of the same model.

    .venv/bin/python bench/bench_training_steps.py [--chips 10] [--batch 128] [--steps 20] [--rounds 5]
        [--profile]

LeNet-5 on Fashion-MNIST, chip ``rram-mlc-4bit`` (the bench chip of docs/benchmarks.md), Adam, in one process.
What each method's step does, written with the Chip interface as the methods do it:

- ``vat``: the ideal model's forward with a freshly drawn training chip's weights (``Chip.train_forward``),
  a loss, backward into the ideal weights;
- ``kd``: the same step plus the distillation loss against the teacher's logits (computed once, as ``kd`` does);
- ``rsa``: every one of the N chips reads the batch with gradients into its sparse SRAM weights
  (``Chip.infer``), one loss over the N x B chip-images, backward into the SRAM weights;
- ``chip-kd``: every chip reads the batch with gradients into its output gain/offset registers, distilled
  towards the ideal model's logits.

vat and kd are compared with a plain step on the same B images; rsa and chip-kd, which train N chips at once,
with a plain step on N x B images (the same chip-images). Steps alternate by rounds (which goes first
alternates); the figure is the median over rounds of (method time / plain time). ``--profile`` adds a
cProfile of each method's steps, the share of the time spent in the chip's own code by function.
Writes bench/results/training_steps.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import nvcim
from nvcim.chip import SimulatedChip
from nvcim.experiments import load_dataset, trained_model

Step = Callable[[int, torch.Tensor, torch.Tensor], None]


def timed(step: Step, x: torch.Tensor, y: torch.Tensor, steps: int, first: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        step(first + i, x, y)
    return time.perf_counter() - t0


def adam_step(params: list[torch.Tensor], loss_of: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> Step:
    opt = torch.optim.Adam(params, lr=1e-3)

    def step(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_of(i, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed segment")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chip", default="rram-mlc-4bit")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default="bench/results/training_steps.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    net, _ = trained_model("lenet5", data, epochs=3, progress=False)
    x_all, y_all = data.train[0][:4096], data.train[1][:4096]
    b, n = args.batch, args.chips
    xb, yb = x_all[:b], y_all[:b]
    xn, yn = x_all[:b].repeat(n, 1, 1, 1), y_all[:b].repeat(n)  # N x B images for the plain comparison

    plain_net = build_plain(net)
    plain = adam_step(list(plain_net.parameters()), lambda i, x, y: F.cross_entropy(plain_net(x), y))

    model = nvcim.convert(build_plain(net), args.chip, chips=n, seed=0)
    model.calibrate(x_all[:512])
    chip = SimulatedChip(model)
    teacher = chip.reference(xb)
    vat = adam_step(chip.parameters(), lambda i, x, y: F.cross_entropy(chip.train_forward(x, i), y))

    def kd_loss(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = chip.train_forward(x, i)
        soft = F.kl_div(F.log_softmax(out / 4, -1), F.softmax(teacher / 4, -1), reduction="batchmean") * 16
        return 0.5 * F.cross_entropy(out, y) + 0.5 * soft
    kd = adam_step(chip.parameters(), kd_loss)

    sram = {}
    for name in chip.layer_names():
        o, k = chip.weight_matrix(name).shape
        mask = torch.rand(o, k, generator=torch.Generator().manual_seed(1)) < 0.05
        w = torch.zeros(n, o, k, requires_grad=True)
        chip.set_sram(name, mask, w)
        sram[name] = w
    rsa = adam_step(list(sram.values()), lambda i, x, y: F.cross_entropy(
        chip.infer(x)[0].flatten(0, 1), y.repeat(n)))

    regs = {}
    for name in chip.layer_names():
        g, o = chip.output_affine(name)
        g.requires_grad_(True), o.requires_grad_(True)
        chip.set_output_affine(name, g, o)
        regs[name] = (g, o)

    def chip_kd_loss(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for name, (g, o) in regs.items():  # the registers are set afresh each step, as chip-kd does
            chip.set_output_affine(name, g, o)
        out = chip.infer(x)[0]
        return F.kl_div(F.log_softmax(out / 2, -1), F.softmax(teacher / 2, -1).expand_as(out),
                        reduction="batchmean") * 4
    chip_kd = adam_step([t for pair in regs.values() for t in pair], chip_kd_loss)

    cases = {"vat": (vat, (xb, yb), (xb, yb)), "kd": (kd, (xb, yb), (xb, yb)),
             "rsa": (rsa, (xb, yb), (xn, yn)), "chip-kd": (chip_kd, (xb, yb), (xn, yn))}
    out: dict = {"model": "lenet5", "chip": args.chip, "chips": n, "batch": b, "steps": args.steps,
                 "rounds": args.rounds, "threads": torch.get_num_threads(), "torch": torch.__version__, "cases": {}}
    for name, (step, own, base) in cases.items():
        timed(step, *own, 3, 0)  # warm-up: allocator growth, first compile of anything
        timed(plain, *base, 3, 0)
        ratios, t_m, t_p = [], 0.0, 0.0
        for r in range(args.rounds):
            first = 1000 + r * args.steps
            if r % 2:
                tm, tp = timed(step, *own, args.steps, first), timed(plain, *base, args.steps, first)
            else:
                tp, tm = timed(plain, *base, args.steps, first), timed(step, *own, args.steps, first)
            ratios.append(tm / tp)
            t_m, t_p = t_m + tm, t_p + tp
        per = 1e3 / (args.rounds * args.steps)
        case = {"step_ms": t_m * per, "plain_step_ms": t_p * per,
                "plain_images": int(base[0].shape[0]), "ratio_median": statistics.median(ratios),
                "ratios": [round(v, 3) for v in ratios]}
        if args.profile:
            case["profile"] = profile(step, own, args.steps)
        out["cases"][name] = case
        print(name, json.dumps({k: v for k, v in case.items() if k != "profile"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


def build_plain(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).train()


def profile(step: Step, own: tuple[torch.Tensor, torch.Tensor], steps: int) -> dict[str, float]:
    """Share of the steps' time by function of nvcim's chip code and torch's autograd (cumulative, top 12)."""
    pr = cProfile.Profile()
    pr.enable()
    timed(step, *own, steps, 5000)
    pr.disable()
    stats = pstats.Stats(pr, stream=io.StringIO())
    total = max(v[3] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = {}
    for (file, _line, fn), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "nvcim" in file or fn in ("backward", "step", "_engine_run_backward"):
            rows[f"{Path(file).name}:{fn}"] = cum / total
    return dict(sorted(rows.items(), key=lambda kv: -kv[1])[:12])


if __name__ == "__main__":
    main()
