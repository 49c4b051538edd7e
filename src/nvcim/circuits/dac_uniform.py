"""Uniform DAC: signed inputs on codes [-(2^(b-1)-1), 2^(b-1)-1] (symmetric, so that 0 is exact and the
two signs match), unsigned inputs on [0, 2^b-1]; beyond full scale clipped."""

from __future__ import annotations

from torch import Tensor

from ..config.schema import UniformDACConfig
from .converters import dac
from .dac import DACModel, register


@register
class UniformDAC(DACModel):
    config_type = UniformDACConfig  # defined with the config tree: it is the default

    def quantize(self, x: Tensor, full_scale: Tensor, bits: int, signed: bool) -> Tensor:
        return dac(x, full_scale, bits, signed)
