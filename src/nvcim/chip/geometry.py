"""Where a layer's weight matrix lies on the arrays: row tiles of ``rows_per_tile`` contiguous rows (each
digitised by its own ADCs) and column tiles of ``array.cols`` columns. A layer kind computes it once from
its shape (:meth:`~nvcim.chip.layers.AnalogLayer.tile_geometry`); the crossbar and the products use it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..circuits import transfer
from ..errors import NvcimError


@dataclass(frozen=True)
class TileGeometry:
    """The floorplan of an (O x K) weight matrix: O output columns, K rows, ``row_tiles`` row tiles of
    ``rows_per_tile`` rows each (the last zero-padded), column tiles of ``cols`` columns."""

    out_features: int
    k: int
    row_tiles: int
    rows_per_tile: int
    cols: int
    array_rows: int = 0  # rows of the physical array (array.rows); 0: rows_per_tile (a full tile)

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

    def checked_routing(self, layer: str, perm: Tensor, n: int) -> Tensor:
        """``perm`` (n, K) as a row routing of n chips (long), or an error unless every chip's row is
        routed to a row of the same tile, each row once."""
        if tuple(perm.shape) != (n, self.k):
            raise NvcimError(f"{layer}: row permutation must have shape ({n}, {self.k})")
        perm = perm.long()
        tiles = self.tile_index().to(perm.device)
        if not ((perm.sort(-1).values == torch.arange(self.k, device=perm.device)).all()
                and bool((tiles[perm] == tiles.view(1, -1)).all())):
            raise NvcimError(f"{layer}: a row permutation must reorder rows within their tiles")
        return perm

    def ir_transfer(self, g: Tensor, r: float, solver: str) -> Tensor:
        """IR-drop transfer matrix (S) of conductances ``g`` (..., O, K), array by array (rows = K, columns =
        outputs), for wire resistance ``r`` (ohm per segment): what each cell's place contributes to its
        column current per volt on its row, the same for every input (nvcim.circuits.irdrop)."""
        rows, t, n_ct = self.rows_per_tile, self.row_tiles, self.n_col_tiles
        # columns past the last output hold no cells and carry no current: a single column tile is solved
        # at its used width (the solve's cost grows with it)
        cols = self.cols if n_ct > 1 else self.out_features
        lead = g.shape[:-2]
        phys = self.to_tile_rows(g)  # (..., O, T, R)
        # a tile's rows sit at the top of its physical array: the column wire runs on past the unused rows
        # (empty cells) to the sense amplifier, and carries the whole column current on that stretch
        extra = max(0, self.array_rows - rows)
        phys = F.pad(phys, (0, 0, 0, 0, 0, n_ct * cols - self.out_features))
        phys = phys.reshape(*lead, n_ct, cols, t, rows).permute(*range(len(lead)), -2, -4, -1, -3)
        tr = transfer(phys, r, solver, extra)  # (..., T, n_ct, R, C)
        tr = tr.permute(*range(len(lead)), -3, -1, -4, -2).reshape(*lead, n_ct * cols, t, rows)
        return self.from_tile_rows(tr[..., : self.out_features, :, :])
