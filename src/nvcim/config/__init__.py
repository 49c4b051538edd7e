"""Typed, validated chip configuration: schema, file I/O, overrides and presets."""

from .fields import describe
from .io import dumps, load_config, override, parse_sets, save_config
from .presets import preset, preset_names
from .schema import (
    ArrayConfig,
    ChipConfig,
    CircuitConfig,
    CostConfig,
    DeviceConfig,
    DriftConfig,
    FaultConfig,
    MappingConfig,
    ProgrammingConfig,
    VariabilityConfig,
)

__all__ = [
    "ArrayConfig", "ChipConfig", "CircuitConfig", "CostConfig", "DeviceConfig", "DriftConfig", "FaultConfig",
    "MappingConfig", "ProgrammingConfig", "VariabilityConfig", "describe", "dumps", "load_config",
    "override", "parse_sets", "preset", "preset_names", "save_config",
]
