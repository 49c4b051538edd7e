"""The drift interface: how a cell's conductance decays between programming (t0) and the read (t_read).

Every model is a power law G(t_read) = G(t0) (t_read / t0)^-nu with a drift exponent nu per cell; a model says
how nu is drawn, from a standard normal ``z`` per cell and, for state-dependent drift, the cell's target
conductance. Adding a drift law is one file: a typed config class (a frozen dataclass subclassing
:class:`~nvcim.config.DriftConfig`, whose ``model`` constant is its name in files, with the law's own
fields) and a :class:`DriftModel` subclass that names it as ``config_type``, decorated with ``@register``.
Models run inside the compiled programming loop, so they use plain arithmetic (:mod:`nvcim.arith`) for exp
and log.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

from torch import Tensor

from .. import arith
from ..config.schema import DeviceConfig, DriftConfig, PowerLawDriftConfig
from ..registry import Registry


class DriftModel:
    name: ClassVar[str] = ""  # set on registration, from config_type
    config_type: ClassVar[type[DriftConfig]]

    def active(self, device: DeviceConfig) -> bool:
        """Whether cells drift at all with these settings (apart from t_read = t0, when none does)."""
        raise NotImplementedError

    def exponent(self, g_target: Tensor, z: Tensor, device: DeviceConfig) -> Tensor:
        """Drift exponent nu >= 0 of every cell, from its target conductance (S) and a standard normal."""
        raise NotImplementedError


DRIFT_MODELS: Registry[DriftModel] = Registry("device.drift.model")
register = DRIFT_MODELS.register


def has_drift(device: DeviceConfig) -> bool:
    """Whether cells drift before they are read (a drift factor per cell is drawn and stored)."""
    d = device.drift
    return d.t_read != d.t0 and DRIFT_MODELS.instance_for(d).active(device)


def drift_factor(g_target: Tensor, z_nu: Tensor, device: DeviceConfig) -> Tensor:
    """(t_read / t0)^-nu of every cell (no growth: nu >= 0), nu from the device's drift model."""
    d = device.drift
    nu = DRIFT_MODELS.instance_for(d).exponent(g_target, z_nu, device)
    # through arith.exp (the same bits compiled); log t_read - log t0 stays finite where the ratio itself
    # would overflow (t0 = 1e-320 s)
    return arith.exp(-nu * (math.log(d.t_read) - math.log(d.t0)))


@register
class PowerLawDrift(DriftModel):
    """nu ~ N(nu_mean, nu_std) per cell, clipped at 0: the same law for every state (field guide, drift)."""

    config_type = PowerLawDriftConfig  # defined with the config tree: it is the default

    def active(self, device: DeviceConfig) -> bool:
        d = cast(PowerLawDriftConfig, device.drift)
        return d.nu_mean > 0 or d.nu_std > 0

    def exponent(self, g_target: Tensor, z: Tensor, device: DeviceConfig) -> Tensor:
        d = cast(PowerLawDriftConfig, device.drift)
        return (d.nu_mean + d.nu_std * z).clamp_min(0.0)
