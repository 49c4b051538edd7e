"""``nvcim analyze``: attribute a model's accuracy loss on a chip config to each non-ideality and each layer
(after Han 2025's impact analysis).

Per effect, two numbers: the loss with that effect **alone** (every other effect switched off), and the
accuracy **regained** by removing it from the full config. Per layer: the loss with **only that layer** on
the chip (the rest digital). Error bars are one standard error over the Monte-Carlo chips; the regained
accuracy is a paired difference (same chips with and without the effect), so its error bar is that of the
per-chip difference. Effects that the config does not have are left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..config import ChipConfig, override
from ..devices import has_drift
from ..errors import ConfigError, NvcimError

# effect name -> (is it present in this config?, overrides that switch it off)
EFFECTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "programming variation": (lambda c: c.device.programming.varies or c.variability.between_sigma > 0,
                              {"device.programming.model": "none", "variability.between_sigma": 0.0}),
    "read noise": (lambda c: c.device.read_noise > 0, {"device.read_noise": 0.0}),
    "stuck-at faults": (lambda c: c.device.faults.sa0 > 0 or c.device.faults.sa1 > 0,
                        {"device.faults.sa0": 0.0, "device.faults.sa1": 0.0}),
    "drift": (lambda c: has_drift(c.device),  # any drift law: PCM's drifts at every state
              {"device.drift.model": "power-law", "device.drift.nu_mean": 0.0, "device.drift.nu_std": 0.0}),
    "finite levels": (lambda c: c.device.n_levels > 0,
                      {"device.bits_per_cell": 0, "device.levels": [], "mapping.weight_bits": 0}),
    "on/off ratio": (lambda c: c.device.g_min > 0 and not c.device.levels, {"device.g_min": 0.0}),
    "DAC": (lambda c: c.circuit.dac_bits > 0, {"circuit.dac_bits": 0}),
    "ADC": (lambda c: c.circuit.adc_bits > 0, {"circuit.adc_bits": 0}),
    "ADC gain/offset error": (lambda c: c.circuit.adc_gain_sigma > 0 or c.circuit.adc_offset_sigma > 0,
                              {"circuit.adc_gain_sigma": 0.0, "circuit.adc_offset_sigma": 0.0}),
    "IR drop": (lambda c: c.array.wire_resistance > 0, {"array.wire_resistance": 0.0}),
}


def _switch_off(cfg: ChipConfig, effects: list[str]) -> ChipConfig | None:
    """``cfg`` with ``effects`` off, or None when the config cannot express that (e.g. continuous levels
    with a per-level variation table)."""
    changes: dict[str, Any] = {}
    for name in effects:
        changes.update(EFFECTS[name][1])
    try:
        return override(cfg, changes)
    except ConfigError:
        return None


@dataclass
class Attribution:
    name: str
    kind: str  # "alone", "removed" or "layer"
    accuracy: float
    loss: float  # accuracy points lost (alone/layer) or regained (removed), as fractions
    se: float
    per_chip: list[float] = field(default_factory=list)


@dataclass
class Analysis:
    ideal: float
    full: float
    full_se: float
    chips: int
    rows: list[Attribution]
    skipped: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"ideal_accuracy": self.ideal, "full_accuracy": self.full, "full_se": self.full_se,
                "chips": self.chips, "skipped": self.skipped,
                "rows": [{"name": r.name, "kind": r.kind, "accuracy": r.accuracy, "loss": r.loss, "se": r.se}
                         for r in self.rows]}

    def table(self) -> str:
        lines = [f"ideal {100 * self.ideal:.2f} %, full chip {100 * self.full:.2f} ± {100 * self.full_se:.2f} % "
                 f"(loss {100 * (self.ideal - self.full):.2f} points, {self.chips} chips, ± = 1 s.e.)",
                 f"{'':24s} {'kind':8s} {'accuracy %':>11s} {'points':>14s}"]
        for r in sorted(self.rows, key=lambda r: (r.kind != "alone", r.kind != "removed", -r.loss)):
            what = {"alone": "lost alone", "removed": "regained", "layer": "lost"}[r.kind]
            lines.append(f"{r.name[:24]:24s} {r.kind:8s} {100 * r.accuracy:11.2f} "
                         f"{100 * r.loss:7.2f} ± {100 * r.se:4.2f}  {what}")
        if self.skipped:
            lines.append("not analysed: " + "; ".join(self.skipped))
        return "\n".join(lines)


def _se(v: list[float]) -> float:
    n = len(v)
    if n < 2:
        return 0.0
    m = sum(v) / n
    return math.sqrt(sum((a - m) ** 2 for a in v) / (n - 1) / n)


def analyze(net: nn.Module, config: ChipConfig, data: tuple[Any, Any], calibration: Any, chips: int = 100,
            seed: int = 0, batch_size: int = 500, progress: bool = True) -> Analysis:
    """Impact analysis of ``config`` on the digital model ``net`` (left untouched) over ``chips`` chips."""
    from ..chip import convert
    from ..evaluation import evaluate

    # every unit that conversion puts on the chip (Linear, convolutions, attention, recurrent layers,
    # GPT-2's Conv1D), by the name its filter sees: a one-chip conversion says which they are
    layer_names = [n for n, _ in convert(net, config, chips=1, seed=seed).report.converted]
    if not layer_names:
        raise NvcimError("the model has no layer that nvcim puts on the chip (Linear, Conv1d/2d, "
                         "ConvTranspose2d, MultiheadAttention, LSTM/GRU/RNN, GPT-2 Conv1D) to analyse")
    present = [e for e, (has, _) in EFFECTS.items() if has(config)]
    jobs: list[tuple[str, str, ChipConfig | None, Any]] = [("full", "full", config, None)]
    skipped = []
    for e in present:
        alone = _switch_off(config, [x for x in present if x != e])
        without = _switch_off(config, [e])
        if alone is None or without is None:
            skipped.append(f"{e} (this config cannot switch it off independently)")
            continue
        jobs += [(e, "alone", alone, None), (e, "removed", without, None)]
    for name in layer_names:
        jobs.append((name, "layer", config, lambda m, n, keep=name: n == keep))
    results: dict[tuple[str, str], tuple[float, list[float]]] = {}
    for name, kind, cfg, filt in tqdm(jobs, desc="impact analysis", unit="config", disable=not progress):
        assert cfg is not None
        model = convert(net, cfg, chips=chips, seed=seed, filter_fn=filt)
        model.calibrate(calibration)
        res = evaluate(model, data, batch_size=batch_size, progress=False)
        results[(name, kind)] = (res.ideal_accuracy, res.accuracy.per_chip)
    ideal, full = results[("full", "full")]
    mean_full = sum(full) / len(full)
    rows = []
    for (name, kind), (_, pc) in results.items():
        if kind == "full":
            continue
        acc = sum(pc) / len(pc)
        if kind == "removed":
            diff = [a - b for a, b in zip(pc, full)]
            rows.append(Attribution(name, kind, acc, acc - mean_full, _se(diff), pc))
        else:
            rows.append(Attribution(name, kind, acc, ideal - acc, _se(pc), pc))
    return Analysis(ideal, mean_full, _se(full), chips, rows, skipped)


def plot(analysis: Analysis, path: Path, title: str = "") -> None:
    """Bar chart: per effect (alone / regained) and per layer, with 1-s.e. error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eff = [r for r in analysis.rows if r.kind != "layer"]
    names = sorted({r.name for r in eff}, key=lambda n: -max(r.loss for r in eff if r.name == n))
    lay = [r for r in analysis.rows if r.kind == "layer"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.45 * max(len(names), len(lay), 2)))
    ax = axes[0]
    y = list(range(len(names)))
    for off, kind, color, label in ((-0.2, "alone", "#C44E52", "loss with the effect alone"),
                                    (0.2, "removed", "#4C72B0", "accuracy regained by removing it")):
        vals = [next((r for r in eff if r.name == n and r.kind == kind), None) for n in names]
        ax.barh([i + off for i in y], [100 * v.loss if v else 0 for v in vals], height=0.4, color=color,
                xerr=[100 * v.se if v else 0 for v in vals], capsize=3, label=label)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (percentage points)")
    ax.set_title("per non-ideality")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    ax = axes[1]
    ax.barh(range(len(lay)), [100 * r.loss for r in lay], xerr=[100 * r.se for r in lay], color="#55A868",
            capsize=3, label="loss with only this layer on the chip")
    ax.set_yticks(range(len(lay)), [r.name for r in lay])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy lost (percentage points)")
    ax.set_title("per layer")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or f"impact analysis: ideal {100 * analysis.ideal:.1f} %, chip {100 * analysis.full:.1f} % "
                 f"({analysis.chips} chips, error bars 1 s.e.)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def write(analysis: Analysis, out: str | Path, title: str = "") -> Path:
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / "analysis.json").write_text(json.dumps(analysis.to_dict(), indent=2) + "\n", encoding="utf-8")
        plot(analysis, d / "impact.png", title)
    except OSError as e:
        raise NvcimError(f"cannot write the analysis to {d}: {e.strerror or e}") from None
    return d
