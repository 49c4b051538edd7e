"""``nvcim results``: flatten a store's rows into a table and export it (CSV, JSON or Parquet)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..errors import NvcimError
from .store import Store


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One store row as flat columns: point identity, swept parameters, accuracy, cost, hardware totals."""
    r = row["result"]
    acc = r["accuracy"]
    out: dict[str, Any] = {"key": row["key"], "experiment": row["experiment"], "method": row["method"],
                           "seed": row["seed"]}
    out.update({f"param.{k}": v for k, v in row["params"].items()})
    out.update({"chips": r.get("chips"), "images": r.get("images"), "ideal_accuracy": r["ideal_accuracy"],
                "accuracy_mean": acc["mean"], "accuracy_std": acc["std"], "accuracy_kpp": acc["kpp"],
                "accuracy_min": acc["min"], "recovery_ratio": r.get("recovery_ratio")})
    degraded = r.get("degraded_accuracy")
    out["degraded_mean"] = degraded["mean"] if isinstance(degraded, dict) else None
    for k, v in (r.get("cost") or {}).items():
        if k != "notes":
            out[f"cost.{k}"] = v
    for k, v in r.get("hardware", {}).get("totals", {}).items():
        out[f"hw.{k}"] = v
    out.update({"code_version": row["code_version"], "host": row["host"], "finished": row["finished"],
                "wall_time_s": row["wall_time_s"]})
    return out


def table(run: str | Path, experiment: str | None = None) -> list[dict[str, Any]]:
    with Store(run, readonly=True) as store:
        return [flatten(r) for r in store.rows(experiment)]


def export(run: str | Path, path: str | Path, fmt: str | None = None, experiment: str | None = None,
           per_chip: bool = False) -> int:
    """Write the store's points to ``path``; the format follows ``fmt`` or the suffix. Returns the row count.

    ``per_chip`` adds the list of per-chip accuracies (JSON/Parquet only)."""
    p = Path(path)
    fmt = (fmt or p.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "json", "parquet"):
        raise NvcimError(f"export format '{fmt}' is invalid: allowed csv, json or parquet")
    with Store(run, readonly=True) as store:
        raw = store.rows(experiment)
    rows = [flatten(r) for r in raw]
    if per_chip and fmt != "csv":
        for row, r in zip(rows, raw):
            row["per_chip"] = r["result"]["accuracy"]["per_chip"]
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            with p.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(rows)
        elif fmt == "json":
            clean = [{k: _nan_safe(v) for k, v in row.items()} for row in rows]
            p.write_text(json.dumps(clean, indent=1, default=str) + "\n", encoding="utf-8")
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise NvcimError("Parquet export needs pyarrow: pip install 'nvcim[parquet]'") from None
            data = {c: [row.get(c) for row in rows] for c in cols}
            pq.write_table(pa.table(data), p)
    except OSError as e:
        raise NvcimError(f"cannot write {p}: {e.strerror or e}") from None
    return len(rows)


def _nan_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
