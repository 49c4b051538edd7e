"""Differential-pair mapping, w ~ G+ - G-, with optional bit slicing.

One cell per weight: a positive weight sets G+ = g_min + |w|/m (g_max - g_min) and leaves G- at g_min
(mirrored for negative weights), with m = max|W| or the clip (``mapping.clip_sigma``); rounding to the
device's levels happens when the chip is programmed.

Bit slicing (``mapping.weight_bits = N``): the weight is first quantised to the signed integer
q = round(w/m (2^(N-1)-1)), and |q| is written in base 2^b (b = bits_per_cell) over
S = ceil((N-1)/b) cell pairs; slice s carries digit d_s on the side of the weight's sign and is
recombined by shift-and-add with weight 2^(b s).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config.schema import DifferentialConfig
from .base import MAPPINGS, Mapped, Mapping


@MAPPINGS.register
class Differential(Mapping):
    config_type = DifferentialConfig  # defined with the config tree: it is the default

    def array_columns(self, out_features: int, slices: int) -> int:
        return 2 * slices * out_features  # a G+ and a G- column per output and slice

    def map(self, w: Tensor) -> Mapped:
        d, bits = self.config.device, self.config.mapping.slice_bits
        span = d.g_max - d.g_min
        u, m = self.normalized(w)
        out = w.shape[0]
        if not bits:
            mag = u.abs() * span
            pos = d.g_min + torch.where(w > 0, mag, torch.zeros_like(mag))
            neg = d.g_min + torch.where(w < 0, mag, torch.zeros_like(mag))
            scale = (m / span).view(-1).expand(out).clone()
            return Mapped(pos[None], neg[None], scale, torch.ones(1), self.config.array.cols)
        b, n = d.bits_per_cell, bits
        qmax = 2 ** (n - 1) - 1
        n_slices = math.ceil((n - 1) / b)
        q = torch.round(u * qmax)
        mag = q.abs().to(torch.int64)
        base = 2**b
        digits = torch.stack([(mag // base**s) % base for s in range(n_slices)]).to(w.dtype)
        g = d.g_min + digits / (base - 1) * span
        pos = torch.where(q > 0, g, torch.full_like(g, d.g_min))
        neg = torch.where(q < 0, g, torch.full_like(g, d.g_min))
        scale = (m / qmax * (base - 1) / span).view(-1).expand(out).clone()
        sw = torch.tensor([float(base**s) for s in range(n_slices)])
        return Mapped(pos, neg, scale, sw, self.config.array.cols)
