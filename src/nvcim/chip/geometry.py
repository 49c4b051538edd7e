"""Where a layer's weight matrix lies on the arrays: row tiles of ``rows_per_tile`` contiguous rows (each
digitised by its own ADCs) and column tiles of ``array.cols`` columns. A layer kind computes it once from
its shape (:meth:`~nvcim.chip.layers.AnalogLayer.tile_geometry`); the crossbar and the products use it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class TileGeometry:
    """The floorplan of an (O x K) weight matrix: O output columns, K rows, ``row_tiles`` row tiles of
    ``rows_per_tile`` rows each (the last zero-padded), column tiles of ``cols`` columns."""

    out_features: int
    k: int
    row_tiles: int
    rows_per_tile: int
    cols: int

    @property
    def n_col_tiles(self) -> int:
        return math.ceil(self.out_features / self.cols)

    def tile_index(self) -> Tensor:
        """Row tile of each of the K rows, shape (K,)."""
        return torch.arange(self.k) // self.rows_per_tile

    def to_tile_rows(self, g: Tensor) -> Tensor:
        """(..., O, K) -> (..., O, T, R) with zero padding (rows of tile t are contiguous in K)."""
        r, t = self.rows_per_tile, self.row_tiles
        return F.pad(g, (0, t * r - self.k)).reshape(*g.shape[:-1], t, r)

    def from_tile_rows(self, g: Tensor) -> Tensor:
        """Inverse of :meth:`to_tile_rows`."""
        return g.reshape(*g.shape[:-2], -1)[..., : self.k]
