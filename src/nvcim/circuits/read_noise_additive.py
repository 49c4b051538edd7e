"""Read noise independent of the conductance, std = sigma g_max per cell: a noise floor referred to the
cell (thermal and shot noise of the read path, sense-amplifier noise), which dominates for cells near
g_min where proportional noise vanishes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .read_noise import ReadNoiseModel, register

if TYPE_CHECKING:
    from ..config.schema import DeviceConfig


@register
class AdditiveReadNoise(ReadNoiseModel):
    name = "additive"

    def pair_variance(self, pos: Tensor, neg: Tensor, device: DeviceConfig, pos0: Tensor | None = None,
                      neg0: Tensor | None = None, t: float | None = None) -> Tensor:
        s = device.read_noise * device.g_max
        return torch.full_like(pos, 2 * s * s)

    def sample(self, g: Tensor, z: Tensor, device: DeviceConfig, g0: Tensor | None = None,
               t: float | None = None) -> Tensor:
        return g + (device.read_noise * device.g_max) * z
