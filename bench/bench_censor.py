"""Does right-censored noise injection (vat's ``censor``, Yan et al. ICCAD 2023) improve the worst case?

Trains LeNet-5 on Fashion-MNIST with ``vat`` at censor 0 (plain Gaussian injection) and at each censor
level, from the same trained model, for several training seeds, and measures the mean and the worst 1 % and
5 % of chips (KPP) on many chips of the same device, with the exact 95 % interval of each KPP.

    .venv/bin/python bench/bench_censor.py [--chips 1000] [--seeds 3] [--sigma 0.1] [--censor 1.0 2.0]
        [--first-seed 0] [--out censor.json]

Writes bench/results/censor.json and prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

import nvcim
from nvcim.evaluation.metrics import AccuracyStats
from nvcim.experiments import load_dataset, trained_model
from nvcim.methods import TaskData, get, recover


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--censor", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", default="censor.json", help="file name under bench/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    net, _ = trained_model("lenet5", data, epochs=3, progress=False)
    cfg = nvcim.override(nvcim.preset("ideal"), {"device.programming.model": "additive",
                                                 "device.programming.sigma": args.sigma})
    test = (data.test[0][: args.test], data.test[1][: args.test])
    task = TaskData(train=data.train, unlabelled=data.train[0][:2000])
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for censor in [0.0, *args.censor]:
            t = time.perf_counter()
            chips = nvcim.convert(copy.deepcopy(net), cfg, chips=args.chips, seed=100)
            method = get("vat", epochs=args.epochs, censor=censor, seed=seed, patience=3)
            rep = recover(chips, [method], task, test, progress=False, guard=False)
            row = {"seed": seed, "censor": censor, "before_mean": rep.before.accuracy.mean}
            for k in (1.0, 5.0):
                s = AccuracyStats(rep.after.accuracy.per_chip, kpp_k=k)
                row[f"kpp{k:g}"] = s.kpp
                row[f"kpp{k:g}_ci95"] = s.kpp_ci95
            row.update(mean=rep.after.accuracy.mean, std=rep.after.accuracy.std,
                       minutes=(time.perf_counter() - t) / 60)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results" / args.out
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "args": vars(args),
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
