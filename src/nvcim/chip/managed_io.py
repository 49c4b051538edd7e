"""Reads with per-input-vector I/O management, as aihwkit's analog tiles do them (Rasch et al., Nat. Commun.
14, 5282, 2023; rpucuda's ``forwardVector``): dynamic input scaling ("noise management"), additive output
noise and iterative bound management. The layer's circuit config selects this path
(:attr:`~nvcim.config.schema.CircuitConfig.managed_io`); the default path (:mod:`.kernel`) does none of it.

For each input vector x of a row tile (one image, one output position, one group of a convolution):

1. scale: alpha = max|x| over the tile's rows (``input_scaling = 'absmax'``), or the layer's calibrated DAC
   full scale (``'calibrated'``), times f = 1, 2, 4, ... (bound management's rounds);
2. DAC: x / (alpha f) quantised at full scale 1;
3. the product with the chip's conductances, plus read noise (the device's model) and output noise
   N(0, (out_noise x ADC full scale)^2), both drawn fresh for every read and round;
4. ADC (gain and offset errors, the converter model); with bound management, when any output of the tile
   (a row tile x column tile array) saturates, the vector is read again at 2 f, until nothing saturates or
   the inputs keep two bits of resolution (f > (2^dac_bits - 2) / 8; aihwkit's ``max_bm_res`` = 0.25), or
   f > 1000 with an ideal DAC;
5. the digital periphery multiplies the ADC output by alpha f, adds the row tiles and slices, and applies the
   column scale, registers and bias.

Signals are in conductance x normalised-input units, so the ADC range (``adc_range_cells``, ``adc_range``
or calibration) is relative to a full-scale input of 1. The draws depend on (chip, image, element, round)
only, so results do not depend on batch or chunk size. This path runs eager, one product per round: it is
slower than the fused default path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..circuits import get_adc, get_dac
from . import rng
from .compiling import register_kernel, run_kernel
from .context import ChipPass, EpilogueOperands, Pass, col_padded, row_padded
from .kernel import _shift_add

if TYPE_CHECKING:
    from .layers import AnalogLayer


def max_rounds(dac_bits: int) -> int:
    """Reads of one vector at most under bound management: f doubles from 1 until f exceeds
    (2^b - 2) / 8 (two bits of input resolution left), or 1000 with an ideal DAC (aihwkit's max_bm_factor)."""
    limit = min(1000.0, (2**dac_bits - 2) / 8) if dac_bits else 1000.0
    return max(1, math.floor(math.log2(max(limit, 1.0))) + 2) if limit >= 1 else 1


def read(layer: AnalogLayer, x: Tensor, shared: bool, c: int, ops: EpilogueOperands, cache_of: Pass,
         chip: ChipPass | None) -> tuple[Tensor, Tensor | None]:
    """One managed read of input ``x`` on ``chip``'s chips (None: a calibration read of the noise-free
    targets): the layer output (B, L, c, O) before the per-chip additive registers, and in a calibration
    read the noise-free tile signals (B, L, 1, T, S, O) of the first round (what the ADC range is
    calibrated on). ``cache_of``: the pass whose cache holds the block's weights.

    Bound management's later rounds read only the positions (image, output position) that some chip or
    tile still has pending, gathered; a draw's key is that of its (image, position, element), so the result
    is the same as reading everything again."""
    cc = layer.config.circuit
    rows = layer.tile_input(x, 1 if shared else c)  # (B, c', L, g, T, R)
    b, cp, n_l, g, t, _ = rows.shape
    if cc.input_scaling == "absmax":
        alpha = layer.tile_absmax(x, rows, cp)  # (B, c', L, g, T, 1)
    else:
        fs = layer.converters.dac_fs if bool(layer.converters.dac_fs > 0) else torch.ones((), device=rows.device)
        alpha = fs.to(rows).expand(b, cp, n_l, g, t, 1)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))  # an all-zero vector reads as zero anyway
    w, wv = _weights(layer, cache_of, chip)  # (c, S, g, og, T, R)
    s, og = w.shape[1], w.shape[3]
    o = g * og
    inner = t * s * o
    calibrating = chip is None
    compiled = chip is not None and chip.compiled and not torch.is_grad_enabled()
    keys = _noise_keys(layer, chip) if chip is not None else None  # (B, c)
    sigma2 = None
    if cc.out_noise and not calibrating:
        sigma2 = (cc.out_noise * layer.adc_full_scale().to(rows)) ** 2  # (T, S, O)
    rounds = max_rounds(cc.dac_bits) if cc.bound_management and not calibrating else 1
    eoff = _element_offsets(inner, rows.device)

    def per_chip(v: Tensor) -> Tensor:
        """(T, S, O) -> (1, 1, c, T, S, O), contiguous: every small operand of the per-element loop then
        varies over the (chip, tile, output) block the way the outputs do, which inductor merges into one
        vectorised inner loop (with the O outputs alone innermost, 6 for LeNet-5's first convolution, the
        loop ran 3.7x slower)."""
        return v.expand(w.shape[0], *v.shape).contiguous().unsqueeze(0).unsqueeze(0)

    delta = None if ops.delta is None else per_chip(ops.delta)

    def one_round(j: int, r: Tensor, a: Tensor, bkeys: Tensor | None, loff: Tensor) -> tuple[Tensor, Tensor,
                                                                                              Tensor]:
        f = float(2**j)
        xn = _dac(layer, r, a * f, compiled)
        y = _product(xn, w, shared)  # (N, L, c, T, S, O)
        var = None
        if keys is not None and (wv is not None or sigma2 is not None):
            if wv is None:  # output noise only: its variance per output, broadcast (not a full tensor)
                var = per_chip(sigma2).expand(y.shape[0], 1, -1, -1, -1, -1)  # type: ignore[arg-type]
            else:
                var = _product(xn * xn, wv, shared)
                if sigma2 is not None:  # independent Gaussians add: one draw of the summed variance
                    var = var + sigma2
        kc = None
        if bkeys is not None and var is not None:  # (N, 1, c inner): chip, image and element; + position
            rk = rng.mix(bkeys ^ rng._s32(rng.key("managed", j)))
            kc = (rk.view(rk.shape[0], 1, -1, 1) + eoff.view(1, 1, 1, -1)).view(rk.shape[0], 1, -1)
        q, sat = run_kernel("managed", (cc.adc_key,), compiled, y, var, kc, loff, ops.gain, ops.offset,
                            delta, ops.lo, ops.hi, _per_output(a * f, og))
        return q, sat, y

    out, sat, first = one_round(0, rows, alpha, keys, _index(n_l, inner, rows.device).view(1, n_l))
    if rounds > 1:
        pending = _per_array(sat, layer.config.array.cols)  # (B, L, c, T, 1, O): saturated, read again
        for j in range(1, rounds):
            where = pending.flatten(2).any(-1).nonzero()  # (P, 2) pending (image, position)
            if not where.numel():
                break
            bi, li = where[:, 0], where[:, 1]
            sub_keys = None if keys is None else keys[bi]
            q, sat, _ = one_round(j, rows[bi, :, li].unsqueeze(2), alpha[bi, :, li].unsqueeze(2), sub_keys,
                                  (li.to(torch.int32) * rng._s32(inner * rng._GOLD)).view(-1, 1))
            pend = pending[bi, li].unsqueeze(1)  # (P, 1, c, T, 1, O)
            take = pend if j == rounds - 1 else pend & ~_per_array(sat, layer.config.array.cols)
            out[bi, li] = torch.where(take, q, out[bi, li].unsqueeze(1)).squeeze(1)
            pending[bi, li] = (pend & ~take).squeeze(1)
    y = _shift_add(out, ops.slice_w) * ops.scale + ops.bias  # (B, L, c, O)
    return y, first if calibrating else None


