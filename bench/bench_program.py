"""Time to convert and program 1000 chips of the 32x32 ResNet-18, within the memory budget.

1000 chips of stored state would be about 105 GiB (22.4 M cells, 5 bytes each), so the cells are made on
demand (``Runtime(cells="on-demand")``): ``convert`` draws each chip's registers, and every chip block's
cells are written when a pass reaches it. This times both: the conversion, then writing the cells of every
block once, which is the programming work of one Monte-Carlo pass over all chips. Usage:

    .venv/bin/python bench/bench_program.py [--chips 1000] [--chip rram-mlc-4bit] [--tag T]

Writes ``bench/results/program_<device><tag>.json`` with the times and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

import nvcim
from nvcim.chip import Runtime
from nvcim.chip.conversion import state_bytes_per_chip
from nvcim.experiments.models import ResNet18


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=1000)
    ap.add_argument("--chip", default="rram-mlc-4bit")
    ap.add_argument("--chip-block", type=int, default=10)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ResNet18((3, 32, 32), 10).eval()
    base = rss_gib()
    t0 = time.perf_counter()
    m = nvcim.convert(net, args.chip, chips=args.chips, seed=0,
                      runtime=Runtime(cells="on-demand", chip_block=args.chip_block))
    t_convert = time.perf_counter() - t0
    layers = m.analog_layers()
    t0 = time.perf_counter()
    blocks = []
    for c0 in range(0, args.chips, args.chip_block):
        tb = time.perf_counter()
        chips = torch.arange(c0, min(c0 + args.chip_block, args.chips))
        for lay in layers:
            lay.crossbar.effective(chips)  # writes this block's cells, as a chip pass does when it reaches the block
        blocks.append(time.perf_counter() - tb)
        if len(blocks) in (1, 10) or c0 + args.chip_block >= args.chips:
            print(f"{c0 + len(chips)} chips written, {time.perf_counter() - t0:.1f} s", flush=True)
    t_program = time.perf_counter() - t0
    per = state_bytes_per_chip(m)
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "chip": args.chip, "chips": args.chips, "chip_block": args.chip_block,
        "cells_per_chip": sum(lay.crossbar.mapped().pos.numel() + lay.crossbar.mapped().neg.numel() for lay in layers),
        "convert_s": t_convert, "program_all_blocks_s": t_program, "total_s": t_convert + t_program,
        "first_block_s": blocks[0], "median_block_s": sorted(blocks)[len(blocks) // 2],
        "stored_state_would_be_gib": args.chips * per / 2**30, "block_state_gib": args.chip_block * per / 2**30,
        "rss_before_gib": base, "peak_rss_gib": rss_gib(),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"program_cpu{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
