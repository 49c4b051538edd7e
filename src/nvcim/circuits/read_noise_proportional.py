"""Read noise proportional to the conductance, std = sigma G: the 1/f and random-telegraph noise of
filamentary RRAM and PCM, whose relative spread is roughly constant over the range (field guide, read
noise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .read_noise import ReadNoiseModel, register

if TYPE_CHECKING:
    from ..config.schema import DeviceConfig


@register
class ProportionalReadNoise(ReadNoiseModel):
    name = "proportional"

    def pair_variance(self, pos: Tensor, neg: Tensor, device: DeviceConfig, pos0: Tensor | None = None,
                      neg0: Tensor | None = None, t: float | None = None) -> Tensor:
        sigma = device.read_noise
        return (sigma * sigma) * (pos * pos + neg * neg)

    def sample(self, g: Tensor, z: Tensor, device: DeviceConfig, g0: Tensor | None = None,
               t: float | None = None) -> Tensor:
        return g + device.read_noise * g * z
