"""nvcim against IBM aihwkit 1.2 on the same weights (issue #31): per-chip accuracy mean ± std of each engine,
and chip-images per second, same run, same machine.

    .venv/bin/python bench/vs_aihwkit.py [--chips 30] [--images 1000] [--epochs 2] [--cases ...]
    .venv/bin/python bench/vs_aihwkit.py --model resnet18 [--chips 4] [--images 200]

Trains (or loads from nvcim's cache) LeNet-5 on Fashion-MNIST, writes its weights and the test images to
bench/results/vs_aihwkit_inputs.pt, runs the nvcim cases here, then runs this file again under aihwkit's
own environment (``--engine aihwkit``, $AIHWKIT_PYTHON, default /tmp/anchors/aihwkit-venv/bin/python, built by
../shared/tools/setup-aihwkit.sh) on the same file. Not part of CI. Cases:

- additive: programming noise N(0, (0.05 g_max)^2) once per chip, perfect I/O (aihwkit: a noise model of that
  law; nvcim: the additive device model);
- pcm-1h, pcm-1d, pcm-1y: IBM's PCM statistical model 1 hour, 1 day, 1 year after programming, global drift
  compensation, perfect I/O (aihwkit: PCMLikeNoiseModel, GlobalDriftCompensation; nvcim: the pcm preset with
  ideal converters);
- additive-io: the additive programming noise with aihwkit's default inference I/O: 7-bit inputs scaled per
  vector to their max |x| (noise management ABS_MAX), 9-bit outputs bounded at 12, output noise 0.06, iterative
  bound management, weights scaled per layer to the conductance range (weight_scaling_omega = 1); nvcim: the
  same settings as circuit options (circuit.input_scaling = 'absmax', out_noise = 0.06 / 12, ...);
- pcm-1d-io: the PCM model at 1 day with that I/O and global drift compensation (nvcim: the pcm-aihwkit
  preset). aihwkit reads the compensation's reference through the noisy I/O, nvcim reads the conductances;
- pcm-1d-io-exact: the same, with aihwkit's compensation made to read the conductances exactly as nvcim's
  does (its tiles' drift read-out patched to eye @ W^T): the documented difference removed.

``--model resnet18``: speed only, on a CIFAR-style ResNet-18 (random weights, random 3x32x32 inputs; the
accuracy of a random network means nothing), the pcm-1d case (perfect I/O), default 4 chips x 200 images.

Timing: wall time of the chip loop (programming, drift, inference of every image on every chip), excluding
data loading and training. nvcim runs each case twice in one process and reports the second (warm) run, its
kernels compiled; the first run's time, compile included, is in the JSON as ``cold_wall_s``. aihwkit compiles
nothing: one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "results" / "vs_aihwkit_inputs.pt"
OUT = HERE / "results" / "vs_aihwkit.json"
T_C = 20.0
TIMES = {"pcm-1h": 3600.0, "pcm-1d": 86400.0, "pcm-1y": 3.15576e7, "pcm-1d-io": 86400.0}
CASES = ["additive", "pcm-1h", "pcm-1d", "pcm-1y", "additive-io", "pcm-1d-io", "pcm-1d-io-exact"]
TIMES["pcm-1d-io-exact"] = TIMES["pcm-1d-io"]
IO = ("-io", "-io-exact")


def lenet5() -> nn.Module:
    """nvcim's LeNet-5 for 28x28 inputs (nvcim.experiments.models.lenet5), rebuilt here so that aihwkit's
    environment needs no nvcim: the state_dict keys are the same."""
    feats = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(feats, nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


class Block(nn.Module):
    """nvcim.experiments.models.BasicBlock, rebuilt here (same layers, same state_dict keys)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.short(x)).relu()


def resnet18() -> nn.Module:
    """nvcim's resnet18 for 3x32x32 inputs and 10 classes (small stem, widths 64-512), rebuilt here."""
    blocks: list[nn.Module] = []
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        blocks += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


