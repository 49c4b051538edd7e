"""Weight-to-conductance mappings: differential pair (with bit slicing) and offset/reference column."""

from ..config.schema import ChipConfig
from .base import MAPPINGS, Mapped, Mapping, expand_reference
from .differential import Differential
from .offset import Offset, OffsetConfig


def get_mapping(config: ChipConfig) -> Mapping:
    """The mapping for the type of ``config.mapping``."""
    return MAPPINGS.for_config(config.mapping)(config)


__all__ = ["MAPPINGS", "Differential", "Mapped", "Mapping", "Offset", "OffsetConfig", "expand_reference",
           "get_mapping"]
