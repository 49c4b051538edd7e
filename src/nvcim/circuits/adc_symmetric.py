"""Symmetric mid-tread ADC: 2^b - 1 codes, -(2^(b-1)-1) ... 2^(b-1)-1, spread evenly over [-full scale,
+full scale], so that both signs saturate at the same magnitude. This is aihwkit's ADC: its ``out_res`` of
1/(2^b - 2) over [-out_bound, out_bound] is a step of out_bound / (2^(b-1) - 1) (rpucuda's
``checkAndSetRes``), and values beyond the bound are clipped to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config.schema import ADCConfig
from .adc import ADCModel, register
from .converters import ste_round


@dataclass(frozen=True)
class SymmetricADCConfig(ADCConfig):
    """``circuit.adc.model = "symmetric"``."""

    model: ClassVar[str] = "symmetric"


@register
class SymmetricADC(ADCModel):
    config_type = SymmetricADCConfig

    def codes(self, bits: int) -> tuple[int, int]:
        top = max(1, 2 ** (bits - 1) - 1)
        return -top, top

    def step(self, full_scale: Tensor, bits: int) -> Tensor:
        return full_scale / max(1, 2 ** (bits - 1) - 1)

    def quantize(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        return torch.clamp(ste_round(y / delta), lo, hi) * delta
