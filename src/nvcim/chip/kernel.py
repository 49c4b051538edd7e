"""The per-read "analog epilogue": read noise, ADC gain/offset error, ADC, shift-and-add, scale.

It works on tile outputs laid out as ``(B, L, c, T, S, O)`` (images, positions, chips, row tiles,
slices, output columns) and reduces them to ``(B, L, c, O)``. The function is pure tensor code; for large
workloads it runs under ``torch.compile``, which fuses it into one loop (it is memory-bound in eager mode).
Compiled and eager results agree except for rare last-bit rounding differences at ADC code boundaries.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..circuits.converters import ste_round
from . import rng
from .tail import apply_tail

log = logging.getLogger(__name__)


def analog_epilogue(
    y: Tensor,
    var: Tensor | None,
    ck: Tensor | None,
    ik: Tensor | None,
    gain: Tensor | None,
    offset: Tensor | None,
    delta: Tensor | None,
    lo: int,
    hi: int,
    slice_w: Tensor,
    out_scale: Tensor,
    bias: Tensor | None = None,
    *,
    kernels: Callable[[str, tuple], Callable[..., Tensor]] | None = None,
    tail: tuple[tuple[str | int, ...], int, int] | None = None,
) -> Tensor:
    """Tile outputs ``y`` (B, L, c, T, S, O) -> layer output (B, L, c, O), contiguous.

    ``var``: read-noise variance of each element (same shape); its random keys derive from ``ck`` (c,)
    int32 chip keys and ``ik`` (B,) int32 image keys: key(b, l, chip, t, s, o) = mix(ck + ik) + index G.
    ``gain``/``offset`` (c, T, S, O): ADC error; ``delta`` (T, S, O): ADC step, codes clipped to [lo, hi];
    ``slice_w`` (S,); ``out_scale`` (c, O): weight scale times drift compensation; ``bias`` (O,) digital.
    Positions lead and output columns are innermost, the order grouped convolutions produce in
    channels-last memory, so the fused kernel reads and writes in order. ``kernels``: ``(name, static) ->
    loop``, the compiled loops to run instead of the eager ones (:func:`compiled_kernel`). ``tail``: (ops, H,
    W) of a :class:`~nvcim.chip.tail.Tail` applied in the same loop, over L = H W positions; the output is
    then (B, c, H', W', O) (see :func:`~nvcim.chip.tail.apply_tail`).
    """
    get = kernels or eager_kernel
    if y.shape[3] == 1 and y.shape[4] == 1:
        return _single_tile_epilogue(y, var, ck, ik, gain, offset, delta, lo, hi, slice_w, out_scale, bias,
                                     get=get, tail=tail)
    return general_epilogue(y, var, ck, ik, gain, offset, delta, lo, hi, slice_w, out_scale, bias,
                            get=get, tail=tail)


@functools.lru_cache(maxsize=256)
def _index_keys(n: int, step: int, device: torch.device) -> Tensor:
    """(n,) int32 ``arange(n) * step`` (wrapping). Loaded by the fused loops as an operand: an int32 derived
    from the loop index inside the loop defeats inductor's vectorisation (4-10x slower)."""
    return torch.arange(n, dtype=torch.int32, device=device) * rng._s32(step)


def general_epilogue(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None,
                     gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                     slice_w: Tensor, out_scale: Tensor, bias: Tensor | None = None,
                     get: Callable[[str, tuple], Callable[..., Tensor]] | None = None,
                     tail: tuple[tuple[str | int, ...], int, int] | None = None) -> Tensor:
    """:func:`analog_epilogue` for any number of row tiles and slices."""
    b, n_l, c, t, s, o = y.shape
    eidx = _index_keys(n_l * t * s * o, rng._GOLD, y.device) if var is not None else None
    args = (y, var, ck, ik, eidx, gain, offset, delta, lo, hi, slice_w, out_scale, bias)
    get = get or eager_kernel
    return get("general_tail", tail)(*args) if tail else get("general", ())(*args)


