"""``nvcim report RUN``: one self-contained HTML page (figures inlined) plus PNG and SVG figures.

Figures: accuracy against each swept parameter (mean line, +-1 std band and worst-1 % line per method;
points that differ in other axes or seeds are pooled chip by chip), per-chip accuracy histograms, and
the hardware cost. The table compares methods at every grid point with recovery ratio and cost.
Every user-supplied string (names, methods, parameters) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import NvcimError
from ..evaluation.metrics import kpp
from .store import Store

MAX_SERIES = 8  # lines per sweep figure before other axes are pooled
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
          "#64B5CD"]


def _stats(per_chip: list[float], higher_is_better: bool = True) -> dict[str, float]:
    """Mean, std and the worst 1 % (the low tail, or the high tail of a lower-is-better metric), by the one
    definition of ``nvcim.evaluation.metrics.kpp`` that result.json uses."""
    n = len(per_chip)
    mean = sum(per_chip) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in per_chip) / max(1, n - 1))
    return {"mean": mean, "std": std, "kpp": kpp(per_chip, 1.0, higher_is_better), "min": min(per_chip), "n": n}


TOP1: dict[str, Any] = {"name": "top1", "higher_is_better": True, "unit": "%"}


def metric_of(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], float, str]:
    """The rows' metric (top-1 for rows stored before results named theirs), the factor its values are shown
    with (100 for fractions) and its axis label. Rows of several metrics are refused: one figure, one scale."""
    metrics = {json.dumps(r["result"].get("metric", TOP1), sort_keys=True) for r in rows}
    if len(metrics) > 1:
        raise NvcimError(f"the run's results hold several metrics ({', '.join(sorted(metrics))}): report them "
                         "per experiment (nvcim report RUN --experiment NAME)")
    m: dict[str, Any] = json.loads(metrics.pop()) if metrics else TOP1
    unit = str(m.get("unit", ""))
    label = ("test accuracy" if m["name"] == "top1" else str(m["name"])) + (f" ({unit})" if unit else "")
    return m, (100.0 if m.get("unit") == "%" else 1.0), label


def axis_label(path: str) -> str:
    """An axis label with the field's unit, from the config schema."""
    from ..config import ChipConfig, describe

    for p, _default, allowed, doc in describe(ChipConfig):
        if p == path:
            unit = allowed.rsplit(" ", 1)[-1] if allowed and not allowed.endswith(("]", ")")) else ""
            if allowed == "true/false":
                unit = "false/true"
            elif unit == "text" or "'" in unit:
                unit = "category"
            short = re.split(r"[.;:,]", re.sub(r"^\[[^]]*\] ", "", doc))[0].strip()[:48]
            return f"{path.rsplit('.', 1)[-1]}: {short}" + f" ({unit or 'dimensionless'})"
    return path


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _tick(v: Any, axis: str) -> str:
    """A short x tick label: times (``device.drift.*`` in seconds) in the largest fitting unit, other numbers
    with three significant digits."""
    if axis.startswith("device.drift.t") and isinstance(v, (int, float)):
        for unit, sec in (("y", 31557600.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
            if v >= 2 * sec or (unit != "min" and v >= sec * 0.99):
                return f"{v / sec:.3g} {unit}"
        return f"{v:.3g} s"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, stem: str) -> tuple[Path, Path]:
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    _plt().close(fig)
    return png, svg


def sweep_figure(rows: list[dict[str, Any]], axis: str, out: Path) -> tuple[Path, Path]:
    """Accuracy against one swept parameter: mean, +-1 std band and worst-1 % per method (and per value of
    the other axes while that gives at most MAX_SERIES lines; beyond, they are pooled), ideal dashed."""
    plt = _plt()
    others = sorted({a for r in rows for a in r["params"]} - {axis})

    def series(r: dict[str, Any], split: bool) -> str:
        if not split or not others:
            return str(r["method"])
        where = ", ".join(_short(a) + "=" + _fmt(r["params"].get(a)) for a in others)
        return f"{r['method']} ({where})"

    metric, k, label = metric_of(rows)
    split = len({series(r, True) for r in rows}) <= MAX_SERIES
    pooled: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    ideal: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        v = r["params"].get(axis)
        pooled[series(r, split)][v] += r["result"]["accuracy"]["per_chip"]
        ideal[v].append(r["result"]["ideal_accuracy"])
    values = sorted({v for m in pooled.values() for v in m}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    pos = dict(zip(values, xs))
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    for i, (method, by_v) in enumerate(sorted(pooled.items())):
        c = COLORS[i % len(COLORS)]
        vs = [v for v in values if v in by_v]
        st = [_stats(by_v[v], metric["higher_is_better"]) for v in vs]
        x = [pos[v] for v in vs]
        mean = [k * s["mean"] for s in st]
        ax.plot(x, mean, "-o", color=c, label=f"{method}: mean")
        ax.fill_between(x, [m - k * s["std"] for m, s in zip(mean, st)],
                        [m + k * s["std"] for m, s in zip(mean, st)], color=c, alpha=0.18)
        ax.plot(x, [k * s["kpp"] for s in st], ":", marker="v", color=c, label=f"{method}: worst 1 %")
    ax.plot([pos[v] for v in values], [k * sum(ideal[v]) / len(ideal[v]) for v in values], "--", color="k",
            label="ideal (digital)")
    if not numeric:
        ax.set_xticks(xs, [_fmt(v) for v in values])
    else:
        if all(v > 0 for v in values) and max(values) / min(values) > 100:
            ax.set_xscale("log")  # e.g. drift time from minutes to months
        if len(values) <= 12:
            ax.set_xticks(values, [_tick(v, axis) for v in values])
            ax.minorticks_off()
    ax.set_xlabel(axis_label(axis))
    ax.set_ylabel(label)
    pooled_note = "" if split or not others else "; pooled over " + ", ".join(_short(a) for a in others)
    what = "accuracy" if metric["name"] == "top1" else metric["name"]
    ax.set_title(f"{what} vs {axis.rsplit('.', 1)[-1]} (band: mean ± 1 std over chips{pooled_note})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return _save(fig, out, "sweep_" + axis.replace(".", "_"))


def histogram_figure(rows: list[dict[str, Any]], axis: str | None, out: Path) -> tuple[Path, Path]:
    """Per-chip accuracy histograms, one panel per method, one colour per value of ``axis``."""
    plt = _plt()
    _, k, label = metric_of(rows)
    methods = sorted({r["method"] for r in rows})
    n = len(methods)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for i, method in enumerate(methods):
        ax = axes[i // cols][i % cols]
        groups: dict[Any, list[float]] = defaultdict(list)
        for r in rows:
            if r["method"] == method:
                groups[r["params"].get(axis) if axis else "all"] += [k * a for a in
                                                                     r["result"]["accuracy"]["per_chip"]]
        for j, (v, acc) in enumerate(sorted(groups.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))):
            ax.hist(acc, bins=min(30, max(8, len(acc) // 5)), histtype="stepfilled", alpha=0.45,
                    color=COLORS[j % len(COLORS)],
                    label=(f"{axis.rsplit('.', 1)[-1]}={_fmt(v)}" if axis else f"{len(acc)} chips"))
        ax.set_title(method, fontsize=9)
        ax.set_xlabel(label.replace(" (", " per chip (", 1) if "(" in label else label + " per chip")
        ax.set_ylabel("number of chips")
        ax.legend(fontsize=7)
    for j in range(n, nrows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    return _save(fig, out, "histograms")


def _table(rows: list[dict[str, Any]], axes: list[str]) -> tuple[list[str], list[list[str]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], repr(sorted(r["params"].items())))].append(r)
    metric, k, _ = metric_of(rows)
    u = " %" if k == 100.0 else ""
    head = ["method"] + [a.rsplit(".", 1)[-1] for a in axes] + [
        "seeds", "chips", f"ideal{u}", f"mean ± std{u}", "worst 1 %", "recovery ratio", "SRAM %", "WV pulses/chip",
        "calib. inputs", "steps", "energy/inf (nJ)", "area (mm²)", "method time (s)"]
    body = []
    for (method, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        per_chip = [a for r in rs for a in r["result"]["accuracy"]["per_chip"]]
        st = _stats(per_chip, metric["higher_is_better"])
        res = [r["result"] for r in rs]
        rr = [x["recovery_ratio"] for x in res if isinstance(x.get("recovery_ratio"), (int, float))]
        rr_ok = [x for x in rr if math.isfinite(x)]
        cost = [x.get("cost") or {} for x in res]
        hw = [x.get("hardware", {}).get("totals", {}) for x in res]

        def avg(vals: list[float]) -> float:
            return sum(vals) / len(vals) if vals else math.nan

        body.append([method] + [_fmt(rs[0]["params"].get(a, "")) for a in axes] + [
            str(len(rs)), str(len(per_chip)), f"{k * avg([x['ideal_accuracy'] for x in res]):.2f}",
            f"{k * st['mean']:.2f} ± {k * st['std']:.2f}", f"{k * st['kpp']:.2f}",
            f"{avg(rr_ok):.2f}" if rr_ok else "–", f"{100 * avg([c.get('sram_fraction', 0.0) for c in cost]):.2f}",
            f"{avg([c.get('write_verify_pulses', 0.0) for c in cost]):.0f}",
            f"{avg([c.get('calibration_samples', 0) for c in cost]):.0f}",
            f"{avg([c.get('finetune_steps', 0) for c in cost]):.0f}",
            f"{avg([h.get('energy_pj', math.nan) for h in hw]) / 1e3:.2f}",
            f"{avg([h.get('area_mm2', math.nan) for h in hw]):.3f}",
            f"{avg([c.get('wall_time_s', 0.0) for c in cost]):.1f}"])
    return head, body


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def write_report(run_dir: str | Path, out: str | Path | None = None, experiment: str | None = None) -> Path:
    """Write ``report.html`` and the figures (PNG+SVG) for the run in ``run_dir``; returns the page's path."""
    run_dir = Path(run_dir)
    with Store(run_dir, readonly=True) as store:
        rows = store.rows(experiment)
    if not rows:
        raise NvcimError(f"the store in {run_dir} holds no finished points" +
                         (f" of experiment '{experiment}'" if experiment else ""))
    out_dir = Path(out) if out else (run_dir if run_dir.is_dir() else run_dir.parent) / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NvcimError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None
    metric, _, label = metric_of(rows)
    what = "accuracy" if metric["name"] == "top1" else str(metric["name"])
    axes = sorted({a for r in rows for a in r["params"]})
    figs = [(sweep_figure(rows, a, out_dir)[0], f"{what} against {a}") for a in axes]
    figs.append((histogram_figure(rows, axes[0] if axes else None, out_dir)[0], f"per-chip {what} histograms"))
    head, body = _table(rows, axes)
    names = sorted({r["experiment"] for r in rows})
    first = rows[0]["result"]
    esc = html.escape
    model = first.get("model", {}).get("name", "?") if isinstance(first.get("model"), dict) else first.get("model")
    hw_rows = first.get("hardware", {}).get("layers", [])
    hw_head = ["layer", "arrays", "cells", "cells/weight", "utilisation", "ADC conv.", "energy (nJ)",
               "latency (µs)", "area (mm²)"]
    hw_body = [[x["name"], str(x["arrays"]), str(x["cells"]), f"{x['cells_per_weight']:.1f}",
                f"{x['utilisation']:.2f}", str(x["adc_conversions"]), f"{x['energy_pj'] / 1e3:.3f}",
                f"{x['latency_ns'] / 1e3:.2f}", f"{x['area_mm2']:.4f}"] for x in hw_rows]

    def table(h: list[str], b: list[list[str]]) -> str:
        return ("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in h) + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b)
                + "</tbody></table>")

    versions = sorted({r["code_version"] for r in rows})
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nvcim report: {esc(', '.join(names))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;
text-align:right}}th{{background:#f3f3f3}}td:first-child{{text-align:left}}figure{{margin:1em 0}}
img{{max-width:100%}}.meta{{color:#666;font-size:13px}}</style></head><body>
<h1>nvcim report: {esc(', '.join(names))}</h1>
<p class="meta">model {esc(str(model))} on {esc(str(first.get('dataset', '?')))}; {len(rows)} grid points;
code {esc(', '.join(versions))}; generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>
<p>Metric: {esc(label)}, {'higher' if metric['higher_is_better'] else 'lower'} is better; the worst 1 % of chips
is the {'lowest' if metric['higher_is_better'] else 'highest'} 1 %.</p>
<h2>{esc(what[:1].upper() + what[1:])}</h2>{''.join(_img(p, alt) for p, alt in figs)}
<h2 id="methods">Method comparison</h2>
<p>Pooled over seeds; recovery ratio = (after − degraded) / (ideal − degraded); costs per chip.</p>
{table(head, body)}
<h2>Hardware cost per inference (first grid point)</h2>
<p>Closed-form estimate; constants and formulas in nvcim.evaluation.hardware and docs/user-guide.md.</p>
{table(hw_head, hw_body)}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
