"""No programming variation: cells land exactly on their target."""

from torch import Tensor

from ..config.schema import NoVariationConfig
from .base import ProgrammingModel, register


@register
class NoVariation(ProgrammingModel):
    config_type = NoVariationConfig  # defined with the config tree: it is the default

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        return target
