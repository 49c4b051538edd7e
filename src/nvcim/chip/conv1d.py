"""Analog ``nn.Conv1d``: the 2-D analog convolution on a height-1 image (kernel 1 x k), so the tiling,
read noise and converters are those of :class:`~nvcim.chip.conv2d.AnalogConv2d`, row for row (the same
:class:`~nvcim.chip.conv2d.Conv2dProduct`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from ..errors import ShapeError
from .conv2d import Conv2dProduct
from .layers import AnalogLayer
from .registry import register


@register(nn.Conv1d)
class AnalogConv1d(Conv2dProduct, AnalogLayer):
    """K = (C_in / groups) k rows; inputs (B, C_in, L) run as (B, C_in, 1, L)."""

    def __init__(self, digital: nn.Conv1d, config: ChipConfig, name: str) -> None:
        (k,), (s,), (d,) = digital.kernel_size, digital.stride, digital.dilation
        as2d = nn.Conv2d(digital.in_channels, digital.out_channels, (1, k), (1, s),
                         digital.padding if isinstance(digital.padding, str) else (0, digital.padding[0]), (1, d),
                         digital.groups, digital.bias is not None, digital.padding_mode, device="meta")
        as2d.weight, as2d.bias = digital.weight, digital.bias  # the Conv1d's own Parameters (O, C/g, k)
        super().__init__(as2d, config, name)
        if self.pre_pad is not None:  # nn.Conv1d's (left, right), as (left, right, top, bottom)
            self.pre_pad = (*digital._reversed_padding_repeated_twice, 0, 0)

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] != 1:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, {self.in_channels}, L), "
                             f"got {tuple(x.shape[:2]) + tuple(x.shape[3:])}")

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(self.pad_input(x), w.unsqueeze(2), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def unfold_input(self, v: Tensor) -> Tensor:
        return super().unfold_input(v.unsqueeze(2))

    def _fused_tail(self, *args: object, **kwargs: object) -> None:
        return None  # a ReLU after it runs as the model's own module

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, {self.in_channels}, L), "
                             f"got {tuple(x.shape)}")
        return super().forward(x.unsqueeze(2)).squeeze(2)
