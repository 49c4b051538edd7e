"""The per-read "analog epilogue": read noise, ADC gain/offset error, ADC, shift-and-add, scale.

It works on tile outputs laid out as ``(B, L, c, T, S, O)`` (images, positions, chips, row tiles,
slices, output columns) and reduces them to ``(B, L, c, O)``. The function is pure tensor code; for large
workloads it runs under ``torch.compile``, which fuses it into one loop (it is memory-bound in eager mode).
Compiled and eager results are the same to the bit: the loops use IEEE operations in a fixed order only
(no reductions whose order a backend chooses; inductor contracts no multiply-adds).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ..circuits import get_adc
from . import rng
from .compiling import compiled_kernel, compiled_or_eager, eager_kernel, failed, raise_recompile_limit, register_kernel
from .context import EpilogueOperands, ReadNoiseOperands
from .tail import apply_tail

log = logging.getLogger(__name__)


TailSpec = tuple[tuple[str | int, ...], int, int]  # (ops, H, W) of a layer's digital tail
Getter = Callable[[str, tuple], Callable[..., Tensor]]


def analog_epilogue(y: Tensor, noise: ReadNoiseOperands | None, ops: EpilogueOperands, *,
                    kernels: Getter | None = None, tail: TailSpec | None = None,
                    hw: tuple[int, int] | None = None) -> Tensor:
    """Tile outputs ``y`` (B, L, c, T, S, O) -> layer output (B, L, c, O), contiguous.

    ``noise``: the read-noise variance of each element and the keys its draws derive from
    (:func:`position_keys`), or None. ``ops``: the ADC (error, step, codes, model), shift-and-add weights,
    output scale and digital bias (``ops.extra`` is the caller's, added after). ``hw``: the L positions as
    (H, W) rows and columns (default (1, L)). Positions lead and output columns are innermost, the order
    grouped convolutions produce in channels-last memory, so the fused kernel reads and writes in order.
    ``kernels``: ``(name, static) -> loop``, the compiled loops to run instead of the eager ones
    (:func:`compiled_kernel`). ``tail``: (ops, H, W) of a :class:`~nvcim.chip.tail.Tail` applied in the
    same loop; the output is then (B, c, H', W', O) (see :func:`~nvcim.chip.tail.apply_tail`).
    :func:`nvcim.chip.reference.reference_epilogue` is the plain statement of the same arithmetic.

    The loops below take their operands as positional tensors because they are what ``torch.compile``
    traces (one graph per layer kind); only this function and its two helpers build those lists.
    """
    get = kernels or eager_kernel
    if tail:
        hw = tail[1], tail[2]
    hw = hw or (1, y.shape[1])
    if hw[0] * hw[1] != y.shape[1]:
        raise ValueError(f"positions {hw} do not match L = {y.shape[1]}")
    var, ck, ik = (noise.var, noise.chip_keys, noise.image_keys) if noise is not None else (None, None, None)
    args = (y, var, ck, ik, ops.gain, ops.offset, ops.delta, ops.lo, ops.hi, ops.slice_w, ops.scale, ops.bias)
    if y.shape[3] == 1 and y.shape[4] == 1:
        return _single_tile_epilogue(*args, get=get, tail=tail, hw=hw, adc=ops.adc_model)
    return general_epilogue(*args, get=get, tail=tail, hw=hw, adc=ops.adc_model)


@functools.lru_cache(maxsize=256)
def _index_keys(n: int, step: int, device: torch.device) -> Tensor:
    """(n,) int32 ``arange(n) * step`` (wrapping). Loaded by the fused loops as an operand: an int32 derived
    from the loop index inside the loop defeats inductor's vectorisation (4-10x slower)."""
    return torch.arange(n, dtype=torch.int32, device=device) * rng._s32(step)


@functools.lru_cache(maxsize=256)
def position_keys(h: int, w: int, step: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Read-noise key offsets of the L = H W positions, (L,) int32, and which positions are odd columns
    ((L,) bool, or None when there are none).

    Positions in columns 2j and 2j+1 of a row share one key, m = row ceil(W/2) + j, times ``step``: one
    Box-Muller draw gives the even column r cos(theta) and the odd one r sin(theta), two independent
    standard normals from one pair of hashes and one logarithm, which is what the fused loops exploit
    (20 % faster). A layer with one position (Linear) draws r cos(theta) from key 0, as before pairing."""
    col = torch.arange(w)
    m = torch.arange(h).view(h, 1) * ((w + 1) // 2) + (col // 2).view(1, w)
    keys = m.reshape(-1).to(torch.int32).to(device) * rng._s32(step)
    odd = (col % 2 == 1).expand(h, w).reshape(-1).to(device) if w > 1 else None
    return keys, odd


def read_noise(k: Tensor, odd: Tensor | None) -> Tensor:
    """Standard normals of pair keys ``k``: r cos(theta), or r sin(theta) where ``odd``."""
    z0, z1 = rng.normal_pair(k)
    return z0 if odd is None else torch.where(odd, z1, z0)


def general_epilogue(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None,
                     gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                     slice_w: Tensor, out_scale: Tensor, bias: Tensor | None = None,
                     get: Getter | None = None, tail: TailSpec | None = None,
                     hw: tuple[int, int] | None = None, adc: str = "uniform") -> Tensor:
    """:func:`analog_epilogue` for any number of row tiles and slices."""
    b, n_l, c, t, s, o = y.shape
    h, w = hw or (1, n_l)
    eidx = odd = kb = None
    if var is not None and ck is not None and ik is not None:
        # key of (b, l, chip, tso) = mix(ck + ik) + (m(l) T S O + tso) G, wrapping. The (B, c) keys are mixed
        # here, not in the loop: the same integers, and inductor re-expands an inlined value at every
        # reference, so each hash step inside the loop doubled the cost of compiling it
        kb = rng.read_keys(ck, ik)
        pk, odd = position_keys(h, w, t * s * o * rng._GOLD, y.device)
        eidx = (pk.view(n_l, 1) + _index_keys(t * s * o, rng._GOLD, y.device).view(1, -1)).view(-1)
    args = (y, var, kb, eidx, odd, gain, offset, delta, lo, hi, slice_w, out_scale, bias)
    get = get or eager_kernel
    return get("general_tail", (*tail, adc))(*args) if tail else get("general", (adc,))(*args)


def _adc(y: Tensor, gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
         adc: str) -> Tensor:
    """ADC gain/offset error and quantisation (ADC model ``adc``) of noisy outputs; operands broadcast from
    the right."""
    if gain is not None and offset is not None:
        y = y * gain + offset
    if delta is not None:
        y = get_adc(adc).quantize(y, delta, lo, hi)
    return y


def _shift_add(y: Tensor, slice_w: Tensor) -> Tensor:
    """Sum over row tiles and slices of ``y`` (..., T, S, O) weighted by ``slice_w`` (S,), as additions in one
    fixed order: a reduction leaves the order to the backend, and eager and compiled runs then differ in
    the last bits (measured: 15 % of a bit-sliced LeNet-5's logits), which would make results depend on
    whether a pass was compiled."""
    t, s = y.shape[-3], y.shape[-2]
    acc = y[..., 0, 0, :] * slice_w[0]
    for i in range(t):
        for j in range(s):
            if i or j:
                acc = acc + y[..., i, j, :] * slice_w[j]
    return acc


def _general_post(y: Tensor, gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int,
                  hi: int, slice_w: Tensor, out_scale: Tensor, bias: Tensor | None, adc: str) -> Tensor:
    """ADC error, ADC, shift-and-add over (T, S), scale and bias of noisy tile outputs (..., c, T, S, O)."""
    y = _adc(y, gain, offset, delta, lo, hi, adc)  # operands (c, T, S, O) and (T, S, O)
    y = _shift_add(y, slice_w) * out_scale
    if bias is not None:
        y = y + bias
    return y


def _general_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None, eidx: Tensor | None, odd: Tensor | None,
                    gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                    slice_w: Tensor, out_scale: Tensor, bias: Tensor | None, adc: str) -> Tensor:
    """The loop of :func:`general_epilogue`; ``kb`` (B, c) holds the mixed keys of (image, chip), ``eidx``
    (L T S O,) the element key offsets, ``odd`` (L,) the positions that take the sine of their pair."""
    var = None if var is None else var.to(y.dtype)  # a bfloat16 variance is widened here
    b, n_l, c, t, s, o = y.shape
    if var is not None and kb is not None and eidx is not None:
        k = kb.view(b, 1, c, 1, 1, 1) + eidx.view(1, n_l, 1, t, s, o)
        z = read_noise(k, None if odd is None else odd.view(1, n_l, 1, 1, 1, 1))
        y = y + torch.sqrt(var.clamp_min(0.0)) * z
    return _general_post(y, gain, offset, delta, lo, hi, slice_w, out_scale, bias, adc).contiguous()


def _pool_window(ops: tuple[str | int, ...]) -> int:
    return next((int(op) for op in ops if op != "relu"), 0)


def _windows(t: Tensor, h: int, w: int, k: int) -> Tensor:
    """(B, H W, ...) -> (B, H', k, W', k, ...): the pooling windows (trailing rows/columns dropped)."""
    t = t.view(t.shape[0], h, w, *t.shape[2:])[:, : h // k * k, : w // k * k]
    return t.reshape(t.shape[0], h // k, k, w // k, k, *t.shape[3:])


def _paired_max(noisy: Callable[[int, int, Tensor], Tensor], kk: Callable[[int, int], Tensor], k: int) -> Tensor:
    """max over a k x k window (k even) of ``noisy(di, dj, z)``, the post-processed output of window element
    (di, dj) with read noise z; the even and odd columns of a pair share one draw ``kk(di, dj)``."""
    z: Tensor | None = None
    for di in range(k):
        for dj in range(0, k, 2):
            z0, z1 = rng.normal_pair(kk(di, dj))
            for e in (noisy(di, dj, z0), noisy(di, dj + 1, z1)):
                z = e if z is None else torch.maximum(z, e)
    assert z is not None
    return z


def _finish_tail(z: Tensor, ops: tuple[str | int, ...], c: int) -> Tensor:
    """Pooled outputs (B, H', W', c, O) -> the ReLU if any, in the activation layout (B, c, H', W', O)."""
    if "relu" in ops:
        z = torch.relu(z)
    b, ho, wo = z.shape[:3]
    return z.reshape(b, ho, wo, c, -1).permute(0, 3, 1, 2, 4).contiguous()


def _general_tail_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None,
                         eidx: Tensor | None, odd: Tensor | None, gain: Tensor | None, offset: Tensor | None,
                         delta: Tensor | None, lo: int, hi: int, slice_w: Tensor, out_scale: Tensor,
                         bias: Tensor | None, ops: tuple[str | int, ...], h: int, w: int, adc: str) -> Tensor:
    """:func:`_general_kernel` followed by the layer's digital tail. With read noise and an even pooling
    window, each window is computed in place (pairs of columns from one draw) and only the pooled
    output is written; the same numbers, element for element, as the kernel followed by the tail."""
    var = None if var is None else var.to(y.dtype)  # a bfloat16 variance is widened here
    k = _pool_window(ops)
    if var is None or kb is None or eidx is None or not k or k % 2:
        out = _general_kernel(y, var, kb, eidx, odd, gain, offset, delta, lo, hi, slice_w, out_scale, bias, adc)
        return apply_tail(out, ops, h, w)
    b, _, c, t, s, o = y.shape
    keys = kb.view(b, 1, 1, c, 1, 1, 1)
    yw, vw = _windows(y, h, w, k), _windows(var, h, w, k)  # (B, H', k, W', k, c, T, S, O)
    ew = _windows(eidx.view(1, h * w, t, s, o), h, w, k)[0]  # (H', k, W', k, T, S, O)

    def noisy(di: int, dj: int, z: Tensor) -> Tensor:
        v = yw[:, :, di, :, dj] + torch.sqrt(vw[:, :, di, :, dj].clamp_min(0.0)) * z
        return _general_post(v, gain, offset, delta, lo, hi, slice_w, out_scale, bias, adc)

    z = _paired_max(noisy, lambda di, dj: keys + ew[:, di, :, dj].unsqueeze(2), k)  # (B, H', W', c, O)
    return _finish_tail(z, ops, c)


def _single_tile_epilogue(y: Tensor, var: Tensor | None, ck: Tensor | None, ik: Tensor | None,
                          gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                          slice_w: Tensor, out_scale: Tensor, bias: Tensor | None,
                          get: Getter | None = None, tail: TailSpec | None = None,
                          hw: tuple[int, int] | None = None, adc: str = "uniform") -> Tensor:
    """:func:`analog_epilogue` for one row tile and one slice (most layers), element for element the same
    arithmetic and random keys, on the flattened ``(B, L, c * O)`` layout: the per-(chip, column) operands
    are laid out flat here (small tensors), so the loop over positions vectorises over chips x columns with
    plain contiguous loads rather than over a handful of output columns (6 lanes of 16 for a first
    convolution with 6 filters)."""
    b, n_l, c, _, _, o = y.shape
    co = c * o
    h, w = hw or (1, n_l)

    def flat(v: Tensor) -> Tensor:  # (O,) or (c, O) -> (c * O,)
        return v.reshape(-1, o).expand(c, o).reshape(co)

    # key of (b, l, chip, o) = mix(ck + ik) + (m(l) O + o) G, wrapping: the (B, c O) keys of position 0 (made
    # here: recovering chip and column from a flat index inside the loop would not vectorise) + m(l) O G
    kb = pk = odd = None
    if var is not None and ck is not None and ik is not None:
        ok = _index_keys(o, rng._GOLD, y.device)
        kb = (rng.read_keys(ck, ik).view(b, c, 1) + ok.view(1, 1, o)).view(b, co)
        pk, odd = position_keys(h, w, o * rng._GOLD, y.device)
    yf = y.reshape(b, n_l, co)
    vf = None if var is None else var.reshape(b, n_l, co)
    # A convolution that comes back position-innermost (NCHW memory): run the loop in that order (``cm``)
    # instead of striding across positions, which cannot vectorise (10x slower).
    cm = n_l > 1 and yf.stride() == (co * n_l, 1, n_l)
    if cm:
        yf = yf.transpose(1, 2)
        vf = None if vf is None else vf.transpose(1, 2).contiguous()
    args = (yf, vf, kb, pk, odd, None if gain is None else gain.reshape(co),
            None if offset is None else offset.reshape(co), None if delta is None else flat(delta), lo, hi,
            slice_w.reshape(1), flat(out_scale), None if bias is None else flat(bias), cm)
    get = get or eager_kernel
    if tail:
        return get("flat_tail", (c, *tail, adc))(*args)
    out = get("flat", (adc,))(*args)
    if cm:  # (B, CO, L) memory viewed as (B, L, c, O)
        return out.transpose(1, 2).view(b, n_l, c, o)
    return out.view(b, n_l, c, o)


def _flat_post(y: Tensor, gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
               slice_w: Tensor, out_scale: Tensor, bias: Tensor | None, adc: str) -> Tensor:
    """ADC error, ADC, scale and bias of noisy outputs whose operands broadcast against them."""
    y = _adc(y, gain, offset, delta, lo, hi, adc) * slice_w * out_scale
    if bias is not None:
        y = y + bias
    return y


def _flat_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None, pk: Tensor | None, odd: Tensor | None,
                 gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                 slice_w: Tensor, out_scale: Tensor, bias: Tensor | None, cm: bool = False,
                 adc: str = "uniform") -> Tensor:
    """The single-tile epilogue on ``(B, L, CO)`` with flat ``(CO,)`` operands, ``(B, CO)`` keys of position
    0, ``(L,)`` position key offsets ``pk`` and odd-column flags ``odd``; with ``cm`` on ``(B, CO, L)``
    (columns outer, positions inner), the same arithmetic element for element."""
    var = None if var is None else var.to(y.dtype)  # a bfloat16 variance is widened here
    if cm:
        b, co, n_l = y.shape
        out_scale = out_scale.view(co, 1)
        gain, offset, delta, bias = (None if v is None else v.view(co, 1) for v in (gain, offset, delta, bias))
    else:
        b, n_l, co = y.shape
    if var is not None and kb is not None and pk is not None:
        if cm:
            k, par = kb.view(b, co, 1) + pk.view(1, 1, n_l), None if odd is None else odd.view(1, 1, n_l)
        else:
            k, par = kb.view(b, 1, co) + pk.view(1, n_l, 1), None if odd is None else odd.view(1, n_l, 1)
        y = y + torch.sqrt(var.clamp_min(0.0)) * read_noise(k, par)
    return _flat_post(y, gain, offset, delta, lo, hi, slice_w, out_scale, bias, adc).contiguous()


def _flat_tail_kernel(y: Tensor, var: Tensor | None, kb: Tensor | None, pk: Tensor | None, odd: Tensor | None,
                      gain: Tensor | None, offset: Tensor | None, delta: Tensor | None, lo: int, hi: int,
                      slice_w: Tensor, out_scale: Tensor, bias: Tensor | None, cm: bool, c: int,
                      ops: tuple[str | int, ...], h: int, w: int, adc: str) -> Tensor:
    """:func:`_flat_kernel` followed by the layer's digital tail; with read noise and an even pooling
    window in one pass over the windows, as in :func:`_general_tail_kernel`."""
    var = None if var is None else var.to(y.dtype)  # a bfloat16 variance is widened here
    k = _pool_window(ops)
    b = y.shape[0]
    if var is None or kb is None or pk is None or cm or not k or k % 2:
        out = _flat_kernel(y, var, kb, pk, odd, gain, offset, delta, lo, hi, slice_w, out_scale, bias, cm, adc)
        z = out.transpose(1, 2) if cm else out  # (B, L, c O) either way
        return apply_tail(z.view(b, h * w, c, -1), ops, h, w)
    yw, vw = _windows(y, h, w, k), _windows(var, h, w, k)  # (B, H', k, W', k, CO)
    pw = _windows(pk.view(1, h * w), h, w, k)[0]  # (H', k, W', k)
    kb4 = kb.view(b, 1, 1, -1)

    def noisy(di: int, dj: int, z: Tensor) -> Tensor:
        v = yw[:, :, di, :, dj] + torch.sqrt(vw[:, :, di, :, dj].clamp_min(0.0)) * z
        return _flat_post(v, gain, offset, delta, lo, hi, slice_w, out_scale, bias, adc)

    z = _paired_max(noisy, lambda di, dj: kb4 + pw[:, di, :, dj].unsqueeze(-1), k)  # (B, H', W', c O)
    return _finish_tail(z, ops, c)


# operands led by the (sub-)batch: y, var and the mixed keys (of position 0, flat; of each image and chip, general)
register_kernel("flat", _flat_kernel, batch=(0, 1, 2))
register_kernel("general", _general_kernel, batch=(0, 1, 2))
register_kernel("flat_tail", _flat_tail_kernel, batch=(0, 1, 2))
register_kernel("general_tail", _general_tail_kernel, batch=(0, 1, 2))


def epilogue(compiled: bool) -> Callable[..., Tensor]:
    """The epilogue, compiled with ``torch.compile`` when asked and possible (else eager, with a warning)."""
    if not compiled or failed():
        return analog_epilogue
    raise_recompile_limit()
    return _safe


def _safe(y: Tensor, noise: ReadNoiseOperands | None, ops: EpilogueOperands, *, tail: TailSpec | None = None,
          hw: tuple[int, int] | None = None) -> Tensor:
    return compiled_or_eager(functools.partial(analog_epilogue, kernels=compiled_kernel), analog_epilogue, y, noise,
                             ops, tail=tail, hw=hw)