ARCH = {"lenet5": lenet5, "resnet18": resnet18}


def summary(acc: list[float]) -> dict[str, float]:
    n = len(acc)
    mean = sum(acc) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1))
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n), "chips": n}


# ---- nvcim ---------------------------------------------------------------------------------------------
def nvcim_cases(chips: int, state: dict, runs: int = 2) -> dict[str, dict]:
    import nvcim
    from nvcim.config import override, preset

    x, y = state["x"], state["y"]
    perfect = {"circuit.dac_bits": 0, "circuit.adc_bits": 0, "array.rows": 512, "array.cols": 512}
    additive = {"device.g_min": 0.0, "device.g_max": 25e-6, "device.bits_per_cell": 0,
                "device.programming.model": "additive", "device.programming.sigma": 0.05}
    aihwkit_io = dataclasses.replace(preset("ideal"), circuit=preset("pcm-aihwkit").circuit)  # its I/O section
    configs = {
        "additive": override(preset("ideal"), {**additive, **perfect}),
        **{c: override(preset("pcm"), {"device.drift.t_read": TIMES[c] + T_C, **perfect})
           for c in ("pcm-1h", "pcm-1d", "pcm-1y")},
        "additive-io": override(aihwkit_io, {**additive, "array.rows": 512, "array.cols": 512}),
        "pcm-1d-io": preset("pcm-aihwkit"),
        "pcm-1d-io-exact": preset("pcm-aihwkit"),
    }
    out = {}
    for case, cfg in configs.items():
        if case not in CASES:
            continue
        walls = []
        for _ in range(runs):  # cold (the process's first compile of this case's kernels included), then warm
            net = ARCH[state["arch"]]().eval()
            net.load_state_dict(state["weights"])
            start = time.perf_counter()
            m = nvcim.convert(net, cfg, chips=chips, seed=0)
            res = nvcim.evaluate(m, (x, y), batch_size=500, calibration=state["calibration"], progress=False)
            walls.append(time.perf_counter() - start)
        wall = walls[-1]
        out[case] = {**summary(res.accuracy.per_chip), "ideal": res.ideal_accuracy, "wall_s": wall,
                     "cold_wall_s": walls[0], "chip_images_per_s": chips * len(y) / wall}
        print(f"nvcim    {case:10s} {100 * out[case]['mean']:6.2f} ± {100 * out[case]['std']:5.2f} %  "
              f"({chips} chips, {wall:6.1f} s, {out[case]['chip_images_per_s']:9.0f} chip-images/s)", flush=True)
    return out


