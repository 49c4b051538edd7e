"""Analog ``nn.Linear``, and :class:`LinearProduct`, the matrix product on the arrays that GPT-2's transposed
linear layer shares."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from ..errors import ShapeError
from .context import Prepared, col_padded, row_padded
from .layers import AnalogLayer
from .registry import register

if TYPE_CHECKING:  # the mixin is read as a layer, whose attributes it uses
    _Layer = AnalogLayer
else:
    _Layer = object


class LinearProduct(_Layer):
    """The product of a linear layer on the arrays: K = in_features rows, split evenly over
    ceil(K / ``array.rows``) tiles. A mixin that the linear layers put before :class:`AnalogLayer`, so that
    every layer kind derives from :class:`AnalogLayer` directly."""

    channel_dim = -1

    def __init__(self, digital: nn.Linear, config: ChipConfig, name: str) -> None:
        super().__init__(digital, config, name)  # type: ignore[arg-type]  # AnalogLayer's, next in the MRO
        self.in_features = digital.in_features

    @property
    def row_tiles(self) -> int:
        return math.ceil(self.k / self.config.array.rows)

    def rows_per_tile(self) -> int:
        return math.ceil(self.k / self.row_tiles)

    def check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, ..., "
                             f"{self.in_features}), got {tuple(x.shape)}")

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """As :meth:`AnalogLayer.forward`, on inputs (batch, ..., in_features); an input whose batch is not
        its first dimension (a sequence-first (L, B, E) inside a transformer) is recognised when exactly one
        other dimension has the batch's size."""
        ctx = self.ctx
        n = ctx.rows() if ctx is not None else None
        if n is not None and ctx is not None and x.dim() > 2:
            if x.shape[0] not in (n, ctx.batch):
                dims = [d for d in range(1, x.dim() - 1) if x.shape[d] == n]
                if len(dims) == 1:
                    return super().forward(x.movedim(dims[0], 0)).movedim(0, dims[0])
        return super().forward(x)

    def pack(self, w: Tensor, shared: bool) -> Tensor:
        t, r = self.row_tiles, self.rows_per_tile()
        c, s, o = w.shape[:3]
        wt = self.geometry.to_tile_rows(w)  # (c, S, O, T, R)
        if shared:
            return col_padded(wt.permute(3, 4, 0, 1, 2).reshape(t, r, c * s * o))
        return col_padded(wt.permute(0, 3, 4, 1, 2).reshape(c * t, r, s * o))

    def prepare(self, x: Tensor, shared: bool, c: int) -> Prepared:
        t, r = self.row_tiles, self.rows_per_tile()
        n = x.shape[0] // (1 if shared else c)
        xt = F.pad(x.reshape(x.shape[0], -1, self.k), (0, t * r - self.k))
        n_l = xt.shape[1]
        if shared:
            xt = xt.reshape(n * n_l, t, r).transpose(0, 1)  # (T, B*L, R)
        else:
            xt = xt.reshape(n, c, n_l, t, r).permute(1, 3, 0, 2, 4).reshape(c * t, n * n_l, r)
        return Prepared(row_padded(xt), n, n_l)

    def mvm(self, p: Prepared, packed: Tensor, shared: bool, c: int, s: int = 0) -> Tensor:
        t, s, o = self.row_tiles, s or self.n_slices, self.out_features
        cols = (c if shared else 1) * s * o
        y = torch.bmm(p.x, packed)[:, : p.n * p.n_l, :cols]  # the padding rows and columns off
        if shared:
            return y.view(t, p.n, p.n_l, c, s, o).permute(1, 2, 3, 0, 4, 5)
        return y.view(c, t, p.n, p.n_l, s, o).permute(2, 3, 0, 1, 4, 5)

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        n, _, c, o = y.shape
        return y.transpose(1, 2).reshape(n * c, *x.shape[1:-1], o)


@register(nn.Linear)
class AnalogLinear(LinearProduct, AnalogLayer):
    """Analog ``nn.Linear``: the product as it is."""
