"""Lognormal programming variation: G = G_t exp(theta_chip + theta_cell) (Charan 2020, after Long 2019).

theta_cell ~ N(0, sigma^2) per cell, theta_chip ~ N(0, between_sigma^2) shared by a chip or an array. The
mean is biased: E[G] = G_t exp((sigma^2 + between_sigma^2)/2); ``correct_bias`` divides that factor out.

A cell cannot conduct without bound: G is capped at ``G_CEILING`` x g_max (and theta at 80, so that float32
never overflows). The cap only matters for sigma of order 1 or more (exp(0.3 z) > 10 needs z > 7.7).
"""

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .. import arith
from ..config.fields import spec
from ..config.schema import ProgrammingConfig
from .base import ProgrammingModel, register

G_CEILING = 10.0


@dataclass(frozen=True)
class LognormalConfig(ProgrammingConfig):
    """``model = "lognormal"``: G = G_t exp(theta), theta ~ N(0, sigma^2) per cell."""

    model: ClassVar[str] = "lognormal"
    sigma: float = spec(0.0, "within-chip (cell-to-cell) spread: std of ln G", unit="-", lo=0.0, hi=10.0)
    correct_bias: bool = spec(False, "divide by exp(sigma^2/2) so that E[G] = G_target")


@register
class Lognormal(ProgrammingModel):
    config_type = LognormalConfig
    config: LognormalConfig
    between_chip_gain = True

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        s_w, s_b = self.config.sigma, self.variability.between_sigma
        theta = s_w * z_cell + s_b * z_chip
        if self.config.correct_bias:
            theta = theta - (s_w**2 + s_b**2) / 2
        g = target * arith.exp(theta.clamp(max=80.0))  # plain arithmetic: same bits compiled
        return g.clamp(max=G_CEILING * self.device.g_max)
