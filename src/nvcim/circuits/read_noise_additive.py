"""Read noise independent of the conductance, std = sigma g_max per cell: a noise floor referred to the
cell (thermal and shot noise of the read path, sense-amplifier noise), which dominates for cells near
g_min where proportional noise vanishes."""

from __future__ import annotations

import torch
from torch import Tensor

from .read_noise import ReadNoiseModel, register


@register
class AdditiveReadNoise(ReadNoiseModel):
    name = "additive"

    def pair_variance(self, pos: Tensor, neg: Tensor, sigma: float, g_max: float) -> Tensor:
        s = sigma * g_max
        return torch.full_like(pos, 2 * s * s)

    def sample(self, g: Tensor, z: Tensor, sigma: float, g_max: float) -> Tensor:
        return g + (sigma * g_max) * z
