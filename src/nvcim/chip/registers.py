"""The digital registers of a crossbar's periphery, per chip: the arithmetic of their checks and of a
restore. Pure functions; :class:`~nvcim.chip.crossbar.Crossbar` owns the registers and assigns the results.

- output gain/offset ``(N, O)``: y -> gain y + offset per chip and column;
- sparse SRAM weights: a boolean mask ``(O, K)`` (shared by the chips) or ``(N, O, K)``, and the weights
  ``(N, O, K)``, added digitally: y += (mask * weights) x.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_affine(layer: str, gain: Tensor, offset: Tensor, n: int, o: int) -> None:
    if tuple(gain.shape) != (n, o) or tuple(offset.shape) != (n, o):
        raise ValueError(f"{layer}: gain and offset must have shape {(n, o)}")


def check_sram(layer: str, mask: Tensor, weights: Tensor, n: int, o: int, k: int) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) not in ((o, k), (n, o, k)):
        raise ValueError(f"{layer}: the SRAM mask must be boolean of shape {(o, k)} or {(n, o, k)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if tuple(weights.shape) != (n, o, k):
        raise ValueError(f"{layer}: the SRAM weights must have shape {(n, o, k)}, got {tuple(weights.shape)}")


def merged_sram(m0: Tensor, w0: Tensor, m1: Tensor, w1: Tensor, chips: Tensor) -> tuple[Tensor, Tensor]:
    """The SRAM (mask, weights) with ``chips`` (N,) (bool) back at (m0, w0) and the others at (m1, w1); a
    chip that had none gets zero weights under the new mask. An empty (m1, w1) (the SRAM removed, only
    possible by setting an empty one) keeps (m0, w0) for all."""
    if not w1.numel():
        return m0, w0
    if not w0.numel():
        m0, w0 = m1, torch.zeros_like(w1)
    n, sel = w1.shape[0], chips.to(w1.device).view(-1, 1, 1)
    if m0.shape == m1.shape == w1.shape[1:] and torch.equal(m0, m1):
        mask = m1  # one shared mask: only the weights differ per chip
    else:
        mask = torch.where(sel, m0.expand(n, *m0.shape[-2:]), m1.expand(n, *m1.shape[-2:]))
    return mask, torch.where(sel, w0.to(w1), w1)
