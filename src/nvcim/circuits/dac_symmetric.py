"""Symmetric DAC: codes -(2^(b-1)-1) ... 2^(b-1)-1 over [-full scale, +full scale] whatever the sign of the
layer's inputs (a sign bit and b-1 magnitude bits), where the uniform DAC gives non-negative inputs all 2^b
codes. This is aihwkit's DAC: ``inp_res`` 1/(2^b - 2) over [-inp_bound, inp_bound]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..config.schema import DACConfig
from .converters import dac
from .dac import DACModel, register


@dataclass(frozen=True)
class SymmetricDACConfig(DACConfig):
    """``circuit.dac.model = "symmetric"``."""

    model: ClassVar[str] = "symmetric"


@register
class SymmetricDAC(DACModel):
    config_type = SymmetricDACConfig

    def quantize(self, x: Tensor, full_scale: Tensor, bits: int, signed: bool) -> Tensor:
        return dac(x, full_scale, bits, True)
