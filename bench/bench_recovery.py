"""Recovery-method table: ideal / degraded / each method and the best combinations, with cost.

Usage:  .venv/bin/python bench/bench_recovery.py [--model lenet5] [--chips 100] [--limit 2000]
Writes bench/results/recovery_<model>.json and prints a Markdown table per chip setting. Each method
starts from freshly programmed chips (same seed, so the same devices) of the same trained model. A chain
may name a deployment after "@" (``vat@clip1.5``: weights clipped at 1.5 x their RMS; ``@adccol``: per-column
ADC ranges; ``/`` joins them); its recovery ratio is
still measured from the setting's own unmitigated chips (the "degraded" row), so that rows compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from pathlib import Path

import torch

import nvcim
from nvcim.experiments import load_dataset, trained_model
from nvcim.methods import TaskData, get, recover

SETTINGS = {
    "rram-mlc-4bit": nvcim.preset("rram-mlc-4bit"),
    "rram-sliced-1bit (SWIM)": nvcim.preset("rram-sliced-1bit"),
    "between-chip (sigma_b 0.5/array)": nvcim.override(nvcim.preset("ideal"), {
        "name": "between-chip", "device.bits_per_cell": 4, "device.programming.model": "lognormal",
        "device.programming.sigma": 0.05, "variability.between_sigma": 0.5, "variability.scope": "array",
        "array.rows": 32}),
}

# Han et al.: each non-ideality alone on a clean 4-bit cell, then all together
_CLEAN = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.programming.sigma": 0.0, "device.faults.sa0": 0.0,
                                                        "device.faults.sa1": 0.0})
HAN = {
    "faults": {"device.faults.sa0": 0.0175, "device.faults.sa1": 0.0904},
    "variation": {"device.programming.sigma": 0.1, "variability.between_sigma": 0.3, "variability.scope": "array"},
    "ir-drop": {"array.wire_resistance": 4.0, "array.rows": 256},
    "adc-4bit": {"circuit.adc_bits": 4, "circuit.dac_bits": 8},
    "drift": {"device.drift.nu_mean": 0.05, "device.drift.nu_std": 0.015, "device.drift.t0": 20.0,
              "device.drift.t_read": 86400.0},
}
HAN["all"] = {k: v for d in HAN.values() for k, v in d.items()}
for _name, _set in HAN.items():
    SETTINGS[f"han: {_name}"] = nvcim.override(_CLEAN, {"name": f"han-{_name}", **_set})
# ablation of "all": every non-ideality but one, to find which one the combination cannot afford
for _name in [n for n in HAN if n != "all"]:
    _set = {k: v for n, d in HAN.items() if n not in ("all", _name) for k, v in d.items()}
    SETTINGS[f"han: all but {_name}"] = nvcim.override(_CLEAN, {"name": f"han-all-but-{_name}", **_set})

# Deng & Orshansky: b-bit cells (one per weight, a differential pair) and b-bit inputs, with their variation; the
# degraded row is post-training quantisation onto the chip, against qvat
for _bits in (2, 3, 4):
    SETTINGS[f"deng: {_bits}-bit"] = nvcim.override(_CLEAN, {
        "name": f"deng-{_bits}bit", "device.bits_per_cell": _bits,
        "circuit.dac_bits": _bits, "device.programming.sigma": 0.05, "variability.between_sigma": 0.1})

CHAINS = [
    ["vat"], ["vat:censor"], ["qvat"], ["kd"], ["rsa"], ["kd", "rsa"], ["write-verify"], ["write-verify:10"],
    ["write-verify:10-magnitude"], ["write-verify:10-random"], ["write-verify:10-expected"],
    ["write-verify:10-cells"], ["self-tune"],
    ["chip-kd"], ["map-correct"], ["rsa:faults"], ["kd", "rsa:faults"],
    ["vat", "chip-kd"], ["map-correct", "chip-kd"], ["write-verify:10", "self-tune"],
    ["map-correct", "self-tune", "chip-kd"], ["map-correct:remap"], ["map-correct:remap", "chip-kd"],
    ["chip-kd:rewrite"],
]

OPTIONS = {
    # Training methods run their defaults: early stopping on validation chips within a 30-epoch budget.
    "vat": ("vat", {}), "vat:censor": ("vat", {"censor": 1.5}),
    "vat:noadc": ("vat", {"adc": "off"}),  # training chips without the ADC, whatever its bits (ablation)
    "vat:noadc60": ("vat", {"adc": "off", "epochs": 60}),  # twice the epoch budget (Han "all" used all 30)
    "qvat": ("qvat", {}), "kd": ("kd", {}),
    "kd:a0.9": ("kd", {"alpha": 0.9}), "kd:t4": ("kd", {"tau": 4.0}),  # KD's weights (Charan: tau 2)
    # Charan's students start untrained (the teacher is the trained model): a fresh model, a longer budget
    "vat:scratch": ("vat", {"init": "scratch", "epochs": 80, "patience": 8}),
    "kd:scratch": ("kd", {"init": "scratch", "epochs": 80, "patience": 8}),
    "rsa": ("rsa", {"fraction": 0.05, "epochs": 2, "samples": 2048}),
    "rsa:faults": ("rsa", {"fraction": 0.05, "epochs": 2, "samples": 2048, "selection": "faults"}),
    "rsa:faults10": ("rsa", {"fraction": 0.10, "epochs": 2, "samples": 2048, "selection": "faults"}),
    "write-verify": ("write-verify", {}), "write-verify:10": ("write-verify", {"fraction": 0.1}),
    "write-verify:10-magnitude": ("write-verify", {"fraction": 0.1, "sensitivity": "magnitude"}),
    "write-verify:10-random": ("write-verify", {"fraction": 0.1, "sensitivity": "random"}),
    "write-verify:10-expected": ("write-verify", {"fraction": 0.1, "sensitivity": "expected"}),
    "write-verify:10-cells": ("write-verify", {"fraction": 0.1, "sensitivity": "expected", "cells": True}),
    "write-verify:20-cells": ("write-verify", {"fraction": 0.2, "sensitivity": "expected", "cells": True}),
    "self-tune": ("self-tune", {}), "chip-kd": ("chip-kd", {}), "map-correct": ("map-correct", {}),
    "self-tune:chips": ("self-tune", {"target": "chips"}),  # to the mean chip (after noise training)
    "map-correct:remap": ("map-correct", {"remap": True}),
    "chip-kd:rewrite": ("chip-kd", {"rewrite": 0.2}),  # re-programs up to 20 % of the pairs first (Lv)
}


def deployment(spec: str) -> tuple[list[str], dict[str, float | bool]]:
    """A chain spec "vat+rsa" or "vat+rsa@clip1.5/adccol": the methods, and how the chips are deployed,
    "/"-separated: ``clipK`` (``mapping.clip_sigma = K``: weights clipped at K x their RMS, which bounds a
    stuck cell's error), ``adccol`` (``circuit.adc_per_column``: an ADC range per column, not per array)."""
    chain, _, deploy = spec.partition("@")
    over: dict[str, float | bool] = {}
    for item in filter(None, deploy.split("/")):
        m = re.fullmatch(r"clip([0-9.]+)", item)
        if m:
            over["mapping.clip_sigma"] = float(m.group(1))
        elif item == "adccol":
            over["circuit.adc_per_column"] = True
        else:
            raise SystemExit(f"unknown deployment {item!r} in {spec!r}: allowed clipK (K > 0, RMS units), adccol")
    return chain.split("+"), over


def device_name(device: str) -> str:
    """What ran it, for the results file: the GPU's name, or the CPU's thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def table(path: Path) -> str:
    """Markdown tables (one per chip setting) from a results JSON written by this script."""
    res = json.loads(path.read_text())
    out = []
    for sname, rows in res["rows"].items():
        r0 = rows[0]
        out.append(f"**{sname}** — ideal {100 * r0['ideal']:.2f} %, degraded {100 * r0['degraded_mean']:.2f} ± "
                   f"{100 * r0['degraded_std']:.2f} % (worst 1 %: {100 * r0['degraded_kpp1']:.2f} %)\n")
        out.append("| method | deployed (%) | mean ± std (%) | worst 1 % (%) | recovery ratio | write-verify pulses "
                   "/ chip | SRAM | samples (labelled / unlabelled) | steps | epochs | chips put back | time (s) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            c = r["cost"]
            deployed = r.get("deployed_mean", r["degraded_mean"])  # the chips before the methods ran
            out.append(f"| {r['methods']} | {100 * deployed:.2f} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
                       f"{100 * r['kpp1']:.2f} | "
                       f"{r['recovery_ratio']:.2f} | {c['write_verify_pulses']:.0f} | "
                       f"{100 * c['sram_fraction']:.1f} % | "
                       f"{c['labelled_samples']} / {c['calibration_samples']} | {c['finetune_steps']} | "
                       f"{c.get('epochs', 0):.0f} | {sum(x['chips'] for x in r.get('reverted_chips', []))} | "
                       f"{r['total_s']:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="", help="only print the Markdown tables of this results JSON")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON", help="merge results files of one model "
                    "(runs split across processes) into --out/recovery_MODEL{--tag}.json, then stop")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--chips", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3, help="digital training epochs of the model (0: the "
                    "dataset's default, 40 on digits)")
    ap.add_argument("--limit", type=int, default=2000, help="test images (the first N)")
    ap.add_argument("--settings", default=",".join(s for s in SETTINGS if not s.startswith(("han: ", "deng: "))),
                    help="comma-separated chip settings; 'han' for Han's six (each non-ideality alone, then all), "
                    "'deng' for Deng & Orshansky's 2-, 3- and 4-bit chips")
    ap.add_argument("--chains", default="", help="comma-separated chains to run (default all), e.g. "
                    "self-tune,map-correct+chip-kd")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {**parts[0], "rows": {}}
        for part in parts:
            for sname, rows in part["rows"].items():
                merged["rows"].setdefault(sname, []).extend(rows)
        dest = Path(args.out) / f"recovery_{merged['model']}{args.tag}.json"
        dest.write_text(json.dumps(merged, indent=2) + "\n")
        print(f"wrote {dest}")
        return
    data = load_dataset(args.dataset)
    test = (data.test[0][:args.limit], data.test[1][:args.limit])
    task = TaskData(data.train, data.train[0])
    rows: dict[str, list[dict]] = {}
    names = [n for s in args.settings.split(",") for n in ([h for h in SETTINGS if h.startswith(f"{s}: ")]
                                                          if s in ("han", "deng") else [s])]
    for sname in names:
        cfg = SETTINGS[sname]
        rows[sname] = []
        wanted = args.chains.split(",") if args.chains else ["+".join(c) for c in CHAINS]
        baseline = None  # the setting's own chips, unmitigated: what every row's recovery ratio is measured from
        for spec in wanted:
            chain, over = deployment(spec)
            model, _ = trained_model(args.model, data, epochs=args.epochs or None, progress=False, device=args.device)
            if baseline is None:
                # converters calibrated as recover() calibrates them (training inputs, check ones held out)
                baseline = nvcim.evaluate(nvcim.convert(copy.deepcopy(model), cfg, chips=args.chips, seed=0), test,
                                          calibration=task.with_check().inputs(256), progress=False).accuracy
            chips = nvcim.convert(model, nvcim.override(cfg, over) if over else cfg, chips=args.chips, seed=0)
            methods = [get(OPTIONS[c][0], **OPTIONS[c][1]) for c in chain]
            t0 = time.perf_counter()
            rep = recover(chips, methods, task, test, progress=False)
            a, b = rep.after.accuracy, rep.before.accuracy
            ideal = rep.before.ideal_accuracy
            row = {"methods": spec, "ideal": ideal, "degraded_mean": baseline.mean,
                   "degraded_std": baseline.std, "degraded_kpp1": baseline.kpp, "mean": a.mean, "std": a.std,
                   "kpp1": a.kpp, "recovery_ratio": (a.mean - baseline.mean) / max(1e-9, ideal - baseline.mean),
                   "deployed_mean": b.mean, "deployment": over, "cost": rep.cost.to_dict(),
                   "reverted_chips": [{"method": m, "chips": n} for m, n in rep.reverted],
                   "total_s": time.perf_counter() - t0}
            rows[sname].append(row)
            print(f"{sname:34s} {row['methods']:32s} {100 * b.mean:6.2f} -> {100 * a.mean:6.2f} ± {100 * a.std:5.2f}"
                  f"  kpp1 {100 * a.kpp:6.2f}  rr {row['recovery_ratio']:5.2f}"
                  f"  pulses {rep.cost.write_verify_pulses:9.0f}"
                  f"  sram {rep.cost.sram_fraction:.3f}  {row['total_s']:.0f}s", flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"recovery_{args.model}{args.tag}.json").write_text(json.dumps(
                {"model": args.model, "dataset": args.dataset, "chips": args.chips, "test_images": args.limit,
                 "torch": torch.__version__, "device": device_name(args.device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
