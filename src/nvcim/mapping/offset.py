"""Offset mapping with a reference column: w ~ G - G_ref.

G_ref sits at the device level nearest the middle of [g_min, g_max]; a weight w becomes
G = G_ref + w/m h with h = min(G_ref - g_min, g_max - G_ref). Each column tile has one reference column of
cells programmed to G_ref; its current is subtracted from every column of the tile, so its programming
error shifts all of that tile's outputs together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config.schema import MappingConfig
from ..devices.base import get_model, round_to_levels
from .base import MAPPINGS, Mapped, Mapping


@dataclass(frozen=True)
class OffsetConfig(MappingConfig):
    """``scheme = "offset"``: w ~ G - G_ref, one reference column per column tile (no bit slicing)."""

    scheme: ClassVar[str] = "offset"


@MAPPINGS.register
class Offset(Mapping):
    config_type = OffsetConfig
    reference = True

    def array_columns(self, out_features: int, slices: int) -> int:
        return out_features + math.ceil(out_features / self.config.array.cols)  # plus a reference per tile

    def g_ref(self) -> float:
        d = self.config.device
        levels = get_model(d, self.config.variability).levels()
        mid = torch.tensor([(d.g_min + d.g_max) / 2])
        return float(round_to_levels(mid, levels)[0][0])

    def map(self, w: Tensor) -> Mapped:
        d = self.config.device
        ref = self.g_ref()
        half = min(ref - d.g_min, d.g_max - ref)
        u, m = self.normalized(w)
        pos = ref + u * half
        n_ct = math.ceil(w.shape[0] / self.config.array.cols)
        neg = torch.full((1, n_ct, w.shape[1]), ref, dtype=w.dtype)
        scale = (m / half).view(-1).expand(w.shape[0]).clone()
        return Mapped(pos[None], neg, scale, torch.ones(1), self.config.array.cols, reference=True)