def _general_kernel(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None, eidx: Tensor | None,
                    gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                    slice_w: Tensor, out_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The loop of :func:`general_epilogue`; ``eidx`` (L T S O,) holds the element key offsets."""
    b, n_l, c, t, s, o = y.shape
    if var is not None and ck is not None and ik is not None and eidx is not None:
        keys = rng.read_keys(ck, ik)
        k = keys.view(b, 1, c, 1, 1, 1) + eidx.view(1, n_l, 1, t, s, o)
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


def _general_tail_kernel(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None,
                         eidx: Tensor | None, gain: Tensor | None, offset: Tensor | None, delta: Tensor | None,
                         lo: int, hi: int, slice_w: Tensor, out_scale: Tensor, bias: Tensor | None,
                         ops: tuple[str | int, ...], h: int, w: int) -> Tensor:
    """:func:`_general_kernel` followed by the layer's digital tail, in one loop when compiled."""
    out = _general_kernel(y, var, ck, ik, eidx, gain, offset, delta, lo, hi, slice_w, out_scale, bias)
    return apply_tail(out, ops, h, w)


def _single_tile_epilogue(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None,
                          gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                          slice_w: Tensor, out_scale: Tensor, bias: Tensor | None,
                          get: Callable[[str, tuple], Callable[..., Tensor]] | None = None,
                          tail: tuple[tuple[str | int, ...], int, int] | None = None) -> Tensor:
    """:func:`analog_epilogue` for one row tile and one slice (most layers), element for element the same
    arithmetic and random keys, on the flattened ``(B, L, c * O)`` layout: the per-(chip, column) operands
    are laid out flat here (small tensors), so the loop over positions vectorises over chips x columns with
    plain contiguous loads rather than over a handful of output columns (6 lanes of 16 for a first
    convolution with 6 filters)."""
    b, n_l, c, _, _, o = y.shape
    co = c * o

    def flat(v: Tensor) -> Tensor:  # (O,) or (c, O) -> (c * O,)
        return v.reshape(-1, o).expand(c, o).reshape(co)

    # key of (b, l, chip, o) = mix(ck + ik) + (l O + o) G, wrapping: the (B, c O) keys of position 0 (made
    # here: recovering chip and column from a flat index inside the loop would not vectorise) + l O G
    kb = pk = None
    if var is not None and ck is not None and ik is not None:
        ok = _index_keys(o, rng._GOLD, y.device)
        kb = (rng.read_keys(ck, ik).view(b, c, 1) + ok.view(1, 1, o)).view(b, co)
        pk = _index_keys(n_l, o * rng._GOLD, y.device)
    yf = y.reshape(b, n_l, co)
    vf = None if var is None else var.reshape(b, n_l, co)
    # A convolution that comes back position-innermost (NCHW memory): run the loop in that order (``cm``)
    # instead of striding across positions, which cannot vectorise (10x slower).
    cm = n_l > 1 and yf.stride() == (co * n_l, 1, n_l)
    if cm:
        yf = yf.transpose(1, 2)
        vf = None if vf is None else vf.transpose(1, 2).contiguous()
    args = (yf, vf, kb, pk, None if gain is None else gain.reshape(co),
            None if offset is None else offset.reshape(co), None if delta is None else flat(delta), lo, hi,
            slice_w.reshape(1), flat(out_scale), None if bias is None else flat(bias), cm)
    get = get or eager_kernel
    if tail:
        return get("flat_tail", (c, *tail))(*args)
    out = get("flat", ())(*args)
    if cm:  # (B, CO, L) memory viewed as (B, L, c, O)
        return out.transpose(1, 2).view(b, n_l, c, o)
    return out.view(b, n_l, c, o)


def _flat_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None, pk: Tensor | None, gain: Tensor | None,
                 offset: Tensor | None, delta: Tensor | None, lo: int, hi: int, slice_w: Tensor,
                 out_scale: Tensor, bias: Tensor | None, cm: bool = False) -> Tensor:
    """The single-tile epilogue on ``(B, L, CO)`` with flat ``(CO,)`` operands, ``(B, CO)`` keys of position
    0 and ``(L,)`` position key offsets ``pk``; with ``cm`` on ``(B, CO, L)`` (columns outer, positions
    inner), the same arithmetic element for element."""
    if cm:
        b, co, n_l = y.shape
        out_scale = out_scale.view(co, 1)
        gain, offset, delta, bias = (None if v is None else v.view(co, 1) for v in (gain, offset, delta, bias))
    else:
        b, n_l, co = y.shape
    if var is not None and kb is not None and pk is not None:
        k = kb.view(b, co, 1) + pk.view(1, 1, n_l) if cm else kb.view(b, 1, co) + pk.view(1, n_l, 1)
        y = y + torch.sqrt(var.clamp_min(0.0)) * rng.normal(k)
    if gain is not None and offset is not None:
        y = y * gain + offset
    if delta is not None:
        y = torch.clamp(ste_round(y / delta), lo, hi) * delta
    y = y * slice_w * out_scale
    if bias is not None:
        y = y + bias
    return y.contiguous()


