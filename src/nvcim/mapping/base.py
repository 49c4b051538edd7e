"""The mapping interface: signed weights -> target conductances, and back.

A mapping turns a 2-D weight matrix ``W`` (out x K) into :class:`Mapped` targets so that

    W ~= scale[o] * sum_s slice_weights[s] * (pos[s, o, k] - neg[s, o, k])

where ``neg`` is either the differential partner of each cell (same shape as ``pos``) or a reference
column, one per column tile (shape ``(S, n_col_tiles, K)``), expanded by :meth:`Mapped.expand_neg`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config.schema import ChipConfig


@dataclass
class Mapped:
    """Target conductances (S) of one layer and the factors that turn currents back into weights."""

    pos: Tensor  # (S, out, K)
    neg: Tensor  # (S, out, K) differential partners, or (S, n_col_tiles, K) reference columns
    scale: Tensor  # (out,) weight units per (input unit x siemens)
    slice_weights: Tensor  # (S,) shift-and-add weights, 2^(bits_per_cell * s)
    cols_per_tile: int
    reference: bool = False  # True: ``neg`` holds one reference column per column tile

    def expand_neg(self, neg: Tensor) -> Tensor:
        """Reference-column cells broadcast to every output column of their tile (``(..., S, out, K)``)."""
        if not self.reference:
            return neg
        out = self.pos.shape[1]
        tile = torch.arange(out, device=neg.device) // self.cols_per_tile
        return neg.index_select(-2, tile)


class Mapping:
    """Interface of weight-to-conductance mappings."""

    def __init__(self, config: ChipConfig) -> None:
        self.config = config

    def weight_max(self, w: Tensor) -> Tensor:
        """The weight that the full conductance range stands for, per layer (shape (1, 1)) or per output
        column (shape (out, 1)): max|W|, or ``mapping.clip_sigma`` x RMS(W) where that is smaller; never 0."""
        mcfg = self.config.mapping
        column = mcfg.scaling == "column"
        m = w.abs().amax(dim=1, keepdim=True) if column else w.abs().max().view(1, 1)
        if mcfg.clip_sigma:
            rms = w.square().mean(dim=1, keepdim=True).sqrt() if column else w.square().mean().sqrt().view(1, 1)
            m = torch.minimum(m, mcfg.clip_sigma * rms)
        return torch.where(m > 0, m, torch.ones_like(m))

    def normalized(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(w / m clipped to [-1, 1], m) with m = :meth:`weight_max`: the clipped weights lose what lies
        beyond the full scale."""
        m = self.weight_max(w)
        return (w / m).clamp(-1.0, 1.0), m

    def map(self, w: Tensor) -> Mapped:
        raise NotImplementedError
