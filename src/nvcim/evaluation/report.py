"""Files an evaluation leaves behind: result.json, the per-chip accuracy histogram, the config."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ChipConfig, dumps
from ..errors import NvcimError
from .evaluate import EvalResult


def histogram(result: EvalResult, path: Path, title: str = "") -> None:
    """PNG histogram of per-chip accuracy with the ideal accuracy, the mean and the worst-k% marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pct = result.metric.get("unit") == "%"
    k = 100.0 if pct else 1.0  # fractions shown as percent
    acc = [k * a for a in result.accuracy.per_chip]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.hist(acc, bins=min(40, max(10, len(acc) // 5)), color="#4C72B0", alpha=0.85, label="chips")
    ax.axvline(k * result.ideal_accuracy, color="k", ls="--", label=f"ideal {result.fmt(result.ideal_accuracy)}")
    ax.axvline(k * result.accuracy.mean, color="#DD8452", label=f"mean {result.fmt(result.accuracy.mean)}")
    ax.axvline(k * result.accuracy.kpp, color="#C44E52", ls=":",
               label=f"worst {result.accuracy.kpp_k:g} % {result.fmt(result.accuracy.kpp)}")
    name, unit = result.metric.get("name", "top1"), "%" if pct else result.metric.get("unit", "")
    ax.set_xlabel(("test accuracy" if name == "top1" else name) + " per chip" + (f" ({unit})" if unit else ""))
    ax.set_ylabel("number of chips")
    ax.set_title(title or f"{result.chips} simulated chips")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: EvalResult, config: ChipConfig, out: str | Path, title: str = "") -> Path:
    """Write result.json (atomically), accuracy_hist.png and chip.toml into ``out``; returns the folder."""
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".result.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, d / "result.json")
        (d / "chip.toml").write_text(dumps(config), encoding="utf-8")
        histogram(result, d / "accuracy_hist.png", title)
    except OSError as e:
        raise NvcimError(f"cannot write results to {d}: {e.strerror or e}") from None
    return d
