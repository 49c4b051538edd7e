"""The cost of per-array partial sums: ResNet-18's tiled products against its plain convolutions.

Every array tile of a layer has its own ADC, so the chip computes one partial sum per tile (T of them for a
layer of K rows on R-row arrays) and digitises each. The products cost the same multiply-adds as the plain
convolution, but each output is now written T times from a K / T-long sum, which makes them memory-bound.
This bench times, for each convolution of the 32x32 ResNet-18 and a block of chips, the layer's own tiled
product (``prepare`` + ``mvm``, the code a chip pass runs, values only) against plain PyTorch's convolution
of the same images for every chip. A chip pass needs at least this product twice (values, and read-noise
variances), so ``plain / (2 x tiled)`` bounds the Monte-Carlo ratio of ``bench_models.py`` from above,
before any noise, converter or digital work. Usage:

    .venv/bin/python bench/bench_tiles.py [--chips 10] [--images 10] [--rows 128] [--tag T]

Writes ``bench/results/tiles_<device><tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nvcim
from nvcim.chip import Runtime
from nvcim.chip.conv2d import AnalogConv2d
from nvcim.experiments.models import ResNet18


def best_time(fn, repeats: int = 5) -> float:
    """The fastest of ``repeats`` calls after a warm-up (seconds): the host is shared, the minimum is the
    least disturbed."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def time_layer(layer: AnalogConv2d, shape: tuple[int, int, int, int], c: int) -> tuple[float, float]:
    """(plain, tiled) seconds for inputs of ``shape`` (images x chips first): plain PyTorch's convolution,
    and the layer's tiled product of ``c`` chips' weights."""
    x = torch.rand(shape)
    wd = layer.weight.detach()
    t_plain = best_time(lambda: F.conv2d(x, wd, None, layer.stride, layer.padding, layer.dilation, layer.groups))
    packed = layer.pack(torch.randn(c, layer.n_slices, layer.out_features, layer.k), False)
    t_tiled = best_time(lambda: layer.mvm(layer.prepare(x, False, c), packed, False, c))
    return t_plain, t_tiled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=10, help="chips in one block (Runtime.chip_block)")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--rows", type=int, default=128, help="array rows (array.rows)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ResNet18((3, 32, 32), 10).eval()
    # each convolution's input size: one digital pass with hooks, before the conversion swaps the modules
    shapes: dict[str, tuple[int, ...]] = {}
    def record(name: str):
        def hook(mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            shapes[name] = tuple(inputs[0].shape)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    cfg = nvcim.override(nvcim.preset("ideal"), {"array.rows": args.rows})
    model = nvcim.convert(net, cfg, chips=1, seed=0, runtime=Runtime(cells="on-demand"))
    c, b = args.chips, args.images
    rows, total_plain, total_tiled = [], 0.0, 0.0
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, AnalogConv2d):
                continue
            name = layer.layer_name
            _, cin, h, w_ = shapes[name]
            t_plain, t_tiled = time_layer(layer, (b * c, cin, h, w_), c)
            total_plain += t_plain
            total_tiled += t_tiled
            rows.append({"layer": name, "c_in": cin, "hw": h, "k": layer.k, "tiles": layer.row_tiles,
                         "plain_ms": 1e3 * t_plain, "tiled_ms": 1e3 * t_tiled, "tiled_over_plain": t_tiled / t_plain})
            print(f"{name:24s} K={layer.k:5d} T={layer.row_tiles:3d} {h:2d}x{w_:<2d} plain {1e3 * t_plain:7.1f} ms"
                  f"  tiled {1e3 * t_tiled:7.1f} ms  ({t_tiled / t_plain:4.1f}x)", flush=True)
    bound = total_plain / (2 * total_tiled)
    print(f"all convolutions: plain {1e3 * total_plain:.0f} ms, tiled {1e3 * total_tiled:.0f} ms "
          f"({total_tiled / total_plain:.2f}x); Monte-Carlo ratio bound plain / (2 x tiled) = {bound:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cpu"
    res = {"chips": c, "images": b, "array_rows": args.rows, "layers": rows, "plain_ms": 1e3 * total_plain,
           "tiled_ms": 1e3 * total_tiled, "ratio_bound": bound, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "command": "bench/bench_tiles.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    path = out / f"tiles_{dev}{args.tag}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
