"""Training cost: one epoch of noise-injection training (vat) against one epoch of plain training.

Same model (LeNet-5), data (Fashion-MNIST, 60k images), batch size, optimiser and machine, in one run.
Usage: .venv/bin/python bench/bench_training.py [--chip rram-mlc-4bit] [--model lenet5] [--images N]
``--images N`` times both on the first N training images only (a part of an epoch, for models whose full
epoch takes hours on a small CPU, such as the ResNet); the ratio is per image either way.

The two epochs run interleaved, ``--segment`` batches of one then the same batches of the other (which
goes first alternates), so that a shared host's slow minutes fall on both alike. Reported: the epoch
times (sums of the segments), their ratio, and the median of the per-segment ratios, which one slow
segment cannot move.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nvcim
from nvcim.chip import SimulatedChip
from nvcim.experiments import build_model, load_dataset


class Trainer:
    """Adam on ``forward(step, x)``, the way the training methods run it, one segment of batches at a time."""

    def __init__(self, forward, params) -> None:  # type: ignore[no-untyped-def]
        self.forward, self.opt, self.step = forward, torch.optim.Adam(params, lr=1e-3), 0

    def run(self, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor]) -> float:
        """Train on ``batches`` (index tensors); seconds."""
        t0 = time.perf_counter()
        for idx in batches:
            loss = F.cross_entropy(self.forward(self.step, x[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--chip", default="rram-mlc-4bit")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=0, help="time the first N training images (0: the epoch)")
    ap.add_argument("--segment", type=int, default=20, help="batches per interleaved segment")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load_dataset("fashion-mnist")
    n = args.images or len(data.train[1])
    x, y = data.train[0][:n].to(dev), data.train[1][:n].to(dev)
    net = build_model(args.model, data.in_shape, data.classes).to(dev).train()
    plain = Trainer(lambda step, xb: net(xb), list(net.parameters()))
    chip = SimulatedChip(nvcim.convert(build_model(args.model, data.in_shape, data.classes).to(dev), args.chip,
                                       chips=1, seed=0))
    vat = Trainer(lambda step, xb: chip.train_forward(xb, step), chip.parameters())
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).to(dev)
    batches = [perm[i:i + args.batch] for i in range(0, len(y), args.batch)]
    warm = batches[:3]  # first calls: allocator growth, CUDA context and kernel loading
    plain.run(x, y, warm)
    vat.run(x, y, warm)
    t_plain = t_vat = 0.0
    ratios = []
    for j in range(0, len(batches), args.segment):
        seg = batches[j:j + args.segment]
        if (j // args.segment) % 2:
            tv, tp = vat.run(x, y, seg), plain.run(x, y, seg)
        else:
            tp, tv = plain.run(x, y, seg), vat.run(x, y, seg)
        t_plain, t_vat = t_plain + tp, t_vat + tv
        ratios.append(tv / tp)
    out = {"model": args.model, "chip": args.chip, "batch": args.batch, "threads": torch.get_num_threads(),
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "images": len(y), "segment_batches": args.segment, "plain_epoch_s": t_plain, "vat_epoch_s": t_vat,
           "ratio": t_vat / t_plain, "ratio_median_segments": statistics.median(ratios)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = f"training_{args.model}{'' if dev.type == 'cpu' else '_' + dev.type}{'_part' if args.images else ''}.json"
    (Path(args.out) / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
