"""The training pass of an analog layer: noise-injection training, where the forward pass sees a freshly
drawn chip's weights (and quantised inputs) and the backward pass the ideal weights (straight-through)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..circuits import get_adc, ste_round
from .context import TrainPass

if TYPE_CHECKING:
    from .crossbar import Crossbar
    from .layers import AnalogLayer


def train_read(layer: AnalogLayer, x: Tensor, ctx: TrainPass) -> Tensor:
    """The layer on training chip ``ctx.train_chip``: its DAC (or a learned input quantiser, ``act_quant``),
    a fresh chip's effective weights in the forward pass, the ideal weights' gradient in the backward pass;
    with ``ctx.adc``, each array tile's partial sum through the calibrated ADC."""
    if layer.layer_name in ctx.act_quant:
        step, bits, signed = ctx.act_quant[layer.layer_name]
        lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        x = torch.clamp(ste_round(x / step), lo, hi) * step  # learned step size (LSQ-style)
    elif layer.config.circuit.dac_bits and bool(layer.converters.dac_fs > 0):
        x = layer.converters.apply_dac(x)
    fresh_m, column_scale = fresh_chip(layer.crossbar, ctx.train_chip, ctx.censor)
    fresh = layer.from_matrix(fresh_m)
    w = layer.weight + (fresh - layer.weight).detach()
    if ctx.adc and layer.config.circuit.adc_bits and layer.n_slices == 1 and bool(layer.converters.adc_fs.any()):
        return tiles_through_adc(layer, x, w, column_scale.to(w))
    return layer.digital_with(x, w)


def tiles_through_adc(layer: AnalogLayer, x: Tensor, w: Tensor, col: Tensor) -> Tensor:
    """The layer as a chip reads it with weights ``w``: one product per array tile (the rows of tile t
    only), each digitised by the calibrated ADC in conductance units (``col``: (O,) weight units per
    conductance unit), summed digitally, plus the bias. The ADC's rounding passes gradients straight
    through, so training learns weights whose partial sums survive the converter. One cell per weight
    only (sliced weights would need a product per slice too)."""
    cc = layer.config.circuit
    adc = get_adc(cc.adc_key)
    lo, hi = adc.codes(cc.adc_bits)
    delta = adc.step(layer.converters.adc_fs, cc.adc_bits).to(w).expand(layer.row_tiles, layer.n_slices,
                                                                         layer.out_features)
    tiles = layer.row_tile_index().to(w.device)
    wm = layer.as_matrix(w)
    out: Tensor | None = None
    for t in range(layer.row_tiles):
        y = layer.digital_with(x, layer.from_matrix(wm * (tiles == t)))
        if layer.bias is not None:
            y = y - _per_column(layer, layer.bias, y)
        c = _per_column(layer, col, y)
        q = adc.quantize(y / c, _per_column(layer, delta[t, 0], y), lo, hi) * c
        out = q if out is None else out + q
    assert out is not None
    return out + _per_column(layer, layer.bias, out) if layer.bias is not None else out


def _per_column(layer: AnalogLayer, v: Tensor, y: Tensor) -> Tensor:
    """An (O,) vector shaped to broadcast over the output columns of a digital output ``y``: the last
    dimension (Linear) or dimension 1 (convolutions)."""
    if layer.channel_dim == -1:
        return v
    return v.view(-1, *([1] * (y.dim() - 2)))


@torch.no_grad()
def fresh_chip(xb: Crossbar, chip_id: int, censor: float = 0.0) -> tuple[Tensor, Tensor]:
    """Effective weight matrix (O, K) of a newly drawn chip ``chip_id`` of crossbar ``xb`` programmed with
    the current weights: levels, programming variation, faults, drift (and its compensation), IR drop; and
    the (O,) factor from conductance units to weight units of its columns (scale x drift compensation), which
    an ADC in conductance units needs. Training draws one per step: it maps the weights once and uses the
    fast generator (:func:`rng.draw_stream`) for its per-cell draws. The crossbar's own chips are untouched."""
    m = xb.mapped()
    written = xb.writer().write_all(m, torch.tensor([chip_id]), None, censor=censor, stream=True)
    g0, factor = written.g0, written.factor
    gt = {side: g0[side] * factor[side] if factor[side].numel() else g0[side] for side in g0}
    dev = xb.weights().device
    w, _ = xb.conductances(gt["pos"].to(dev), gt["neg"].to(dev))  # (1, S, O, K)
    comp = written.compensation.to(w)
    # decoded with the scale of *this* mapping: the programmed chips' scale (``xb.scale``) is that of the
    # weights when they were last programmed, and training moves the weights away from them
    column_scale = (m.scale.to(w).reshape(-1) * comp.reshape(-1)).expand(xb.geometry.out_features)
    return xb.decode(w, m.scale, m.slice_weights)[0] * comp, column_scale
