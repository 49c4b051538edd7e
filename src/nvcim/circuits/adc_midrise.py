"""Uniform mid-rise ADC: the code is floor(y / LSB) (a comparator ladder or SAR without a half-LSB input
offset), and the periphery reconstructs the bin centre (code + 1/2) LSB. Zero is not a level, so a small
signal reads as +-LSB/2; the error is uniform in [-LSB/2, LSB/2) as for the mid-tread ADC, but its bias
on signals that sit on a code boundary differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config.schema import ADCConfig
from .adc import ADCModel, register


@dataclass(frozen=True)
class MidriseADCConfig(ADCConfig):
    """``circuit.adc.model = "midrise"``."""

    model: ClassVar[str] = "midrise"


def _ste_floor(v: Tensor) -> Tensor:
    if v.requires_grad and torch.is_grad_enabled():
        return v + (torch.floor(v) - v).detach()
    return torch.floor(v)


@register
class MidriseADC(ADCModel):
    config_type = MidriseADCConfig

    def saturated(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        v = y / delta
        return (v >= hi + 1) | (v < lo)

    def quantize(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        return (torch.clamp(_ste_floor(y / delta), lo, hi) + 0.5) * delta
