"""Training cost: one epoch of noise-injection training (vat) against one epoch of plain training.

Same model (LeNet-5), data (Fashion-MNIST, 60k images), batch size, optimiser and machine, in one run.
Usage: .venv/bin/python bench/bench_training.py [--chip rram-mlc-4bit] [--model lenet5] [--images N]
``--images N`` times both on the first N training images only (a part of an epoch, for models whose full
epoch takes hours on a small CPU, such as the ResNet); the ratio is per image either way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nvcim
from nvcim.chip import SimulatedChip
from nvcim.experiments import build_model, load_dataset


def epoch(forward, params, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """One epoch of Adam on ``forward(step, x)``, the way the training methods run it; seconds."""
    opt = torch.optim.Adam(params, lr=1e-3)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for step, i in enumerate(range(0, len(y), batch)):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(forward(step, x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--chip", default="rram-mlc-4bit")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=0, help="time the first N training images (0: the epoch)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load_dataset("fashion-mnist")
    n = args.images or len(data.train[1])
    x, y = data.train[0][:n].to(dev), data.train[1][:n].to(dev)
    def plain_epoch(n: int) -> float:
        net = build_model(args.model, data.in_shape, data.classes).to(dev).train()
        return epoch(lambda step, xb: net(xb), list(net.parameters()), x[:n], y[:n], args.batch)

    if dev.type == "cuda":  # warm-up: the first CUDA epoch pays for context creation and kernel loading
        plain_epoch(2048)
    t_plain = plain_epoch(len(y))
    net = build_model(args.model, data.in_shape, data.classes).to(dev)
    chip = SimulatedChip(nvcim.convert(net, args.chip, chips=1, seed=0))
    t_vat = epoch(lambda step, xb: chip.train_forward(xb, step), chip.parameters(), x, y, args.batch)
    out = {"model": args.model, "chip": args.chip, "batch": args.batch, "threads": torch.get_num_threads(),
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "images": len(y), "plain_epoch_s": t_plain, "vat_epoch_s": t_vat, "ratio": t_vat / t_plain}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = f"training_{args.model}{'' if dev.type == 'cpu' else '_' + dev.type}{'_part' if args.images else ''}.json"
    (Path(args.out) / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
