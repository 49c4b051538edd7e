"""Time to convert (map and program) a full ResNet-18 for N chips, and the programmed state's size.

    .venv/bin/python bench/bench_convert.py [--chips 10 50 100] [--chip rram-mlc-4bit]

A chip count whose state cannot fit in memory is refused by ``convert`` before it allocates; that is
reported as such.
"""

from __future__ import annotations

import argparse
import time

import torch

import nvcim
from nvcim.chip import Runtime
from nvcim.errors import ConversionError
from nvcim.experiments.models import ResNet18


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--chip", default="rram-mlc-4bit")
    ap.add_argument("--cells", default="auto", choices=("auto", "stored", "on-demand"),
                    help="Runtime.cells: stored writes every chip's cells during convert; on-demand (what auto picks "
                         "when they would fill half the free memory) writes them in each pass instead")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for chips in args.chips:
        torch.manual_seed(0)
        net = ResNet18((3, 32, 32), 10).eval()
        t = time.perf_counter()
        try:
            m = nvcim.convert(net, args.chip, chips=chips, seed=0, runtime=Runtime(cells=args.cells))
        except ConversionError as e:
            print(f"{chips} chips: refused: {e}", flush=True)
            continue
        dt = time.perf_counter() - t
        state = sum(b.numel() * b.element_size() for lay in m.analog_layers() for b in lay.buffers())
        print(f"{chips} chips: {dt:.1f} s ({dt / chips:.2f} s per chip), programmed state {state / 2**30:.2f} GiB"
              f" (cells {'on demand' if m.cells_on_demand else 'stored'})", flush=True)
        del m


if __name__ == "__main__":
    main()
