"""Analog ``nn.ConvTranspose2d``, as compute-in-memory chips run it: a stride-1 convolution of the input
upsampled with zeros (and padded), with the kernel flipped and its in/out channels swapped on the arrays.

The arrays hold K = (C_in / groups) kh kw rows per output channel, like
:class:`~nvcim.chip.conv2d.AnalogConv2d` (the same :class:`~nvcim.chip.conv2d.Conv2dProduct`); the
zero-stuffing and padding happen digitally before the DAC
(zeros convert to zero). The layer's ``weight`` keeps PyTorch's (C_in, C_out / groups, kh, kw) layout, so
state_dict keys and shapes are the module's; :meth:`as_matrix` maps it to the cells.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from .conv2d import Conv2dProduct
from .layers import AnalogLayer
from .registry import Unsupported, register


@register(nn.ConvTranspose2d)
class AnalogConvTranspose2d(Conv2dProduct, AnalogLayer):
    """Analog transposed convolution (any stride, padding, output_padding, dilation, groups)."""

    def __init__(self, digital: nn.ConvTranspose2d, config: ChipConfig, name: str) -> None:
        if digital.padding_mode != "zeros":
            raise Unsupported("a padding_mode other than 'zeros' is not defined for ConvTranspose2d")
        g = digital.groups
        kh, kw = digital.kernel_size
        dh, dw = digital.dilation
        as_conv = nn.Conv2d(digital.in_channels, digital.out_channels, (kh, kw), 1, 0, (dh, dw), g,
                            digital.bias is not None, device="meta")
        as_conv.weight, as_conv.bias = digital.weight, digital.bias  # (C_in, C_out/g, kh, kw) as it is
        self.t_stride: tuple[int, int] = (int(digital.stride[0]), int(digital.stride[1]))
        self.t_padding: tuple[int, int] = (int(digital.padding[0]), int(digital.padding[1]))  # type: ignore[index]
        self.output_padding: tuple[int, int] = (int(digital.output_padding[0]), int(digital.output_padding[1]))
        self.out_channels = digital.out_channels
        super().__init__(as_conv, config, name)
        self.pre_pad = None  # pad_input below does the transposed convolution's own upsampling and padding

    def matrix_shape(self) -> tuple[int, int]:
        c_in, og, kh, kw = self.weight.shape
        return self.out_channels, (c_in // self.groups) * kh * kw

    def as_matrix(self, t: Tensor) -> Tensor:
        lead = t.shape[: t.dim() - 4]
        c_in, og, kh, kw = self.weight.shape
        g = self.groups
        m = t.reshape(*lead, g, c_in // g, og, kh, kw).flip(-1, -2).transpose(-4, -3)  # (.., g, og, cg, kh, kw)
        return m.reshape(*lead, self.out_features, self.k)

    def from_matrix(self, m: Tensor) -> Tensor:
        lead = m.shape[:-2]
        c_in, og, kh, kw = self.weight.shape
        g = self.groups
        t = m.reshape(*lead, g, og, c_in // g, kh, kw).transpose(-4, -3).flip(-1, -2)
        return t.reshape(*lead, c_in, og, kh, kw)

    def pad_input(self, x: Tensor) -> Tensor:
        """Zeros between the input's pixels (stride - 1 of them), then dilation (k - 1) - padding on each side,
        plus output_padding at the bottom and right (negative amounts crop)."""
        sh, sw = self.t_stride
        if sh > 1 or sw > 1:
            n, c, h, w = x.shape
            up = x.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
            up[:, :, ::sh, ::sw] = x
            x = up
        ph, pw = (self.dilation[i] * (self.kernel_size[i] - 1) - self.t_padding[i] for i in range(2))
        oh, ow = self.output_padding
        return F.pad(x, (pw, pw + ow, ph, ph + oh))

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv_transpose2d(x, w, self.bias, self.t_stride, self.t_padding, self.output_padding,
                                  self.groups, self.dilation)

    def patch_args(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (0, 0), (1, 1)  # pad_input upsampled and padded already
