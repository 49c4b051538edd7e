"""Quantiser arithmetic shared by the converter models: straight-through rounding, the uniform DAC."""

from __future__ import annotations

import torch
from torch import Tensor


def ste_round(v: Tensor) -> Tensor:
    """round(v); when gradients flow, a straight-through estimator (identity gradient)."""
    if v.requires_grad and torch.is_grad_enabled():
        return v + (torch.round(v) - v).detach()
    return torch.round(v)


def dac(x: Tensor, full_scale: Tensor, bits: int, signed: bool) -> Tensor:
    """Quantise inputs to ``bits``: signed codes in [-(2^(b-1)-1), 2^(b-1)-1] x full_scale/(2^(b-1)-1), or
    unsigned codes in [0, 2^b-1] x full_scale/(2^b-1). Values beyond full scale are clipped."""
    if signed:
        steps = 2 ** (bits - 1) - 1 if bits > 1 else 1
        lo = -steps
    else:
        steps, lo = 2**bits - 1, 0
    delta = full_scale / steps
    return torch.clamp(ste_round(x / delta), lo, steps) * delta
