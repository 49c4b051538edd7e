"""Additive Gaussian programming variation relative to g_max (SWIM's device model).

G = G_t + g_max (sigma z_cell + between_sigma z_chip), clipped to [0, g_max]: a conductance cannot be
negative, nor exceed the largest programmable value.
"""

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..config.fields import spec
from ..config.schema import ProgrammingConfig
from .base import ProgrammingModel, register


@dataclass(frozen=True)
class AdditiveConfig(ProgrammingConfig):
    """``model = "additive"``: G = G_t + g_max sigma z, clipped to [0, g_max]."""

    model: ClassVar[str] = "additive"
    sigma: float = spec(0.0, "within-chip (cell-to-cell) spread: std as a fraction of g_max", unit="-",
                        lo=0.0, hi=10.0)


@register
class Additive(ProgrammingModel):
    config_type = AdditiveConfig
    config: AdditiveConfig

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        g_max = self.device.g_max
        noise = self.config.sigma * z_cell + self.variability.between_sigma * z_chip
        return (target + g_max * noise).clamp(0.0, g_max)