# ---- aihwkit ---------------------------------------------------------------------------------------------
def aihwkit_cases(chips: int, state: dict) -> dict[str, dict]:
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig

    class AdditiveProgramming(BaseNoiseModel):
        """N(0, (0.05 g_max)^2) once per programming, clipped at 0; no drift, no read noise."""

        def apply_programming_noise_to_conductance(self, g_target):
            return (g_target + 0.05 * 25.0 * torch.randn_like(g_target)).clamp(min=0.0)

        def generate_drift_coefficients(self, g_target):
            return torch.zeros_like(g_target)

        def apply_drift_noise_to_conductance(self, g_prog, drift_noise_param, t_inference):
            return g_prog

    def exact_readout(tile, reset_if: bool = False, exact_reference: bool = False) -> torch.Tensor:
        """The identity input read exactly from the tile's present weights: sum |G+ - G-|, as nvcim reads."""
        w = torch.as_tensor(tile.tile.get_weights())
        return torch.eye(w.shape[1]) @ w.T

    x, y = state["x"], state["y"]
    out = {}
    for case in CASES:
        rpu = InferenceRPUConfig()
        if case.endswith(IO):
            rpu.mapping.weight_scaling_omega = 1.0  # max|W| of each tile on the conductance range, as nvcim maps
        else:
            rpu.forward.is_perfect = True
        rpu.mapping.max_input_size = 512
        rpu.mapping.max_output_size = 512
        if case.startswith("additive"):
            from aihwkit.inference.converter.conductance import SinglePairConductanceConverter

            rpu.noise_model = AdditiveProgramming(SinglePairConductanceConverter(g_max=25.0))
            rpu.drift_compensation = None
        else:
            rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
            rpu.drift_compensation = GlobalDriftCompensation()
        net = ARCH[state["arch"]]().eval()
        net.load_state_dict(state["weights"])
        model = convert_to_analog(net, rpu).eval()
        if case.endswith("-exact"):
            for tile in model.analog_tiles():
                tile._forward_drift_readout_tensor = types.MethodType(exact_readout, tile)
        acc = []
        start = time.perf_counter()
        with torch.no_grad():
            for chip in range(chips):
                torch.manual_seed(1000 + chip)
                model.program_analog_weights()
                model.drift_analog_weights(TIMES.get(case, 0.0))
                correct = sum(int((model(x[i:i + 500]).argmax(-1) == y[i:i + 500]).sum())
                              for i in range(0, len(y), 500))
                acc.append(correct / len(y))
        wall = time.perf_counter() - start
        out[case] = {**summary(acc), "wall_s": wall, "chip_images_per_s": chips * len(y) / wall}
        print(f"aihwkit  {case:10s} {100 * out[case]['mean']:6.2f} ± {100 * out[case]['std']:5.2f} %  "
              f"({chips} chips, {wall:6.1f} s, {out[case]['chip_images_per_s']:9.0f} chip-images/s)", flush=True)
    return out


