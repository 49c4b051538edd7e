"""Weight-to-conductance mappings: differential pair (with bit slicing) and offset/reference column."""

from ..config.schema import ChipConfig
from .base import MAPPINGS, Mapped, Mapping, expand_reference
from .differential import Differential
from .offset import Offset


def get_mapping(config: ChipConfig) -> Mapping:
    """The mapping that ``config.mapping.scheme`` names."""
    return MAPPINGS.create(config.mapping.scheme, config)


__all__ = ["MAPPINGS", "Differential", "Mapped", "Mapping", "Offset", "expand_reference", "get_mapping"]
