"""No programming variation: cells land exactly on their target."""

from torch import Tensor

from .base import ProgrammingModel, register


@register
class NoVariation(ProgrammingModel):
    name = "none"

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        return target
