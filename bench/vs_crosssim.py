"""nvcim against Sandia CrossSim 3.2 on the same weights (issue #41, item 4): per-chip accuracy mean ± std of
each engine and the speed of each, same run, same machine.

    .venv/bin/python bench/vs_crosssim.py [--chips 30] [--images 1000] [--cases ...] [--tag _ir]

The recorded figures: the first four cases at 30 chips x 1000 images, ir-drop at 30 chips x 200 images
(``--cases ir-drop --images 200 --tag _ir``: CrossSim's parasitic solver with read noise takes about 57 ms
per image and chip, 6 minutes for that run; its read-noise case alone 26 ms).

Trains (or loads from nvcim's cache) LeNet-5 on Fashion-MNIST, writes its weights and the test images to
bench/results/vs_crosssim_inputs.pt, runs the nvcim cases here, then runs this file again under CrossSim's
own environment (``--engine crosssim``, $CROSSSIM_PYTHON, default .anchors/crosssim-venv/bin/python, built by
../shared/tools/setup-crosssim.sh) on the same file. Not part of CI.

Common to every case: weights scaled per layer by max|W| onto [0, g_max] of a differential pair (CrossSim:
BALANCED, ONE_SIDED; nvcim: the differential mapping, layer scaling), infinite on/off ratio (g_min = 0),
continuous levels, 128 x 128 arrays with contiguous row tiles (CrossSim: PartitionStrategy.MAX), digital
biases, ideal DACs (no input quantisation). Cases:

- additive-clipped: programming error N(0, (0.05 g_max)^2) once per chip, clipped to [0, g_max] (CrossSim
  NormalIndependentDevice, clip_conductance = True; nvcim's additive device model);
- additive: the same error clipped at 0 only (CrossSim clip_conductance = False). nvcim always clips at g_max
  too (a conductance cannot exceed the largest programmable one): not the same physics, shown for the size
  of the difference;
- read-noise: no programming error, proportional read noise G (1 + N(0, 0.1^2)) fresh on every read of every
  input vector (CrossSim NormalProportionalDevice read noise; nvcim's proportional read-noise model, drawn as
  output noise of the same variance);
- adc: additive-clipped plus a 6-bit ADC per array tile with a fixed range of +-M in normalised units (weights
  / max|W|, inputs / X, X one input full scale for every layer): CrossSim's QuantizerADC (2^b levels over
  [-M, M] inclusive); nvcim's mid-rise ADC with the full scale of M 2^b / (2^b - 1) cells, which puts its 2^b
  levels on the same points;
- ir-drop: 5 ohm per wire segment at g_max = 100 uS (CrossSim's parasitic solver per read, non-interleaved
  input-source array, its convergence threshold tightened from 1e-3 to 1e-5 of the input full scale so that
  it is as exact as nvcim's; nvcim's exact IR solve, array.ir_solver = "exact"), with proportional read noise 0.05
  so that chips differ. Only the three linear layers are on the chip (convolutions digital in both). nvcim
  spreads a layer's K rows evenly over its T = ceil(K / 128) tiles, each at the top of a 128-row array whose
  column wires run on to the sense amplifiers below the unused rows; CrossSim would size a core to the rows
  it holds, so its layers get the same layout by zero rows (zero weights, zero inputs) inserted where
  nvcim's arrays are empty. No programming error here: CrossSim would put it on the padding cells too, which
  then conduct, where nvcim's empty rows hold no cells.

Besides accuracy, each chip's logit error |logits - digital logits| / |digital logits| (means over images
and classes) is compared: IR drop mostly scales a layer's outputs, which argmax does not see.

Timing: wall time of the chip loop (programming and inference of every image on every chip). nvcim runs each
case twice in one process and reports the second (warm) run; CrossSim compiles nothing: one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "results" / "vs_crosssim_inputs.pt"
OUT = HERE / "results" / "vs_crosssim.json"
CASES = ["additive-clipped", "additive", "read-noise", "adc", "ir-drop"]
ADC_BITS, ADC_M = 6, 4.0  # ADC resolution and range +-M in normalised units (fully-on cells at full-scale input)
G_MAX, R_WIRE = 1e-4, 5.0  # S and ohm per segment for the IR case
ROWS = 128


def lenet5() -> nn.Module:
    """nvcim's LeNet-5 for 28x28 inputs, rebuilt here so that CrossSim's environment needs no nvcim."""
    feats = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(feats, nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def summary(acc: list[float]) -> dict[str, float]:
    n = len(acc)
    mean = sum(acc) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n), "chips": n}


def input_full_scale(state: dict) -> float:
    """X: the largest |input| any analog layer sees on the calibration images (one full scale for all)."""
    net = lenet5().eval()
    net.load_state_dict(state["weights"])
    top = [0.0]

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        top[0] = max(top[0], float(inp[0].abs().max()))

    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_pre_hook(hook)
    with torch.no_grad():
        net(state["x"])
    return top[0]


# ---- nvcim ---------------------------------------------------------------------------------------------
def nvcim_cases(chips: int, state: dict) -> dict[str, dict]:
    import nvcim
    from nvcim.config import override, preset

    x, y, xfs = state["x"], state["y"], state["x_fs"]
    base = {"device.g_min": 0.0, "device.g_max": G_MAX, "device.bits_per_cell": 0, "circuit.dac_bits": 0,
            "circuit.adc_bits": 0, "array.rows": ROWS, "array.cols": ROWS, "mapping.scaling": "layer"}
    additive = {"device.programming.model": "additive", "device.programming.sigma": 0.05}
    cells = ADC_M * 2**ADC_BITS / (2**ADC_BITS - 1)
    configs = {
        "additive-clipped": ({**base, **additive}, None),
        "additive": ({**base, **additive}, None),
        "read-noise": ({**base, "device.read_noise": 0.1, "device.read_noise_model": "proportional"}, None),
        "adc": ({**base, **additive, "circuit.adc_bits": ADC_BITS, "circuit.adc.model": "midrise",
                 "circuit.adc_range_cells": cells, "circuit.dac_range": xfs}, None),
        "ir-drop": ({**base, "device.read_noise": 0.05, "device.read_noise_model": "proportional",
                     "array.wire_resistance": R_WIRE}, lambda m, name: isinstance(m, nn.Linear)),
    }
    out = {}
    for case in CASES:
        changes, filt = configs[case]
        cfg = override(preset("ideal"), changes)
        walls = []
        for _ in range(2):  # cold (compiles included), then warm
            net = lenet5().eval()
            net.load_state_dict(state["weights"])
            start = time.perf_counter()
            m = nvcim.convert(net, cfg, chips=chips, seed=0, filter_fn=filt)
            res = nvcim.evaluate(m, (x, y), batch_size=500, calibration=state["calibration"], progress=False)
            walls.append(time.perf_counter() - start)
        with torch.no_grad():  # the logits' error against the digital model's, per chip
            logits = torch.cat([m(x[i:i + 500]) for i in range(0, len(y), 500)], dim=1)  # (chips, images, 10)
        err = ((logits - state["ideal_logits"]).abs().mean((1, 2)) / state["ideal_logits"].abs().mean()).tolist()
        out[case] = {**summary(res.accuracy.per_chip), "ideal": res.ideal_accuracy, "wall_s": walls[1],
                     "cold_wall_s": walls[0], "chip_images_per_s": chips * len(y) / walls[1],
                     "logit_err": summary(err)}
        print(f"nvcim     {case:17s} {100 * out[case]['mean']:6.2f} ± {100 * out[case]['std']:5.2f} %  "
              f"({chips} chips, {walls[1]:6.1f} s)", flush=True)
    return out


# ---- CrossSim ------------------------------------------------------------------------------------------
class PadInputs(nn.Module):
    """A linear layer laid out as nvcim lays it: its K rows spread evenly over T = ceil(K / ROWS) tiles
    (ceil(K / T) rows each, at the top of each ROWS-row array), the rest of every array empty (zero rows,
    zero inputs)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        k = layer.in_features
        tiles = -(-k // ROWS)
        per = -(-k // tiles)
        self.index = torch.tensor([(i // per) * ROWS + i % per for i in range(k)])
        self.width = tiles * ROWS
        padded = nn.Linear(self.width, layer.out_features)
        with torch.no_grad():
            padded.weight.zero_()
            padded.weight[:, self.index] = layer.weight
            padded.bias.copy_(layer.bias)
        self.inner = padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = x.new_zeros(x.shape[0], self.width)
        xp[:, self.index] = x
        return self.inner(xp)


def crosssim_params(case: str, xfs: float):  # type: ignore[no-untyped-def]
    from simulator import CrossSimParameters
    from simulator.parameters.core_parameters import BalancedCoreStyle, CoreStyle, PartitionStrategy
    from simulator.parameters.xbar_parameters import ADCRangeLimits

    p = CrossSimParameters()
    p.core.style = CoreStyle.BALANCED
    p.core.balanced.style = BalancedCoreStyle.ONE_SIDED
    p.core.rows_max = ROWS
    p.core.cols_max = ROWS
    p.core.mapping.weights.row_partition_strategy = PartitionStrategy.MAX
    p.core.mapping.weights.col_partition_strategy = PartitionStrategy.MAX
    p.core.mapping.weights.min = None
    p.core.mapping.weights.max = None
    p.core.mapping.weights.percentile = 1.0  # max|W| of the layer
    p.core.mapping.inputs.mvm.min = -xfs
    p.core.mapping.inputs.mvm.max = xfs
    p.xbar.device.infinite_on_off_ratio = True
    p.xbar.device.cell_bits = 0
    p.xbar.device.Rmin = 1.0 / G_MAX
    if case in ("additive-clipped", "additive", "adc"):
        p.xbar.device.programming_error.enable = True
        p.xbar.device.programming_error.model = "NormalIndependentDevice"
        p.xbar.device.programming_error.magnitude = 0.05
        p.xbar.device.clip_conductance = case != "additive"
    if case in ("read-noise", "ir-drop"):
        p.xbar.device.read_noise.enable = True
        p.xbar.device.read_noise.model = "NormalProportionalDevice"
        p.xbar.device.read_noise.magnitude = 0.1 if case == "read-noise" else 0.05
    if case == "adc":
        p.xbar.adc.mvm.model = "QuantizerADC"
        p.xbar.adc.mvm.bits = ADC_BITS
        p.xbar.adc.mvm.adc_range_option = ADCRangeLimits.CALIBRATED
        p.xbar.adc.mvm.calibrated_range = [-ADC_M, ADC_M]
    if case == "ir-drop":
        p.xbar.array.parasitics.enable = True
        p.xbar.array.parasitics.Rp_row = R_WIRE
        p.xbar.array.parasitics.Rp_col = R_WIRE
        # CrossSim's default threshold (1e-3) leaves its currents 0.35 % off a nodal solve on LeNet's first
        # linear layer, 30 standard errors of the logit error here; nvcim's solve is within 1e-4
        p.simulation.Verr_th_mvm = 1e-5
        p.simulation.Niters_max_parasitics = 1000
    return p


def crosssim_cases(chips: int, state: dict) -> dict[str, dict]:
    import numpy as np
    from simulator.algorithms.dnn.torch.convert import from_torch, reinitialize

    x, y, xfs = state["x"], state["y"], state["x_fs"]
    out = {}
    for case in CASES:
        net = lenet5().eval()
        net.load_state_dict(state["weights"])
        params = crosssim_params(case, xfs)
        if case == "ir-drop":  # the linear layers only, padded to whole arrays
            for i in (2, 4, 6):
                net[i] = from_torch(PadInputs(net[i]), params)
        else:
            net = from_torch(net, params)
        net.eval()
        acc: list[float] = []
        err: list[float] = []
        start = time.perf_counter()
        with torch.no_grad():
            for chip in range(chips):
                np.random.seed(1000 + chip)
                torch.manual_seed(1000 + chip)
                reinitialize(net)
                logits = torch.cat([net(x[i:i + 250]) for i in range(0, len(y), 250)])
                acc.append(float((logits.argmax(-1) == y).double().mean()))
                err.append(float((logits - state["ideal_logits"]).abs().mean() / state["ideal_logits"].abs().mean()))
        wall = time.perf_counter() - start
        out[case] = {**summary(acc), "wall_s": wall, "chip_images_per_s": chips * len(y) / wall,
                     "logit_err": summary(err)}
        print(f"crosssim  {case:17s} {100 * out[case]['mean']:6.2f} ± {100 * out[case]['std']:5.2f} %  "
              f"({chips} chips, {wall:6.1f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=30)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--engine", choices=("both", "nvcim", "crosssim"), default="both")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=None)
    ap.add_argument("--tag", default="", help="suffix of the result files (runs of different sizes)")
    args = ap.parse_args()
    CASES[:] = args.cases or CASES
    global INPUTS, OUT
    INPUTS = INPUTS.with_name(f"vs_crosssim{args.tag}_inputs.pt")
    OUT = OUT.with_name(f"vs_crosssim{args.tag}.json")
    if args.engine == "crosssim":
        state = torch.load(INPUTS, weights_only=True)
        OUT.with_suffix(".crosssim.json").write_text(json.dumps(crosssim_cases(args.chips, state)))
        return
    from nvcim.experiments import load_dataset, trained_model

    data = load_dataset("fashion-mnist")
    model, _ = trained_model("lenet5", data, epochs=args.epochs, progress=False)
    state = {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
             "x": data.test[0][:args.images].clone(), "y": data.test[1][:args.images].clone(),
             "calibration": data.train[0][:256].clone()}
    state["x_fs"] = input_full_scale({**state, "x": state["calibration"]})
    with torch.no_grad():
        state["ideal_logits"] = model.eval()(state["x"]).detach().clone()
    INPUTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, INPUTS)
    results = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
               "chips": args.chips, "images": args.images, "x_fs": state["x_fs"]}
    if args.engine == "both":  # each engine runs all cases once: CrossSim first, then nvcim (host otherwise idle)
        py = os.environ.get("CROSSSIM_PYTHON", str(HERE.parent / ".anchors" / "crosssim-venv" / "bin" / "python"))
        subprocess.run([py, __file__, "--engine", "crosssim", "--chips", str(args.chips), "--images",
                        str(args.images), "--tag", args.tag, "--cases", *CASES], check=True)
        results["crosssim"] = json.loads(OUT.with_suffix(".crosssim.json").read_text())
    results["nvcim"] = nvcim_cases(args.chips, state)
    if "crosssim" in results:
        print("\ncase              accuracy: nvcim   CrossSim       apart (SE) | logit error (%): nvcim  CrossSim"
              "     apart (SE) | speed")
        for case in CASES:
            a, b = results["nvcim"][case], results["crosssim"][case]
            z = [(u["mean"] - v["mean"]) / math.sqrt(u["sem"] ** 2 + v["sem"] ** 2)
                 if u["sem"] + v["sem"] > 0 else 0.0 for u, v in ((a, b), (a["logit_err"], b["logit_err"]))]
            speed = a["chip_images_per_s"] / b["chip_images_per_s"]
            la, lb = a["logit_err"], b["logit_err"]
            print(f"{case:17s} {100 * a['mean']:6.2f} ± {100 * a['std']:4.2f}  {100 * b['mean']:6.2f} ± "
                  f"{100 * b['std']:4.2f}  {z[0]:+5.2f}      | {100 * la['mean']:6.2f} ± {100 * la['std']:4.2f}  "
                  f"{100 * lb['mean']:6.2f} ± {100 * lb['std']:4.2f}  {z[1]:+5.2f}     | {speed:6.1f}x")
            results.setdefault("apart_se", {})[case] = z[0]
            results.setdefault("logit_apart_se", {})[case] = z[1]
            results.setdefault("speed_ratio", {})[case] = speed
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
