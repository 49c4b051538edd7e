"""Self-tuning at inference (after Deng & Orshansky, DATE 2022; the algorithm is our design).

On each chip, layer by layer in forward order, an affine correction y -> a y + b of every output channel
(or of the whole layer) is chosen so that the chip's pre-activation mean and std on a few unlabelled
inputs match the ideal model's. It is written into the layer's digital output registers. No label is
read, no cell is re-programmed. Where the model has BatchNorm after the layer, this re-estimates what BN
re-statistics would (BN in eval mode is itself an affine map per channel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..chip.interface import Chip
from ..errors import NvcimError
from .base import Cost, Method, TaskData, register


def _channel_stats(y: Tensor, lead: int, conv: bool, per_channel: bool) -> tuple[Tensor, Tensor]:
    """Mean and std of layer outputs over images and positions, per output channel or for the layer.

    ``y`` has ``lead`` leading dims (chips) before the batch; conv outputs are (B, O, H, W), linear ones
    (B, ..., O).
    """
    if conv:
        y = y.movedim(lead + 1, -1)
    y = y.reshape(*y.shape[:lead], -1, y.shape[-1])
    if not per_channel:
        y = y.reshape(*y.shape[:lead], -1)
        return y.mean(-1), y.std(-1)
    return y.mean(-2), y.std(-2)


@register
class SelfTune(Method):
    """Per-chip affine re-calibration of each layer from unlabelled inputs; no labels, no re-programming.

    Options: ``samples`` unlabelled inputs per chip, ``granularity`` 'channel' or 'layer', ``target``
    'ideal' (the ideal model's statistics) or 'chips' (the mean over the chips of their own statistics: for
    a model trained with noise injection, whose BatchNorm statistics are those of an average noisy chip,
    not of the noise-free model; this removes each chip's own deviation only).
    """

    name = "self-tune"
    needs_labels = False  # type: ignore[assignment]  # unlabelled inputs (and the ideal model) only

    def __init__(self, samples: int = 256, granularity: str = "channel", target: str = "ideal") -> None:
        if samples < 2:
            raise NvcimError(f"self-tune.samples = {samples} is invalid: allowed >= 2")
        if granularity not in ("channel", "layer"):
            raise NvcimError(f"self-tune.granularity = {granularity!r} is invalid: allowed 'channel', 'layer'")
        if target not in ("ideal", "chips"):
            raise NvcimError(f"self-tune.target = {target!r} is invalid: allowed 'ideal', 'chips'")
        self.samples, self.per_channel, self.target = samples, granularity == "channel", target

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        x = data.inputs(self.samples)
        ideal = {n: out for n, (_, out) in chip.reference_layer_io(x).items()} if self.target == "ideal" else {}
        for name in chip.layer_names():
            with torch.no_grad():
                _, got = chip.infer(x, capture=[name])
            conv = got[name].dim() == 5  # (N, B, O, H, W)
            mu_c, sd_c = _channel_stats(got[name], 1, conv, self.per_channel)  # (N, O) or (N,)
            if self.target == "chips":  # the average chip, as this layer's earlier layers now leave it
                mu_i, sd_i = mu_c.mean(0), sd_c.mean(0)
            else:
                mu_i, sd_i = _channel_stats(ideal[name], 0, conv, self.per_channel)
            live = sd_i > 1e-6 * sd_i.abs().max().clamp_min(1e-30)
            a = torch.where(live & (sd_c > 1e-12), sd_i / sd_c.clamp_min(1e-12), torch.ones_like(sd_c))
            a = a.clamp(0.1, 10.0)
            b = mu_i - a * mu_c
            g0, b0 = chip.output_affine(name)
            if not self.per_channel:
                a, b = a.unsqueeze(-1), b.unsqueeze(-1)
            chip.set_output_affine(name, (a * g0), (a * b0 + b))
        return Cost(calibration_samples=int(x.shape[0]),
                    notes=[f"self-tune ({'per channel' if self.per_channel else 'per layer'}, to the "
                           f"{'ideal model' if self.target == 'ideal' else 'mean chip'}), no labels"])
