"""Time to first result (issue #33): what a new user waits for, cold caches included, and the direct loop's
throughput against plain PyTorch.

    .venv/bin/python bench/bench_first_result.py [--model lenet5|resnet18] [--chips 50] [--images 2000]
        [--batch 500] [--repeats 3]

Each measurement runs in a fresh process with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR in a new temporary
folder), as on a new machine; the trained model comes from nvcim's model cache (trained first if missing, not
timed). Phases, in seconds from process start: imports, data, model, convert, calibrate, the first chip call of
500 images (``first``), the rest of the README's direct loop (``loop_done``: ``chips(x)`` over 2000 test
images in batches of 500, eager while the kernels compile in the background), the end of that compile
(``kernels_compiled``) and the first compiled call (``first_compiled``); then the loop timed warm, alternating
with the plain model on the same batches (``--repeats`` rounds), reported as images per second and their ratio.
Results: bench/results/first_result_<model>_<chips>chips.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    import torch

    import nvcim
    from nvcim.experiments import load_dataset, trained_model

    marks["imports"] = time.perf_counter() - t0
    resnet = args.model == "resnet18"
    if resnet:  # speed only: random weights and inputs of CIFAR's shape
        from nvcim.experiments.models import resnet18

        torch.manual_seed(0)
        model = resnet18((3, 32, 32), 10).eval()
        x_all, y_all, calib = torch.randn(args.images, 3, 32, 32), torch.zeros(args.images, dtype=torch.long), None
        marks["data"] = marks["model"] = time.perf_counter() - t0
    else:
        data = load_dataset("fashion-mnist")
        marks["data"] = time.perf_counter() - t0
        model, _ = trained_model("lenet5", data, progress=False)
        marks["model"] = time.perf_counter() - t0
        x_all, y_all, calib = data.test[0][:args.images], data.test[1][:args.images], data.train[0][:256]
    plain = copy.deepcopy(model).eval()  # convert() swaps the layers of ``model`` in place
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                                         "circuit.adc_bits": 8})
    chips = nvcim.convert(model, cfg, chips=args.chips, seed=0)
    marks["convert"] = time.perf_counter() - t0
    chips.calibrate(calib if calib is not None else x_all[:256])
    marks["calibrate"] = time.perf_counter() - t0
    xs, ys = x_all.split(args.batch), y_all.split(args.batch)
    with torch.no_grad():
        chips(xs[0])
        marks["first"] = time.perf_counter() - t0
        for x in xs[1:]:
            chips(x)
        marks["loop_done"] = time.perf_counter() - t0  # the README loop, eager while the kernels compile
        w = chips._warmup
        if w is not None and w.proc is not None:
            w.proc.wait()  # the background compile (Runtime.compile="auto")
        marks["kernels_compiled"] = time.perf_counter() - t0
        chips(xs[0])
        marks["first_compiled"] = time.perf_counter() - t0  # its kernels loaded from the warm cache
        rates: dict[str, list[float]] = {"chips": [], "plain": []}
        for _ in range(args.repeats):
            s = time.perf_counter()
            correct = sum((chips(x).argmax(-1) == y).sum(1) for x, y in zip(xs, ys))
            rates["chips"].append(len(x_all) / (time.perf_counter() - s))
            s = time.perf_counter()
            for _ in range(args.chips):
                for x in xs:
                    plain(x)
            rates["plain"].append(len(x_all) * args.chips / (time.perf_counter() - s))
    best = {k: max(v) for k, v in rates.items()}
    return {"marks_s": marks, "images_per_s": best, "chip_images_per_s": best["chips"] * args.chips,
            "ratio": best["chips"] * args.chips / best["plain"], "rates": rates,
            "accuracy_mean": float(correct.float().mean()) / len(x_all), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("lenet5", "resnet18"), default="lenet5")
    ap.add_argument("--chips", type=int, default=0, help="default 50 (resnet18: 8)")
    ap.add_argument("--images", type=int, default=0, help="default 2000 (resnet18: 200)")
    ap.add_argument("--batch", type=int, default=0, help="default 500 (resnet18: 50)")
    ap.add_argument("--repeats", type=int, default=0, help="default 3 (resnet18: 1)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    resnet = args.model == "resnet18"
    args.chips = args.chips or (8 if resnet else 50)
    args.images = args.images or (200 if resnet else 2000)
    args.batch = args.batch or (50 if resnet else 500)
    args.repeats = args.repeats or (1 if resnet else 3)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.model == "lenet5":  # the trained model in the cache first (not timed)
        subprocess.run([sys.executable, "-c", "from nvcim.experiments import load_dataset, trained_model; "
                        "trained_model('lenet5', load_dataset('fashion-mnist'), progress=False)"], check=True)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", "--chips", str(args.chips), "--model",
                              args.model, "--repeats", str(args.repeats), "--images", str(args.images), "--batch",
                              str(args.batch)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(out.stderr)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "process_wall_s": wall,
                "model": args.model, "chips": args.chips})
    path = HERE / "results" / f"first_result_{args.model}_{args.chips}chips.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    m = res["marks_s"]
    print(f"{args.model}, {args.chips} chips, cold inductor cache: first chip result at {m['first']:.1f} s "
          f"(imports {m['imports']:.1f}, convert {m['convert'] - m['model']:.1f}, calibrate "
          f"{m['calibrate'] - m['convert']:.1f}, first call {m['first'] - m['calibrate']:.1f}); README loop done at "
          f"{m['loop_done']:.1f} s; kernels compiled at {m['kernels_compiled']:.1f} s; direct loop "
          f"{res['ratio']:.2f}x plain ({res['chip_images_per_s']:.0f} against {res['images_per_s']['plain']:.0f} "
          f"chip-images/s)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
