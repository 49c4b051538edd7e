"""IBM's PCM statistical model: programming noise and drift (Nandakumar et al., ICECS 2019; Joshi et al.,
Nat. Commun. 11, 2473, 2020; fitted on a million PCM devices, and the model of aihwkit's PCMLikeNoiseModel).
Its read noise lives with the other read-noise models (:mod:`nvcim.circuits.read_noise_pcm`).

With g_T the target conductance normalised to g_max (the fit was made at g_max = 25 uS and scales with it):

- programming, once per chip: G = G_T + N(0, s_prog^2), s_prog = (-1.1731 g_T^2 + 1.9650 g_T + 0.26348) uS x
  g_max / 25 uS, clipped at 0 (a conductance is not negative); ``device.programming.sigma`` scales s_prog (1:
  the fit);
- drift: nu = |mu_nu + s_nu z| per cell, mu_nu = clip(-0.0155 ln g_T + 0.0244, 0.049, 0.1), s_nu =
  clip(-0.0125 ln g_T - 0.0059, 0.008, 0.045), g_T clipped below at 1e-7 (aihwkit's absolute value of the
  draw, where the field guide writes N(mu, s); they differ only for draws beyond about 2 sigma below the
  mean, where nu would be negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .. import arith
from ..config.fields import spec
from ..config.schema import DeviceConfig, DriftConfig, ProgrammingConfig
from .base import ProgrammingModel, register
from .drift import DriftModel
from .drift import register as register_drift

G_REF = 25e-6  # S: the g_max at which the programming-noise polynomial (in uS) was fitted
PROG_COEFF = (0.26348, 1.9650, -1.1731)  # uS at G_REF: c0 + c1 g_T + c2 g_T^2
ZERO_CLIP = 1e-7  # smallest normalised target in the drift fit's logarithms (as aihwkit)


def programming_sigma(g_target: Tensor, g_max: float) -> Tensor:
    """Std (S) of one PCM write to ``g_target`` (S) on a device whose range ends at ``g_max`` (S)."""
    g = g_target / g_max
    c0, c1, c2 = PROG_COEFF
    return (c0 + g * (c1 + g * c2)).clamp_min(0.0) * (1e-6 * g_max / G_REF)


def drift_mean_std(g_target: Tensor, g_max: float) -> tuple[Tensor, Tensor]:
    """(mu_nu, s_nu) of cells programmed to ``g_target`` (S)."""
    ln = arith.log_unit((g_target.abs() / g_max).clamp(ZERO_CLIP, 1.0))
    return (-0.0155 * ln + 0.0244).clamp(0.049, 0.1), (-0.0125 * ln - 0.0059).clamp(0.008, 0.045)


@dataclass(frozen=True)
class PCMProgrammingConfig(ProgrammingConfig):
    """``device.programming.model = "pcm"``: the fitted, state-dependent write noise."""

    model: ClassVar[str] = "pcm"
    sigma: float = spec(0.0, "scale of the fitted, state-dependent std (1 = Nandakumar et al.'s fit)", unit="-",
                        lo=0.0, hi=10.0)


@dataclass(frozen=True)
class PCMDriftConfig(DriftConfig):
    """``device.drift.model = "pcm"``: mean and std of nu from the target conductance (Joshi et al. 2020)."""

    model: ClassVar[str] = "pcm"


@register
class PCMProgramming(ProgrammingModel):
    config_type = PCMProgrammingConfig
    config: PCMProgrammingConfig

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        d = self.device
        noise = self.config.sigma * z_cell + self.variability.between_sigma * z_chip
        return (target + programming_sigma(target, d.g_max) * noise).clamp_min(0.0)


@register_drift
class PCMDrift(DriftModel):
    config_type = PCMDriftConfig

    def active(self, device: DeviceConfig) -> bool:
        return True

    def exponent(self, g_target: Tensor, z: Tensor, device: DeviceConfig) -> Tensor:
        mu, s = drift_mean_std(g_target, device.g_max)
        return (mu + s * z).abs()
