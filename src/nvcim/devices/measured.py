"""Measured per-level statistics: programming level l gives G ~ N(mean_l, std_l^2), clipped at 0.

The CSV has a header ``target,mean,std`` (siemens) and one row per level, lowest first; the targets are the
device's levels. The between-chip component shifts every cell by between_sigma x g_max.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ..config.fields import spec
from ..config.schema import DeviceConfig, ProgrammingConfig, VariabilityConfig
from ..errors import ConfigError, NvcimError
from .base import ProgrammingModel, register


@dataclass(frozen=True)
class MeasuredConfig(ProgrammingConfig):
    """``model = "measured"``: per-level mean and std read from a CSV table."""

    model: ClassVar[str] = "measured"
    table: str = spec("", "CSV file with columns target,mean,std (S), one row per level")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.table:
            raise ConfigError("table", self.table, "a CSV path when model = 'measured'")

    @property
    def varies(self) -> bool:
        return True


@lru_cache(maxsize=32)
def load_table(path: str) -> tuple[tuple[float, float, float], ...]:
    """Read and check a measured level table; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise NvcimError(f"device.programming.table: file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NvcimError(f"{p}: not a UTF-8 text CSV file (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise NvcimError(f"{p}: cannot read the measured table: {e.strerror or e}") from None
    try:
        return _parse(p, text)
    except csv.Error as e:
        raise NvcimError(f"{p}: malformed CSV: {e}") from None


def _parse(p: Path, text: str) -> tuple[tuple[float, float, float], ...]:
    rows: list[tuple[float, float, float]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if header[:3] != ["target", "mean", "std"]:
        raise NvcimError(f"{p}:1: expected the header 'target,mean,std', got {','.join(header)!r}")
    for line, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            t, m, s = (float(v) for v in row[:3])
        except ValueError:
            raise NvcimError(f"{p}:{line}: expected three numbers target,mean,std, got {row!r}") from None
        if len(row) < 3 or min(t, m) < 0 or s < 0 or not all(map(_finite, (t, m, s))):
            raise NvcimError(f"{p}:{line}: target, mean and std must be finite and >= 0, got {row!r}")
        rows.append((t, m, s))
    if len(rows) < 2:
        raise NvcimError(f"{p}: a measured table needs at least 2 levels, found {len(rows)}")
    if any(b[0] <= a[0] for a, b in zip(rows, rows[1:])):
        raise NvcimError(f"{p}: the target column must be strictly ascending")
    return tuple(rows)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


@register
class Measured(ProgrammingModel):
    config_type = MeasuredConfig
    config: MeasuredConfig

    def __init__(self, device: DeviceConfig, variability: VariabilityConfig) -> None:
        super().__init__(device, variability)
        # read once, here: sample runs inside the compiled programming loop, which must not read files
        self._tab = torch.tensor(load_table(self.config.table), dtype=torch.float32)

    def _table(self) -> Tensor:
        return self._tab

    def levels(self) -> Tensor:
        return self._table()[:, 0].contiguous()

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        assert level is not None
        tab = self._table().to(target.device)
        g = tab[level, 1] + tab[level, 2] * z_cell
        g = g + self.device.g_max * self.variability.between_sigma * z_chip
        return g.clamp(0.0, 10.0 * self.device.g_max)  # the same physical ceiling as the lognormal model