def _dac(layer: AnalogLayer, r: Tensor, scale: Tensor, compiled: bool) -> Tensor:
    """The DAC on the inputs ``r`` normalised by ``scale`` (full scale 1), one pass when compiled."""
    cc = layer.config.circuit
    return run_kernel("managed_dac", (cc.dac_key, cc.dac_bits, bool(layer.converters.dac_signed)), compiled,
                      r, scale)


def managed_dac_kernel(r: Tensor, scale: Tensor, model: str, bits: int, signed: bool) -> Tensor:
    """``r / scale`` through DAC ``model`` at full scale 1 (``bits`` = 0: ideal)."""
    xn = r / scale
    if not bits:
        return xn
    return get_dac(model).quantize(xn, torch.ones((), device=xn.device, dtype=xn.dtype), bits, signed)


register_kernel("managed_dac", managed_dac_kernel, batch=(0, 1))


def managed_kernel(y: Tensor, var: Tensor | None, keys: Tensor | None, loff: Tensor, gain: Tensor | None,
                   offset: Tensor | None, delta: Tensor | None, lo: int, hi: int, back: Tensor,
                   adc: str) -> tuple[Tensor, Tensor]:
    """The per-element part of a round, one loop when compiled: noise of variance ``var`` (N, L, c, T, S, O)
    drawn from keys ``keys`` (N, 1, c T S O: chip, image and element) + ``loff`` (N or 1, L: position), ADC
    errors and the ADC, and the factor ``back`` (alpha f) that undoes the input scaling. Returns that
    output and where the ADC saturated."""
    if var is not None and keys is not None:
        n_l = y.shape[1]
        k = keys + loff.view(loff.shape[0], n_l, 1)  # int32, wrapping: the same keys in any order of sums
        y = y + torch.sqrt(var.clamp_min(0.0)) * rng.normal_pair(k)[0].view(y.shape)
    if gain is not None and offset is not None:
        y = y * gain + offset
    if delta is None:
        return y * back, torch.zeros((), dtype=torch.bool, device=y.device).expand(y.shape)
    model = get_adc(adc)
    return model.quantize(y, delta, lo, hi) * back, model.saturated(y, delta, lo, hi)


