"""Analog ``nn.Conv2d``, and :class:`Conv2dProduct`, the unrolled 2-D convolution on the arrays that the
Conv1d and ConvTranspose2d layers share."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from ..errors import ConversionError, ShapeError
from .context import Prepared, contiguous_rows
from .layers import AnalogLayer
from .registry import register

if TYPE_CHECKING:  # the mixin is read as a layer, whose attributes it uses
    _Layer = AnalogLayer
else:
    _Layer = object


class Conv2dProduct(_Layer):
    """The product of a 2-D convolution on the arrays, unrolled as K = (C_in / groups) kh kw rows: a mixin
    that the convolution layers put before :class:`AnalogLayer` (``class AnalogConv1d(Conv2dProduct,
    AnalogLayer)``), so that every layer kind derives from :class:`AnalogLayer` directly.

    Tiles are kernel-aligned: a tile holds the whole kernels of at most floor(rows / (kh kw)) input
    channels, so a kernel never straddles two arrays, and each tile is one group of a grouped convolution.
    Channels are spread evenly over the tiles (6 channels of 5x5 on 128-row arrays: 3 + 3, not 5 + 1).
    A grouped (or depthwise) convolution puts each group on arrays of its own: group j's output columns
    see only the rows of group j's input channels. ``padding='same'`` and every ``padding_mode`` pad the
    input digitally before the DAC, as the periphery would (zero padding of a plain convolution stays
    inside the product, which is the same).
    """

    def __init__(self, digital: nn.Conv2d, config: ChipConfig, name: str) -> None:
        kk = digital.kernel_size[0] * digital.kernel_size[1]
        if kk > config.array.rows:
            raise ConversionError(f"{name}: one {digital.kernel_size} kernel needs {kk} rows but array.rows = "
                                  f"{config.array.rows}; use larger tiles")
        self.in_channels, self.kernel_size = digital.in_channels, digital.kernel_size
        self.groups = digital.groups
        self.cg = digital.in_channels // digital.groups  # input channels per group
        self.stride, self.dilation = digital.stride, digital.dilation
        self.pre_pad: tuple[int, ...] | None = None
        self.pad_mode = "constant" if digital.padding_mode == "zeros" else digital.padding_mode
        if isinstance(digital.padding, str) or digital.padding_mode != "zeros":
            # (left, right, top, bottom), as nn.Conv2d pads for 'same' or a padding_mode of its own
            self.pre_pad = tuple(digital._reversed_padding_repeated_twice)
            self.padding: tuple[int, ...] = (0, 0)
        else:
            self.padding = tuple(digital.padding)
        super().__init__(digital, config, name)  # type: ignore[arg-type]  # AnalogLayer's, next in the MRO

    def pad_input(self, x: Tensor) -> Tensor:
        """The input as the array sees it: padded first where the convolution cannot pad with zeros itself."""
        if self.pre_pad is None or not any(self.pre_pad):
            return x
        return F.pad(x, self.pre_pad, mode=self.pad_mode)

    def unfold_input(self, v: Tensor) -> Tensor:
        """Inputs ``v`` (B, C_in, H, W) as the rows of the matrix product, (B L groups, K)."""
        cols = F.unfold(self.pad_input(v), self.kernel_size, self.dilation, self.padding,  # type: ignore[arg-type]
                        self.stride)  # (B, C_in kh kw, L), group-major rows
        b, _, n_l = cols.shape
        return cols.view(b, self.groups, self.k, n_l).permute(0, 3, 1, 2).reshape(-1, self.k)

    @property
    def ch_per_tile(self) -> int:
        """Input channels per tile: as few tiles as whole kernels allow, the channels spread evenly."""
        fit = min(self.config.array.rows // (self.kernel_size[0] * self.kernel_size[1]), self.cg)
        return math.ceil(self.cg / math.ceil(self.cg / fit))

    @property
    def row_tiles(self) -> int:
        """Row tiles of each group."""
        return math.ceil(self.cg / self.ch_per_tile)

    def rows_per_tile(self) -> int:
        return self.ch_per_tile * self.kernel_size[0] * self.kernel_size[1]

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, {self.in_channels}, H, W),"
                             f" got {tuple(x.shape)}")

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(self.pad_input(x), w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def pack(self, w: Tensor, shared: bool) -> Tensor:
        t, ct, g = self.row_tiles, self.ch_per_tile, self.groups
        kh, kw = self.kernel_size
        c, s, o = w.shape[:3]
        og = o // g
        pad_ch = t * ct - self.cg
        wk = F.pad(w.reshape(c, s, g, og, self.cg, kh * kw), (0, 0, 0, pad_ch))
        wk = wk.reshape(c, s, g, og, t, ct, kh, kw)
        # filters in the order of the convolution's groups: (tile, chip) shared, (chip, tile) otherwise, with
        # the model's groups outermost (shared) or inside the chip (per chip), as the inputs are laid out
        order = (2, 4, 0, 1, 3, 5, 6, 7) if shared else (0, 2, 4, 1, 3, 5, 6, 7)
        wg = wk.permute(*order).reshape(c * g * t * s * og, ct, kh, kw)
        return wg.contiguous(memory_format=torch.channels_last)

    def _group_pad(self, x: Tensor, lead: int) -> Tensor:
        """(..., C_in, H, W) -> (..., groups t ct, H, W): each group's channels padded to whole tiles."""
        pad_ch = self.row_tiles * self.ch_per_tile - self.cg
        if not pad_ch:
            return x
        h, wd = x.shape[-2:]
        xg = F.pad(x.reshape(*x.shape[:lead], self.groups, self.cg, h, wd), (0, 0, 0, 0, 0, pad_ch))
        return xg.reshape(*x.shape[:lead], -1, h, wd)

    def prepare(self, x: Tensor, shared: bool, c: int) -> Prepared:
        """Channels-last input of the grouped convolution (several times faster for many small groups on
        CPU): (B, C_in', H, W) shared, or (B, c C_in', H, W) with each chip's channels side by side, built
        from the activation layout (B c, C_in, H, W) in one copy. C_in' pads each group's channels to
        whole tiles."""
        n = x.shape[0] // (1 if shared else c)
        h, wd = x.shape[-2:]
        if shared:
            xin = self._group_pad(x, 1).contiguous(memory_format=torch.channels_last)
            if xin.shape[1] == 1:  # one channel is NCHW and NHWC alike; oneDNN then picks NCHW (2x slower)
                xin = xin.as_strided(xin.shape, (h * wd, 1, wd, 1))
            return Prepared(xin, n, 0)
        xin = self._group_pad(x.reshape(n, c, self.in_channels, h, wd), 2)
        rows = contiguous_rows(xin.permute(0, 3, 4, 1, 2))  # (B, H, W, c, C_in')
        return Prepared(rows.view(n, h, wd, -1).permute(0, 3, 1, 2), n, 0)

    def mvm(self, p: Prepared, packed: Tensor, shared: bool, c: int, s: int = 0) -> Tensor:
        t, s, o, g = self.row_tiles, s or self.n_slices, self.out_features, self.groups
        og = o // g
        if shared:
            y = self._conv(p.x, packed, g * t)  # output channels (g, t, c, s, og)
            if g == 1:
                return y.view(p.n, -1, t, c, s, o).transpose(2, 3)
            y = y.view(p.n, -1, g, t, c, s, og).permute(0, 1, 4, 3, 5, 2, 6)
            return y.reshape(p.n, -1, c, t, s, o)
        y = self._conv(p.x, packed, c * g * t)  # output channels (c, g, t, s, og)
        if g == 1 or t * s == 1:
            return y.view(p.n, -1, c, t, s, o)
        return y.view(p.n, -1, c, g, t, s, og).permute(0, 1, 2, 4, 5, 3, 6).reshape(p.n, -1, c, t, s, o)

    def _conv(self, x: Tensor, w: Tensor, groups: int) -> Tensor:
        """Grouped convolution of a prepared input; returns the output as a (N, H*W, C_out) tensor."""
        y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, groups=groups)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, y.shape[1])

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        n, _, c, o = y.shape
        ho, wo = self._out_hw(x.shape[-2:])
        y = contiguous_rows(y.transpose(1, 2))  # chips before positions, as the activation layout needs
        return y.view(n * c, ho, wo, o).permute(0, 3, 1, 2)  # NCHW view in channels-last memory

    def _positions_hw(self, x: Tensor, n_l: int) -> tuple[int, int]:
        return self._out_hw(x.shape[-2:])

    def _out_hw(self, hw: torch.Size) -> tuple[int, int]:
        out = []
        for i in range(2):
            k = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            out.append((hw[i] + 2 * self.padding[i] - k) // self.stride[i] + 1)  # type: ignore[operator]
        return out[0], out[1]


@register(nn.Conv2d)
class AnalogConv2d(Conv2dProduct, AnalogLayer):
    """Analog ``nn.Conv2d``: the 2-D product as it is."""
