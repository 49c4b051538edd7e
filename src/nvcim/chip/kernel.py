"""The per-read "analog epilogue": read noise, ADC gain/offset error, ADC, shift-and-add, scale.

It works on tile outputs laid out as ``(B, L, c, T, S, O)`` (images, positions, chips, row tiles,
slices, output columns) and reduces them to ``(B, L, c, O)``. The function is pure tensor code; for large
workloads it runs under ``torch.compile``, which fuses it into one loop (it is memory-bound in eager mode).
Compiled and eager results agree except for rare last-bit rounding differences at ADC code boundaries.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..circuits.converters import ste_round
from . import rng

log = logging.getLogger(__name__)


def analog_epilogue(
    y: Tensor,
    var: Tensor | None,
    keys: Tensor | None,
    gain: Tensor | None,
    offset: Tensor | None,
    delta: Tensor | None,
    lo: int,
    hi: int,
    slice_w: Tensor,
    out_scale: Tensor,
    bias: Tensor | None = None,
) -> Tensor:
    """Tile outputs ``y`` (B, L, c, T, S, O) -> layer output (B, L, c, O), contiguous.

    ``var``: read-noise variance of each element (same shape) and ``keys`` (B, c) int32 its random keys;
    ``gain``/``offset`` (c, T, S, O): ADC error; ``delta`` (T, S, O): ADC step, codes clipped to [lo, hi];
    ``slice_w`` (S,); ``out_scale`` (c, O): weight scale times drift compensation; ``bias`` (O,) digital.
    Positions lead and output columns are innermost, the order grouped convolutions produce in
    channels-last memory, so the fused kernel reads and writes in order.
    """
    b, n_l, c, t, s, o = y.shape
    if var is not None and keys is not None:
        idx = torch.arange(n_l * t * s * o, dtype=torch.int32, device=y.device).view(1, n_l, 1, t, s, o)
        k = keys.view(b, 1, c, 1, 1, 1) + idx * -1640531535
        y = y + torch.sqrt(var.clamp_min(0.0)) * rng.normal(k)
    if gain is not None and offset is not None:
        y = y * gain.view(1, 1, c, t, s, o) + offset.view(1, 1, c, t, s, o)
    if delta is not None:
        d = delta.view(1, 1, 1, t, s, o)
        y = torch.clamp(ste_round(y / d), lo, hi) * d
    y = (y * slice_w.view(1, 1, 1, 1, s, 1)).sum(dim=(3, 4)) * out_scale.view(1, 1, c, o)
    if bias is not None:
        y = y + bias.view(1, 1, 1, o)
    return y.contiguous()


_compiled: Callable[..., Tensor] | None = None
_compile_failed = False


def epilogue(compiled: bool) -> Callable[..., Tensor]:
    """The epilogue, compiled with ``torch.compile`` when asked and possible (else eager, with a warning)."""
    global _compiled, _compile_failed
    if not compiled or _compile_failed:
        return analog_epilogue
    if _compiled is None:
        # one graph per layer kind (size-1 dims and strides specialise); a deep model has more kinds than
        # dynamo's default limit of 8, after which every call would silently run eager
        import torch._dynamo

        cfg = torch._dynamo.config
        if hasattr(cfg, "recompile_limit"):
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
        _compiled = torch.compile(analog_epilogue, dynamic=True)
    return _safe


def _safe(*args: Any) -> Tensor:
    global _compile_failed
    try:
        assert _compiled is not None
        return _compiled(*args)
    except Exception as e:  # no C++ compiler, unsupported backend: stay correct, just slower
        _compile_failed = True
        warnings.warn(f"torch.compile failed ({type(e).__name__}); using the eager kernel", stacklevel=2)
        return analog_epilogue(*args)
