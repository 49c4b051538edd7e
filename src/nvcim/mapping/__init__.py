"""Weight-to-conductance mappings: differential pair (with bit slicing) and offset/reference column."""

from ..config.schema import ChipConfig
from .base import Mapped, Mapping
from .differential import Differential
from .offset import Offset

_SCHEMES: dict[str, type[Mapping]] = {"differential": Differential, "offset": Offset}


def get_mapping(config: ChipConfig) -> Mapping:
    """The mapping that ``config.mapping.scheme`` names."""
    return _SCHEMES[config.mapping.scheme](config)


__all__ = ["Differential", "Mapped", "Mapping", "Offset", "get_mapping"]
