"""After training, which converter ranges should the re-programmed chips keep?

Usage:  .venv/bin/python bench/bench_ranges.py --setting "han: all but faults" [--deploy clip1/adccol]
        [--adc on] [--epochs 4] [--chips 20] [--limit 1000]
Trains `vat` for a fixed number of epochs (no early stopping) on a chip setting of bench_recovery.py, then
evaluates the re-programmed chips three ways on the first --limit test images: keeping the converter ranges
the training chips read through ("keep"), re-calibrating the ADC ranges only ("adc"), and re-calibrating
the DAC and ADC ranges ("all", what training methods did before 2026-12-06's fix). Prints one line each,
with the DAC ranges before and after re-calibration.
"""

from __future__ import annotations

import argparse

import torch
from bench_recovery import SETTINGS, deployment

import nvcim
from nvcim.chip import SimulatedChip
from nvcim.experiments import load_dataset, trained_model
from nvcim.methods import TaskData, get


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", default="han: all but faults", help="a chip setting of bench_recovery.py")
    ap.add_argument("--deploy", default="clip1/adccol", help="deployment, as after '@' in bench_recovery.py")
    ap.add_argument("--adc", default="on", choices=["on", "off"], help="vat trains through the ADC or not")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()
    data = load_dataset("fashion-mnist")
    test = (data.test[0][:args.limit], data.test[1][:args.limit])
    task = TaskData(data.train, data.train[0]).with_check()
    _, over = deployment("vat@" + args.deploy)
    model, _ = trained_model("lenet5", data, epochs=3, progress=False)
    chips = nvcim.convert(model, nvcim.override(SETTINGS[args.setting], over), chips=args.chips, seed=0)
    chips.calibrate(task.inputs(256))
    layers = chips.analog_layers()
    trained = [(lay.converters.dac_fs.clone(), lay.converters.adc_fs.clone()) for lay in layers]
    get("vat", epochs=args.epochs, patience=0, adc=args.adc).apply(SimulatedChip(chips), task)
    for how in ("keep", "adc", "all"):
        for lay, (dac, adc) in zip(layers, trained):  # the ranges the training chips read through
            lay.converters.dac_fs.copy_(dac)
            lay.converters.adc_fs = adc.clone()
        chips.reprogram(None if how == "keep" else task.inputs(256), "all" if how == "all" else "adc")
        acc = nvcim.evaluate(chips, test, progress=False).accuracy
        dacs = ", ".join(f"{float(d):.3g}->{float(lay.converters.dac_fs):.3g}" for lay, (d, _) in zip(layers, trained))
        print(f"{args.setting} @{args.deploy}, vat adc={args.adc}, {args.epochs} epochs, ranges {how:4s}: "
              f"{100 * acc.mean:.2f} ± {100 * acc.std:.2f} %  (DAC full scales {dacs})", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
