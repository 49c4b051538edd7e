"""State-dependent additive variation: a different spread per level (NeFT).

sigma_l = level_sigma[l] if given, else sigma for the lowest and highest level and sigma x middle_factor
for the states between them (NeFT's s = 1, 2, 4, 6 for RRAM1, FeFET2, RRAM4, FeFET6). The between-chip
component is added on top, relative to g_max, and the result is clipped to [0, g_max].
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config.fields import spec
from ..config.schema import DeviceConfig, ProgrammingConfig
from ..errors import ConfigError
from .base import ProgrammingModel, register


@dataclass(frozen=True)
class StateDependentConfig(ProgrammingConfig):
    """``model = "state-dependent"``: an additive spread per level (NeFT)."""

    model: ClassVar[str] = "state-dependent"
    sigma: float = spec(0.0, "spread of the lowest and highest level: std as a fraction of g_max", unit="-",
                        lo=0.0, hi=10.0)
    level_sigma: tuple[float, ...] = spec((), "per-level std as a fraction of g_max, lowest level first "
                                          "(empty = sigma x middle_factor rule)", unit="-", lo=0.0, hi=10.0)
    middle_factor: float = spec(1.0, "sigma multiplier of the middle (non-extreme) levels, NeFT's s", unit="-",
                                lo=1.0, hi=100.0)

    def check_device(self, device: DeviceConfig) -> None:
        if device.n_levels == 0:
            raise ConfigError("bits_per_cell", 0, "[1, 8] for the state-dependent model")
        if self.level_sigma and len(self.level_sigma) != device.n_levels:
            raise ConfigError("programming.level_sigma", list(self.level_sigma),
                              f"one value per level ({device.n_levels} levels)")

    @property
    def varies(self) -> bool:
        return self.sigma > 0 or any(s > 0 for s in self.level_sigma)


@register
class StateDependent(ProgrammingModel):
    config_type = StateDependentConfig
    config: StateDependentConfig

    def level_sigmas(self) -> Tensor:
        p, n = self.config, self.device.n_levels
        if p.level_sigma:
            return torch.tensor(p.level_sigma, dtype=torch.float32)
        sig = torch.full((n,), p.sigma * p.middle_factor)
        sig[0] = sig[-1] = p.sigma
        return sig

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        assert level is not None, "state-dependent variation needs discrete levels"
        sig = self.level_sigmas().to(target.device)[level]
        g_max = self.device.g_max
        noise = sig * z_cell + self.variability.between_sigma * z_chip
        return (target + g_max * noise).clamp(0.0, g_max)
