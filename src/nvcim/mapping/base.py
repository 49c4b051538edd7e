"""The mapping interface: signed weights -> target conductances, and back.

A mapping turns a 2-D weight matrix ``W`` (out x K) into :class:`Mapped` targets so that

    W ~= scale[o] * sum_s slice_weights[s] * (pos[s, o, k] - neg[s, o, k])

where ``neg`` is either the differential partner of each cell (same shape as ``pos``) or a reference
column, one per column tile (shape ``(S, n_col_tiles, K)``), expanded by :meth:`Mapped.expand_neg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..config.schema import ChipConfig, MappingConfig
from ..registry import Registry


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
        return expand_reference(neg, self.pos.shape[1], self.cols_per_tile) if self.reference else neg


def expand_reference(neg: Tensor, out_features: int, cols: int) -> Tensor:
    """One reference column per column tile of ``cols`` columns, ``(..., n_col_tiles, K)``, broadcast to the
    ``out_features`` columns it serves, ``(..., out_features, K)``."""
    tile = torch.arange(out_features, device=neg.device) // cols
    return neg.index_select(-2, tile)


class Mapping:
    """Interface of weight-to-conductance mappings: one class per scheme, which answers every question
    whose answer depends on the scheme (callers never compare scheme names).

    ``reference`` is False when every weight has its own negative cell (a differential partner, of the
    positive cell's shape, in an array column of its own, with its own IR drop) and True when the negative
    side is one reference column per column tile, shared by the tile's columns."""

    name: ClassVar[str] = ""  # set on registration, from config_type
    config_type: ClassVar[type[MappingConfig]]  # its typed config: a scheme with its own fields is one file
    reference: ClassVar[bool] = False

    def __init__(self, config: ChipConfig) -> None:
        self.config = config

    def expand_neg(self, neg: Tensor, out_features: int) -> Tensor:
        """Negative-side cells ``(..., S, O' , K)`` as the ``out_features`` columns see them
        ``(..., S, out_features, K)``: partners as they are, a reference column broadcast over its tile."""
        return expand_reference(neg, out_features, self.config.array.cols) if self.reference else neg

    @staticmethod
    def decode(diff: Tensor, scale: Tensor, slice_weights: Tensor) -> Tensor:
        """Weights (..., O, K) that conductance differences (..., S, O, K) stand for: shift-and-add over the
        slices, times the column scale (what the digital periphery does; :class:`Mapped` holds both)."""
        return (diff * slice_weights.to(diff).view(-1, 1, 1)).sum(-3) * scale.to(diff).view(-1, 1)

    def array_columns(self, out_features: int, slices: int) -> int:
        """Physical array columns that ``out_features`` outputs of ``slices`` bit slices occupy in one row
        tile (cells per logical row)."""
        raise NotImplementedError


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


MAPPINGS: Registry[Mapping] = Registry("mapping.scheme")