def _flat_tail_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None, pk: Tensor | None, gain: Tensor | None,
                      offset: Tensor | None, delta: Tensor | None, lo: int, hi: int, slice_w: Tensor,
                      out_scale: Tensor, bias: Tensor | None, cm: bool, c: int, ops: tuple[str | int, ...],
                      h: int, w: int) -> Tensor:
    """:func:`_flat_kernel` followed by the layer's digital tail, in one loop when compiled."""
    out = _flat_kernel(y, var, kb, pk, gain, offset, delta, lo, hi, slice_w, out_scale, bias, cm)
    b = out.shape[0]
    z = out.transpose(1, 2) if cm else out  # (B, L, c O) either way
    return apply_tail(z.view(b, h * w, c, -1), ops, h, w)


_KERNELS: dict[str, Callable[..., Tensor]] = {
    "flat": _flat_kernel, "general": _general_kernel, "flat_tail": _flat_tail_kernel,
    "general_tail": _general_tail_kernel}
_compile_failed = False


def eager_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` with its trailing arguments ``static`` bound."""
    fn = _KERNELS[name]
    return (lambda *a: fn(*a, *static)) if static else fn


@functools.lru_cache(maxsize=128)
def compiled_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` under ``torch.compile``, one compiled function per ``static`` (the tail's ops and the
    output geometry), closed over and compiled with automatic dynamic shapes, so that only what does change
    (the sub-batch size) becomes symbolic: under ``dynamic=True`` the geometry would be symbolic too, and
    the pooling windows' index arithmetic on symbols neither fuses with the epilogue nor vectorises (2.5x
    slower, measured)."""
    fn = _KERNELS[name]
    if not static:
        return torch.compile(fn, dynamic=True)

    def bound(*a: Any) -> Tensor:
        return fn(*a, *static)

    return torch.compile(bound, dynamic=None)


def epilogue(compiled: bool) -> Callable[..., Tensor]:
    """The epilogue, compiled with ``torch.compile`` when asked and possible (else eager, with a warning)."""
    if not compiled or _compile_failed:
        return analog_epilogue
    # one graph per layer kind (size-1 dims and strides specialise); a deep model has more kinds than
    # dynamo's default limit of 8, after which every call would silently run eager
    import torch._dynamo

    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit") and cfg.recompile_limit < 64:
        cfg.recompile_limit = 64
    return _safe


def _safe(*args: Any, tail: tuple[tuple[str | int, ...], int, int] | None = None) -> Tensor:
    global _compile_failed
    try:
        return analog_epilogue(*args, kernels=compiled_kernel, tail=tail)
    except Exception as e:  # no C++ compiler, unsupported backend: stay correct, just slower
        _compile_failed = True
        warnings.warn(f"torch.compile failed ({type(e).__name__}); using the eager kernel", stacklevel=2)
        return analog_epilogue(*args, tail=tail)
