"""Read noise proportional to the conductance, std = sigma G: the 1/f and random-telegraph noise of
filamentary RRAM and PCM, whose relative spread is roughly constant over the range (field guide, read
noise)."""

from __future__ import annotations

from torch import Tensor

from .read_noise import ReadNoiseModel, register


@register
class ProportionalReadNoise(ReadNoiseModel):
    name = "proportional"

    def pair_variance(self, pos: Tensor, neg: Tensor, sigma: float, g_max: float) -> Tensor:
        return (sigma * sigma) * (pos * pos + neg * neg)

    def sample(self, g: Tensor, z: Tensor, sigma: float, g_max: float) -> Tensor:
        return g + sigma * g * z
