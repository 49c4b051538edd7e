"""Additive Gaussian programming variation relative to g_max (SWIM's device model).

G = G_t + g_max (sigma z_cell + between_sigma z_chip), clipped to [0, g_max]: a conductance cannot be
negative, nor exceed the largest programmable value.
"""

from torch import Tensor

from .base import ProgrammingModel, register


@register
class Additive(ProgrammingModel):
    name = "additive"

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        g_max = self.device.g_max
        noise = self.device.programming.sigma * z_cell + self.variability.between_sigma * z_chip
        return (target + g_max * noise).clamp(0.0, g_max)
