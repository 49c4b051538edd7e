"""Ray executor scaling: the same grid on a local Ray cluster of 1 and of 2 workers (issue #15).

Usage:  .venv/bin/python bench/bench_ray.py [--points 16] [--chips 50]
Writes bench/results/ray_<tag>.json. Each grid point is one Ray task with one CPU (Ray gives it one
thread), so on a 2-core host the ideal speed-up from 1 to 2 workers is 2x. The points are digits MLP
Monte Carlo runs (with self-tune), each a few seconds: enough work that Ray's task overhead shows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nvcim.experiments.ray_executor import RayExecutor
from nvcim.experiments.runner import run
from nvcim.experiments.spec import from_dict


def grid(points: int, chips: int) -> dict:
    sigmas = [round(0.02 + 0.02 * i, 3) for i in range(points // 2)]
    return {"name": "ray-bench", "model": "mlp", "dataset": "digits", "chip": "rram-mlc-4bit", "chips": chips,
            "seeds": [0, 1], "methods": ["self-tune"], "limit": 300, "sweep": {"device.programming.sigma": sigmas}}


def timed(points: int, chips: int, workers: int) -> float:
    exp = from_dict(grid(points, chips))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = run(exp, Path(d), executor=RayExecutor(num_cpus=workers), progress=False)
        wall = time.perf_counter() - t0
    assert s.computed == points and not s.failed, s
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--chips", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    # warm the dataset and model caches outside the timing: both runs then do the same work
    run(from_dict(dict(grid(2, 4), name="ray-warm")), Path(tempfile.mkdtemp()), progress=False)
    rows = []
    for rep in range(args.repeats):
        one, two = timed(args.points, args.chips, 1), timed(args.points, args.chips, 2)
        rows.append({"repeat": rep, "one_worker_s": one, "two_workers_s": two, "speedup": one / two})
        print(f"repeat {rep}: 1 worker {one:.1f} s, 2 workers {two:.1f} s, speed-up {one / two:.2f}x", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"ray_{args.tag}.json").write_text(json.dumps(
        {"points": args.points, "chips": args.chips, "cpus": os.cpu_count(), "torch": torch.__version__,
         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
