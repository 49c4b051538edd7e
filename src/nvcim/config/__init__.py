"""Typed, validated chip configuration: schema, file I/O, overrides and presets."""

from .fields import describe
from .io import dumps, load_config, override, parse_sets, save_config
from .presets import preset, preset_names
from .schema import (
    ADCConfig,
    ArrayConfig,
    ChipConfig,
    CircuitConfig,
    CostConfig,
    DACConfig,
    DeviceConfig,
    DifferentialConfig,
    DriftConfig,
    FaultConfig,
    MappingConfig,
    NoVariationConfig,
    PowerLawDriftConfig,
    ProgrammingConfig,
    UniformADCConfig,
    UniformDACConfig,
    VariabilityConfig,
)
from .variants import Variant

__all__ = [
    "ADCConfig", "ArrayConfig", "ChipConfig", "CircuitConfig", "CostConfig", "DACConfig", "DeviceConfig",
    "DifferentialConfig", "DriftConfig", "FaultConfig", "MappingConfig", "NoVariationConfig",
    "PowerLawDriftConfig", "ProgrammingConfig", "UniformADCConfig", "UniformDACConfig", "VariabilityConfig",
    "Variant", "describe", "dumps", "load_config",
    "override", "parse_sets", "preset", "preset_names", "save_config",
]
