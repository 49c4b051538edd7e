"""Compiled speed from the first pass of every run after the first on a machine (issue #40): short runs of the
README loop in fresh processes, one after the other, on one inductor cache that starts empty.

    .venv/bin/python bench/bench_fresh_runs.py [--chips 50] [--runs 4] [--seconds 30] [--model lenet5]

Each run is a new process, as a user's script or notebook is: imports, data, the trained model (from nvcim's
model cache), convert, calibrate, then the README loop (``chips(x)`` over 2 000 Fashion-MNIST test images in
batches of 500, the bench chip) over and over until it is stopped ``--seconds`` after it began (killed, as a
script that ends or a notebook closed; its background compile, a process of its own, goes on). The last run
instead makes one warm-up call (``chips(x)`` on the first batch) and times 3 rounds of the loop, alternating
with plain PyTorch on the same batches (the model run once per chip), and reports the first round's ratio
and the median ratio. Every run records its first chip result (seconds from process start), how many of its
kernels were left to compile, and its loop rounds. The cache folder is ``TORCHINDUCTOR_CACHE_DIR`` in a new
temporary folder (empty, as on a new machine). Results: bench/results/fresh_runs_<model>_<chips>chips.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters

    import nvcim
    from nvcim.experiments import load_dataset, trained_model

    data = load_dataset("fashion-mnist")
    model, _ = trained_model(args.model, data, progress=False)
    plain = copy.deepcopy(model).eval()
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                                         "circuit.adc_bits": 8})
    chips = nvcim.convert(model, cfg, chips=args.chips, seed=0)
    chips.calibrate(data.train[0][:256])
    xs = data.test[0][:2000].split(500)
    out = {"imports_to_calibrated_s": time.perf_counter() - t0}

    def loop() -> float:
        s = time.perf_counter()
        for x in xs:
            chips(x)
        return time.perf_counter() - s

    def plain_loop() -> float:
        s = time.perf_counter()
        for _ in range(args.chips):
            for x in xs:
                plain(x)
        return time.perf_counter() - s

    def say(**kv: object) -> None:  # progress, line by line: an earlier run is killed mid-way
        print(json.dumps(kv), flush=True)

    with torch.no_grad():
        s = time.perf_counter()
        chips(xs[0])  # the first chip result (the warm-up call of the last run)
        w = chips._warmup
        say(first_call_s=time.perf_counter() - s, first_result_s=time.perf_counter() - t0,
            left_to_compile=len(w.records) if w is not None else None, **out)
        if args.last:
            rounds = []
            for _ in range(3):
                c, p = loop(), plain_loop()
                rounds.append({"chips_s": c, "plain_s": p, "ratio": p / c})
            say(rounds=rounds, first_round_ratio=rounds[0]["ratio"],
                median_ratio=statistics.median(r["ratio"] for r in rounds))
        else:
            while True:
                say(loop_s=loop(), at_s=time.perf_counter() - t0)
    say(fx_cache={k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph")},
        process_s=time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--chips", type=int, default=50)
    ap.add_argument("--runs", type=int, default=4, help="runs in all, the last one timed")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each earlier run, from process start")
    ap.add_argument("--cache", default="", help="an inductor cache folder to use (default: a new empty one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    subprocess.run([sys.executable, "-c", "from nvcim.experiments import load_dataset, trained_model; "
                    f"trained_model('{args.model}', load_dataset('fashion-mnist'), progress=False)"], check=True)
    cache = args.cache or tempfile.mkdtemp(prefix="nvcim-fresh-runs-")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    runs = []
    for i in range(args.runs):
        last = i == args.runs - 1
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--chips", str(args.chips),
               "--seconds", str(args.seconds)] + (["--last"] if last else [])
        s = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=None if last else args.seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        run: dict = {"wall_s": time.perf_counter() - s, "loop_s": []}
        for line in stdout.splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                if "loop_s" in item:
                    run["loop_s"].append(item["loop_s"])
                else:
                    run.update(item)
        if "first_result_s" not in run and last:
            sys.exit(stderr)
        runs.append(run)
        first = (f"first result at {run['first_result_s']:.1f} s (first call {run['first_call_s']:.1f} s), "
                 f"kernels left to compile {run['left_to_compile']}" if "first_result_s" in run
                 else "no chip result before it was stopped")
        print(f"run {i + 1} ({run['wall_s']:.0f} s): {first}, "
              + (f"fx cache {run['fx_cache']}, first round {run['first_round_ratio']:.2f}x plain, median "
                 f"{run['median_ratio']:.2f}x" if last else f"loop rounds {[round(t, 1) for t in run['loop_s']]} s"),
              flush=True)
    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model,
           "chips": args.chips, "seconds": args.seconds, "cache": cache, "runs": runs}
    path = HERE / "results" / f"fresh_runs_{args.model}_{args.chips}chips.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