register_kernel("managed", managed_kernel, batch=(0, 1, 2, 3))


def _weights(layer: AnalogLayer, cache_of: Pass, chip: ChipPass | None) -> tuple[Tensor, Tensor | None]:
    """Conductance differences and read-noise variances of ``chip``'s chips (None: the noise-free targets),
    (c, S, g, og, T, R) each, once per chip block."""
    key = (id(layer), "managed")
    if key not in cache_of.cache:
        if chip is not None:
            w, wv = layer.crossbar.read(chip.chips)
        else:
            w, wv = layer.crossbar.conductances(*layer.crossbar.nominal())
        g = int(getattr(layer, "groups", 1))

        def tiles(v: Tensor) -> Tensor:
            v = layer.geometry.to_tile_rows(v)  # (c, S, O, T, R)
            return v.view(v.shape[0], v.shape[1], g, -1, *v.shape[-2:])

        cache_of.cache[key] = (tiles(w), None if wv is None else tiles(wv))
    return cache_of.cache[key]


def _product(xn: Tensor, w: Tensor, shared: bool) -> Tensor:
    """Tile outputs (B, L, c, T, S, O) of rows (B, c', L, g, T, R) and weights (c, S, g, og, T, R): one
    batched product per array, its rows and columns padded to whole GEMM blocks so that an image's outputs
    do not depend on the other images in the call (see :func:`~nvcim.chip.context.row_padded`)."""
    b, cp, n_l, g, t, r = xn.shape
    c, s, _, og = w.shape[:4]
    if shared:
        xm = xn[:, 0].permute(2, 3, 0, 1, 4).reshape(g * t, b * n_l, r)
        wm = w.permute(2, 4, 5, 0, 1, 3).reshape(g * t, r, c * s * og)
    else:
        xm = xn.permute(1, 3, 4, 0, 2, 5).reshape(c * g * t, b * n_l, r)
        wm = w.permute(0, 2, 4, 5, 1, 3).reshape(c * g * t, r, s * og)
    y = torch.bmm(row_padded(xm), col_padded(wm))[:, : b * n_l, : wm.shape[-1]]
    if shared:
        y = y.view(g, t, b, n_l, c, s, og).permute(2, 3, 4, 1, 5, 0, 6)
    else:
        y = y.view(c, g, t, b, n_l, s, og).permute(3, 4, 0, 2, 5, 1, 6)
    return y.reshape(b, n_l, c, t, s, g * og)


def _per_output(v: Tensor, og: int) -> Tensor:
    """A per-vector factor (B, c', L, g, T, 1) laid out against the tile outputs (B, L, c'', T, 1, O), or
    (B, L, c', T, 1, 1) for one group (constant over the outputs: no copy per output)."""
    b, cp, n_l, g, t, _ = v.shape
    if g == 1:
        return v.permute(0, 2, 1, 4, 3, 5).reshape(b, n_l, cp, t, 1, 1)
    v = v.permute(0, 2, 1, 4, 3, 5).reshape(b, n_l, cp, t, 1, g, 1).expand(-1, -1, -1, -1, -1, -1, og)
    return v.reshape(b, n_l, cp, t, 1, g * og)


def _per_array(sat: Tensor, cols: int) -> Tensor:
    """Saturation (N, L, c, T, S, O) -> whether any output of the same array (row tile x column tile, all
    slices) saturated: (N, L, c, T, 1, 1) for one column tile, else broadcast back to (N, L, c, T, 1, O)."""
    o = sat.shape[-1]
    n_ct = -(-o // cols)
    if n_ct == 1:
        return sat.flatten(-2).any(-1)[..., None, None]
    s = sat.any(dim=4)
    s = torch.nn.functional.pad(s, (0, n_ct * cols - o)).view(*s.shape[:-1], n_ct, cols).any(-1)
    return s.repeat_interleave(cols, dim=-1)[..., :o].unsqueeze(4)


def _noise_keys(layer: AnalogLayer, ctx: ChipPass) -> Tensor:
    """(B, c) keys of this read (chip and image, as the default path's read noise)."""
    ck, ik = layer.read_keys(ctx)
    return rng.read_keys(ck, ik)


def _index(n: int, step: int, device: torch.device) -> Tensor:
    """(n,) int32 key offsets i * step * golden (wrapping)."""
    return torch.arange(n, dtype=torch.int32, device=device) * rng._s32(step * rng._GOLD)


def _element_offsets(n: int, device: torch.device) -> Tensor:
    return _index(n, 1, device)
