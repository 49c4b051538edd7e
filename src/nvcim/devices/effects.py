"""Cell effects applied after programming: stuck-at faults (drift: :mod:`.drift`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config.schema import DeviceConfig

FAULT_NONE, FAULT_SA0, FAULT_SA1 = 0, 1, 2


def fault_codes(u: Tensor, device: DeviceConfig) -> Tensor:
    """Per-cell fault code (0 none, 1 stuck at g_min, 2 stuck at g_max) from uniforms ``u``."""
    sa0, sa1 = device.faults.sa0, device.faults.sa1
    # float selects, one cast at the end: int8 arithmetic is several times slower in compiled CPU loops
    codes = torch.where(u < sa0, float(FAULT_SA0), torch.where(u < sa0 + sa1, float(FAULT_SA1), 0.0))
    return codes.to(torch.int8)


def apply_faults(g: Tensor, codes: Tensor, device: DeviceConfig) -> Tensor:
    """Force stuck cells to their stuck conductance; stuck cells ignore programming and drift."""
    g = g.masked_fill(codes == FAULT_SA0, device.g_min)
    return g.masked_fill(codes == FAULT_SA1, device.g_max)
