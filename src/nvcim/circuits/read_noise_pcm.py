"""PCM read noise (1/f), IBM's statistical model (Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 11,
2473, 2020; aihwkit's PCMLikeNoiseModel): a read at time t after programming has std

    s_read = |G(t)| Q_s sqrt(ln((t + t_r) / (2 t_r))),  Q_s = min(0.0088 / max((G0 / g_max)^0.65, 1e-3), 0.2),

with G(t) the drifted conductance, G0 the programmed one (t0), t_r = 250 ns the read duration of the fit, and
``device.read_noise`` a scale (1: the fit). The noise grows with the time since programming: 1/f noise
integrates over a longer window. nvcim draws it fresh at every read (field guide); aihwkit draws it once
when it drifts the weights to t and keeps it for every read after (docs/benchmarks.md, "nvcim against
aihwkit").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .read_noise import ReadNoiseModel, register

if TYPE_CHECKING:
    from ..config.schema import DeviceConfig

T_R = 250e-9  # s, the read duration of the 1/f fit


def time_factor(t: float) -> float:
    """sqrt(ln((t + t_r) / (2 t_r))) for a read t seconds after programming (0 for t <= t_r)."""
    return math.sqrt(max(math.log((t + T_R) / (2 * T_R)), 0.0))


def read_std(g: Tensor, g0: Tensor, device: DeviceConfig, t: float) -> Tensor:
    """Std (S) of one read of cells at ``g`` (S, drifted) programmed to ``g0`` (S), ``t`` s after programming."""
    q = (0.0088 / torch.pow((g0 / device.g_max).abs(), 0.65).clamp_min(1e-3)).clamp_max(0.2)
    return device.read_noise * time_factor(t) * q * g.abs()


@register
class PCMReadNoise(ReadNoiseModel):
    name = "pcm"

    def pair_variance(self, pos: Tensor, neg: Tensor, device: DeviceConfig, pos0: Tensor | None = None,
                      neg0: Tensor | None = None, t: float | None = None) -> Tensor:
        t = device.drift.t_read if t is None else t
        sp = read_std(pos, pos if pos0 is None else pos0, device, t)
        sn = read_std(neg, neg if neg0 is None else neg0, device, t)
        return sp * sp + sn * sn

    def sample(self, g: Tensor, z: Tensor, device: DeviceConfig, g0: Tensor | None = None,
               t: float | None = None) -> Tensor:
        t = device.drift.t_read if t is None else t
        return g + read_std(g, g if g0 is None else g0, device, t) * z
