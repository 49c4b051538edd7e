"""Uniform mid-tread ADC: round to the nearest code, clip to the code range (the common textbook ADC;
zero is a code, so an idle column reads exactly 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config.schema import UniformADCConfig
from .adc import ADCModel, register
from .converters import ste_round


@register
class UniformADC(ADCModel):
    config_type = UniformADCConfig  # defined with the config tree: it is the default

    def quantize(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        return torch.clamp(ste_round(y / delta), lo, hi) * delta
