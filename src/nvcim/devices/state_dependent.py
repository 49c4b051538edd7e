"""State-dependent additive variation: a different spread per level (NeFT).

sigma_l = level_sigma[l] if given, else sigma for the lowest and highest level and sigma x middle_factor
for the states between them (NeFT's s = 1, 2, 4, 6 for RRAM1, FeFET2, RRAM4, FeFET6). The between-chip
component is added on top, relative to g_max, and the result is clipped to [0, g_max].
"""

import torch
from torch import Tensor

from .base import ProgrammingModel, register


@register
class StateDependent(ProgrammingModel):
    name = "state-dependent"

    def level_sigmas(self) -> Tensor:
        p, n = self.device.programming, self.device.n_levels
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
