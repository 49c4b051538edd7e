"""``auto``: try a budgeted set of recovery chains on every chip, keep the best for its cost.

Each candidate chain runs on the chips (every method in it under the guard of :mod:`.guard`), is scored on
the held-out check inputs (mean and worst per-chip accuracy) with its cost, and the chips are put back
(:meth:`Chip.checkpoint` / :meth:`Chip.restore`). A chain is on the Pareto front when no other chain is at
least as accurate and no more costly in every resource (pulses, SRAM, labelled and unlabelled samples,
time). The pick is the cheapest chain (fewest pulses, then SRAM, labelled samples, time) whose check
accuracy is within ``tolerance`` of the best one's; it is then applied again, for real, and its result
is what the chips keep. Chains over the budget (``max_pulses``, ``max_sram``, ``labels``) are not tried.

Training methods (vat, qvat, kd) are not candidates: they change the model, not a chip, and cost an
epoch budget each. On silicon every trial writes the cells it changes and restoring writes them back, so
the search's own pulses are reported too (``search_pulses``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..chip.interface import Chip
from ..errors import NvcimError
from ..evaluation.task_metrics import TopK
from .base import Cost, Method, TaskData, get, register
from .guard import chip_scores, guarded_apply, labelled_check

# name: (method, options), the candidates' building blocks
BLOCKS: dict[str, tuple[str, dict[str, Any]]] = {
    "self-tune": ("self-tune", {}),
    "map-correct": ("map-correct", {}),
    "chip-kd": ("chip-kd", {}),
    "rsa-faults": ("rsa", {"selection": "faults", "fraction": 0.05}),
    "write-verify-10": ("write-verify", {"fraction": 0.1}),
}
CHAINS = ("self-tune", "map-correct", "map-correct+self-tune", "chip-kd", "map-correct+chip-kd",
          "self-tune+chip-kd", "write-verify-10+self-tune", "rsa-faults", "map-correct+rsa-faults")


@dataclass
class Trial:
    """One candidate chain: its check accuracy and what it cost (per chip)."""

    chain: str
    accuracy: float  # mean per-chip accuracy on the check inputs
    worst: float  # the worst chip's
    pulses: float
    sram: float
    labelled: int
    unlabelled: int
    seconds: float
    reverted: int = 0  # chip-method pairs the guard put back
    pareto: bool = False
    chosen: bool = False

    def costs(self) -> tuple[float, ...]:
        return (self.pulses, self.sram, float(self.labelled), float(self.unlabelled), self.seconds)


def pareto(trials: list[Trial]) -> None:
    """Mark the trials that no other trial dominates (as accurate or more, no costlier anywhere, better
    somewhere)."""
    for t in trials:
        t.pareto = not any(o is not t and o.accuracy >= t.accuracy and all(a <= b for a, b in zip(o.costs(), t.costs()))
                           and (o.accuracy > t.accuracy or o.costs() != t.costs()) for o in trials)


def table(trials: list[Trial]) -> str:
    """The trials as a Markdown table, best check accuracy first."""
    rows = ["| chain | check accuracy (%) | worst chip (%) | pulses / chip | SRAM | labelled / unlabelled | "
            "time (s) | chips put back | Pareto | chosen |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(trials, key=lambda t: -t.accuracy):
        rows.append(f"| {t.chain} | {100 * t.accuracy:.2f} | {100 * t.worst:.2f} | {t.pulses:.0f} | "
                    f"{100 * t.sram:.1f} % | {t.labelled} / {t.unlabelled} | {t.seconds:.1f} | {t.reverted} | "
                    f"{'yes' if t.pareto else ''} | {'**yes**' if t.chosen else ''} |")
    return "\n".join(rows)


@register
class Auto(Method):
    """Try a budgeted set of chains, keep the cheapest within ``tolerance`` of the best; Pareto table.

    Options: ``chains`` (comma-separated, of the blocks self-tune, map-correct, chip-kd, rsa-faults,
    write-verify-10; default: nine chains), ``tolerance`` (accuracy, default 0.005), ``max_pulses`` per chip,
    ``max_sram`` (fraction), ``labels`` (false: only label-free chains).
    """

    name = "auto"

    def __init__(self, chains: str = ",".join(CHAINS), tolerance: float = 0.005, max_pulses: float = float("inf"),
                 max_sram: float = 1.0, labels: bool = True) -> None:
        self.chains = [c.strip() for c in chains.split(",") if c.strip()]
        for c in self.chains:
            for b in c.split("+"):
                if b not in BLOCKS:
                    raise NvcimError(f"auto.chains: unknown block {b!r}; allowed {', '.join(BLOCKS)} joined by '+'")
        if not self.chains:
            raise NvcimError("auto.chains is empty: allowed a comma-separated list of chains")
        if not 0 <= tolerance < 1 or max_pulses < 0 or not 0 <= max_sram <= 1:
            raise NvcimError("auto: tolerance must be in [0, 1), max_pulses >= 0 and max_sram in [0, 1]")
        self.tolerance, self.max_pulses, self.max_sram, self.labels = tolerance, max_pulses, max_sram, labels
        self.trials: list[Trial] = []
        self.search_pulses = 0.0

    def _run(self, chip: Chip, data: TaskData, chain: str, progress: bool) -> tuple[Cost, int]:
        cost, back = Cost(), 0
        for block in chain.split("+"):
            name, opts = BLOCKS[block]
            c, g = guarded_apply(get(name, **opts), chip, data, progress=progress)
            cost, back = cost + c, back + int(g.reverted.sum())
        return cost, back

    def _allowed(self, chain: str) -> bool:
        blocks = chain.split("+")
        if not self.labels and any(get(BLOCKS[b][0], **BLOCKS[b][1]).needs_labels for b in blocks):
            return False  # a chain whose methods read labels (rsa, SWIM's Fisher sensitivity)
        if self.max_sram < 0.05 and "rsa-faults" in blocks:
            return False
        return not (self.max_pulses == 0 and any(b in ("map-correct", "write-verify-10") for b in blocks))

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        if not isinstance(data.task, TopK):
            raise NvcimError(f"auto ranks chains by check accuracy and its tolerance is in accuracy points; with "
                             f"metric '{data.task.name}' name a chain yourself (e.g. self-tune, rsa, vat)")
        data = labelled_check(chip, data)
        assert data.check is not None
        self.trials, self.search_pulses = [], 0.0
        for chain in filter(self._allowed, self.chains):
            state = chip.checkpoint()
            t0 = time.perf_counter()
            cost, back = self._run(chip, data, chain, progress)
            seconds = time.perf_counter() - t0
            acc, _ = chip_scores(chip, data.check)
            restored = chip.restore(state, torch.ones(chip.n_chips, dtype=torch.bool))
            self.search_pulses += cost.write_verify_pulses + float(restored.double().mean())
            if cost.write_verify_pulses > self.max_pulses or cost.sram_fraction > self.max_sram:
                continue  # over the budget (its cost is known only once it ran)
            self.trials.append(Trial(chain, float(acc.mean()), float(acc.min()), cost.write_verify_pulses,
                                     cost.sram_fraction, cost.labelled_samples, cost.calibration_samples, seconds,
                                     back))
        if not self.trials:
            raise NvcimError("auto: no chain fits the budget (max_pulses, max_sram, labels)")
        pareto(self.trials)
        best = max(t.accuracy for t in self.trials)
        near = [t for t in self.trials if t.accuracy >= best - self.tolerance]
        pick = min(near, key=lambda t: (t.costs()[0], t.costs()[1], t.costs()[2], t.costs()[4]))
        pick.chosen = True
        cost, _ = self._run(chip, data, pick.chain, progress)
        cost.notes.insert(0, f"auto: tried {len(self.trials)} chains on {len(data.check[1])} check inputs, chose "
                          f"{pick.chain} (check accuracy {100 * pick.accuracy:.2f} %, best {100 * best:.2f} %); the "
                          f"search itself wrote {self.search_pulses:.0f} pulses per chip")
        return cost

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.trials]


def plot(trials: list[Trial], path: str, title: str = "") -> None:
    """PNG: check accuracy of every tried chain against its time and its pulses; the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    for ax, (label, get_x) in zip(axes, (("time per run (s)", lambda t: t.seconds),
                                         ("write pulses per chip (+1)", lambda t: t.pulses + 1))):
        for t in trials:
            ax.scatter(get_x(t), 100 * t.accuracy, s=60 if t.chosen else 30,
                       c="#C44E52" if t.chosen else ("#4C72B0" if t.pareto else "#999999"), zorder=3)
            ax.annotate(t.chain, (get_x(t), 100 * t.accuracy), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("check accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "recovery chains: blue Pareto front, red chosen, grey dominated", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
