"""The analog epilogue stated plainly: the reference that the fused loops of ``kernel.py`` are tested against.

No layout tricks, no pairing of loops, no in-place window maxima: every element's read-noise key is computed
from its coordinates, then the arithmetic runs in textbook order on the full ``(B, L, c, T, S, O)`` tensor.
It is slow and uses more memory; it exists so that a test can say what the kernels compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..circuits import get_adc
from . import rng
from .context import EpilogueOperands, ReadNoiseOperands


def _wrap32(v: Tensor) -> Tensor:
    """int64 -> int32 with two's-complement wrap-around (what int32 tensor arithmetic does)."""
    return (((v + 2**31) % 2**32) - 2**31).to(torch.int32)


def element_keys(noise: ReadNoiseOperands, shape: tuple[int, ...], hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The read-noise key of every element of ``(B, L, c, T, S, O)`` and whether it takes the sine of its
    pair: key = mix(chip key + image key) + (m(l) T S O + (t S + s) O + o) x GOLD, where the positions of
    columns 2j and 2j+1 of row i share m(l) = i ceil(W/2) + j (one Box-Muller pair)."""
    b, n_l, c, t, s, o = shape
    h, w = hw
    base = rng.read_keys(noise.chip_keys, noise.image_keys).long().view(b, 1, c, 1, 1, 1)
    row, col = torch.arange(n_l) // w, torch.arange(n_l) % w
    m = (row * ((w + 1) // 2) + col // 2).view(1, n_l, 1, 1, 1, 1)
    tso = torch.arange(t * s * o).view(1, 1, 1, t, s, o)
    keys = _wrap32(base + _wrap32((m * (t * s * o) + tso) * rng._GOLD).long())
    odd = (col % 2 == 1).view(1, n_l, 1, 1, 1, 1).expand(shape) if w > 1 else torch.zeros(shape, dtype=torch.bool)
    return keys.to(noise.var.device), odd.to(noise.var.device)


def reference_epilogue(y: Tensor, noise: ReadNoiseOperands | None, ops: EpilogueOperands,
                       hw: tuple[int, int] | None = None, tail: tuple[tuple[str | int, ...], int, int] | None = None
                       ) -> Tensor:
    """What :func:`~nvcim.chip.kernel.analog_epilogue` computes: (B, L, c, T, S, O) -> (B, L, c, O), or with a
    ``tail`` (ops, H, W) the tail's output (B, c, H', W', O)."""
    b, n_l, c, t, s, o = y.shape
    hw = (tail[1], tail[2]) if tail else (hw or (1, n_l))
    if noise is not None:  # one fresh standard normal per element, scaled by its own std
        keys, odd = element_keys(noise, tuple(y.shape), hw)
        z0, z1 = rng.normal_pair(keys)
        y = y + noise.var.to(y.dtype).clamp_min(0.0).sqrt() * torch.where(odd, z1, z0)
    if ops.gain is not None and ops.offset is not None:  # ADC gain and offset errors, per chip and column
        y = y * ops.gain + ops.offset
    if ops.delta is not None:
        y = get_adc(ops.adc_model).quantize(y, ops.delta, ops.lo, ops.hi)
    y = (y * ops.slice_w.view(s, 1)).sum(dim=(3, 4))  # shift-and-add over row tiles and slices
    y = y * ops.scale + ops.bias  # (B, L, c, O)
    if not tail:
        return y
    tops, h, w = tail
    z = y.view(b, h, w, c, o).permute(0, 3, 4, 1, 2).reshape(b * c, o, h, w)
    for op in tops:
        z = torch.relu(z) if op == "relu" else F.max_pool2d(z, int(op))
    return z.reshape(b, c, o, *z.shape[-2:]).permute(0, 1, 3, 4, 2)