def whole_processes(args: argparse.Namespace, out_path: Path) -> None:
    """Each engine's cases in fresh processes, alternating, timed from outside: what a user's script costs."""
    py = os.environ.get("AIHWKIT_PYTHON", "/tmp/anchors/aihwkit-venv/bin/python")
    common = ["--model", args.model, "--chips", str(args.chips), "--images", str(args.images), "--cases", *CASES]
    engines = {"nvcim": [sys.executable, __file__, "--engine", "nvcim-once", *common],
               "aihwkit": [py, __file__, "--engine", "aihwkit", *common]}

    def timed(engine: str) -> tuple[float, dict]:
        start = time.perf_counter()
        subprocess.run(engines[engine], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        return wall, json.loads(out_path.with_suffix(f".{engine}.json").read_text())

    first, _ = timed("nvcim")  # this machine's first run of these kernels: they compile in the background
    while subprocess.run(["pgrep", "-f", "nvcim.chip.warmup"], capture_output=True).returncode == 0:
        time.sleep(2)  # let the background compile finish (it outlives the run)
    walls: dict[str, list[float]] = {"nvcim": [], "aihwkit": []}
    accs: dict[str, list[float]] = {"nvcim": [], "aihwkit": []}
    for i in range(args.processes):
        for engine in (("aihwkit", "nvcim") if i % 2 else ("nvcim", "aihwkit")):
            wall, res = timed(engine)
            walls[engine].append(wall)
            accs[engine].append(sum(res[c]["mean"] for c in CASES) / len(CASES))
            print(f"{engine:8s} whole process {wall:6.1f} s", flush=True)
    ratios = [a / n for a, n in zip(walls["aihwkit"], walls["nvcim"])]
    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "chips": args.chips,
           "images": args.images, "cases": CASES, "first_nvcim_process_s": first, "walls_s": walls,
           "mean_accuracy": accs, "pair_ratios": ratios}
    path = out_path.with_name(out_path.stem + "_processes.json")
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"nvcim's first process (kernels not compiled yet on this machine): {first:.1f} s; then per pair, "
          f"aihwkit / nvcim whole-process time: {', '.join(f'{r:.1f}x' for r in ratios)}; wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(ARCH), default="lenet5")
    ap.add_argument("--chips", type=int, default=0, help="chips per case (default 30; resnet18: 4)")
    ap.add_argument("--images", type=int, default=0, help="test images (default 1000; resnet18: 200)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--engine", choices=("both", "nvcim", "aihwkit", "nvcim-once"), default="both")
    ap.add_argument("--processes", type=int, default=0,
                    help="whole-process timing instead: this many pairs of fresh processes per engine, alternating, "
                         "each timed from its start to its exit (imports, programming, inference); the first "
                         "(untimed) nvcim process's background compile is let finish first")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=None, help="a subset of the cases")
    args = ap.parse_args()
    resnet = args.model == "resnet18"
    args.chips = args.chips or (4 if resnet else 30)
    args.images = args.images or (200 if resnet else 1000)
    CASES[:] = args.cases or (["pcm-1d"] if resnet else CASES)
    inputs = INPUTS.with_name(f"vs_aihwkit_{args.model}_inputs.pt") if resnet else INPUTS
    out_path = OUT.with_name(f"vs_aihwkit_{args.model}.json") if resnet else OUT
    if args.engine == "aihwkit":
        state = torch.load(inputs, weights_only=True)
        out_path.with_suffix(".aihwkit.json").write_text(json.dumps(aihwkit_cases(args.chips, state)))
        return
    if args.engine == "nvcim-once":  # one run in this process, as a user's script does it
        state = torch.load(inputs, weights_only=True)
        out_path.with_suffix(".nvcim.json").write_text(json.dumps(nvcim_cases(args.chips, state, runs=1)))
        return
    if resnet:  # speed only: random weights and inputs, the same for both engines
        torch.manual_seed(0)
        net = resnet18().eval()
        x = torch.randn(args.images, 3, 32, 32)
        state = {"arch": "resnet18", "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
                 "x": x, "y": torch.zeros(args.images, dtype=torch.long), "calibration": x[:64].clone()}
    else:
        from nvcim.experiments import load_dataset, trained_model

        data = load_dataset("fashion-mnist")
        model, _ = trained_model("lenet5", data, epochs=args.epochs, progress=False)
        state = {"arch": "lenet5", "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                 "x": data.test[0][:args.images].clone(), "y": data.test[1][:args.images].clone(),
                 "calibration": data.train[0][:256].clone()}
    inputs.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, inputs)
    if args.processes:
        whole_processes(args, out_path)
        return
    results = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
               "model": args.model, "chips": args.chips, "images": args.images, "epochs": args.epochs}
    # alternate the engines case by case would mix two environments in one process; instead each engine runs
    # all cases once, aihwkit first, then nvcim (the host idle otherwise)
    if args.engine == "both":
        py = os.environ.get("AIHWKIT_PYTHON", "/tmp/anchors/aihwkit-venv/bin/python")
        subprocess.run([py, __file__, "--engine", "aihwkit", "--model", args.model, "--chips", str(args.chips),
                        "--images", str(args.images), "--cases", *CASES], check=True)
        results["aihwkit"] = json.loads(out_path.with_suffix(".aihwkit.json").read_text())
    results["nvcim"] = nvcim_cases(args.chips, state)
    if "aihwkit" in results:
        print("\ncase             nvcim              aihwkit            apart (combined SE)   nvcim / aihwkit speed")
        for case in CASES:
            a, b = results["nvcim"][case], results["aihwkit"][case]
            se = math.sqrt(a["sem"] ** 2 + b["sem"] ** 2)
            z = (a["mean"] - b["mean"]) / se if se > 0 else 0.0
            speed = a["chip_images_per_s"] / b["chip_images_per_s"]
            print(f"{case:15s}  {100 * a['mean']:6.2f} ± {100 * a['std']:5.2f}    {100 * b['mean']:6.2f} ± "
                  f"{100 * b['std']:5.2f}    {z:+6.2f}                {speed:6.1f}x")
            results.setdefault("apart_se", {})[case] = z
            results.setdefault("speed_ratio", {})[case] = speed
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
