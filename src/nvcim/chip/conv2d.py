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

    def patch_args(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(padding, stride) of the product on :meth:`pad_input`'s output."""
        return self.padding, self.stride

    def patches(self, v: Tensor) -> Tensor:
        """The receptive fields of input ``v`` (B, C_in, H, W): a view (B, C_in, H_out, W_out, kh, kw)."""
        padding, stride = self.patch_args()
        return patch_view(self.pad_input(v), self.kernel_size, self.dilation, padding, stride)

    def unfold_input(self, v: Tensor) -> Tensor:
        """Inputs ``v`` (B, C_in, H, W) as the rows of the matrix product, (B L groups, K), group-major rows
        of (C_in / groups, kh, kw) as ``F.unfold`` orders them, in one copy."""
        p = self.patches(v)
        n, _, ho, wo, kh, kw = p.shape
        return p.view(n, self.groups, self.cg, ho, wo, kh, kw).permute(0, 3, 4, 1, 2, 5, 6).reshape(-1, self.k)

    def tile_input(self, v: Tensor, cp: int) -> Tensor:
        """See :meth:`AnalogLayer.tile_input`: the tiles' rows cut from the patches in one copy, each tile's
        channels zero-padded to whole tiles on the (smaller) input first."""
        n = v.shape[0]
        g, t, ct = self.groups, self.row_tiles, self.ch_per_tile
        p = self.patches(self._whole_tiles(v).flatten(1, 3))  # (N, g T ct, Ho, Wo, kh, kw)
        _, _, ho, wo, kh, kw = p.shape
        p = p.view(n // cp, cp, g, t, ct, ho, wo, kh, kw).permute(1, 2, 3, 0, 5, 6, 4, 7, 8)
        return p.reshape(cp, g, t, n // cp, ho * wo, ct * kh * kw).permute(3, 0, 4, 1, 2, 5)

    def tile_absmax(self, v: Tensor, rows: Tensor, cp: int) -> Tensor:
        """See :meth:`AnalogLayer.tile_absmax`: the max over each receptive field of the input's max |x| over
        each tile's channels: the input read once instead of the k^2 times larger patches (the same numbers:
        max is exact)."""
        n = v.shape[0]
        g, t = self.groups, self.row_tiles
        a = self.patches(self._whole_tiles(v).abs().amax(3).flatten(1, 2)).amax((-2, -1))  # (N, g T, Ho, Wo)
        return a.reshape(n // cp, cp, g, t, -1).permute(0, 1, 4, 2, 3).unsqueeze(-1)

    def _whole_tiles(self, v: Tensor) -> Tensor:
        """Input ``v`` (N, C_in, H, W) as (N, g, T, ch_per_tile, H, W), the last tile's missing channels
        zero (the rows that :meth:`~.geometry.TileGeometry.to_tile_rows` pads)."""
        n, _, h, w = v.shape
        g, t, ct = self.groups, self.row_tiles, self.ch_per_tile
        v = v.reshape(n, g, self.cg, h, w)
        if t * ct > self.cg:
            v = F.pad(v, (0, 0, 0, 0, 0, t * ct - self.cg))
        return v.reshape(n, g, t, ct, h, w)

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


def patch_view(v: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...],
               stride: tuple[int, ...]) -> Tensor:
    """The receptive fields of ``v`` (N, C, H, W), zero-padded by ``padding``, as a strided view
    (N, C, H_out, W_out, kh, kw): what ``F.unfold`` gathers, without its copy (ATen's CPU im2col is a
    single-threaded loop: 0.7 s a call on LeNet-5's second convolution for 100 chips x 500 images)."""
    if any(padding):
        v = F.pad(v, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = v.shape
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = v.stride()
    return v.as_strided((n, c, ho, wo, kh, kw), (s_n, s_c, s_h * sh, s_w * sw, s_h * dh, s_w * dw),
                        v.storage_offset())
