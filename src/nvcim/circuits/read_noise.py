"""The read-noise interface: the cycle-to-cycle noise of a cell's current, drawn fresh at every read.

The simulator needs two things of a model: the variance of a differential pair's (or a cell against its
reference column's) current per unit input squared, which it propagates through the matrix product
exactly (var(sum_k x_k dI_k) = sum_k x_k^2 var(dI_k)), and a noisy read-back of single cells for the chip
interface. ``sigma`` is ``device.read_noise``; its meaning (a fraction of G or of g_max) is the model's.
A new model is one file: subclass :class:`ReadNoiseModel`, set ``name``, decorate with ``@register``, import
it in ``circuits/__init__.py``; ``device.read_noise_model`` then selects it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from torch import Tensor

from ..registry import Registry

if TYPE_CHECKING:
    from ..config.schema import DeviceConfig


class ReadNoiseModel(ABC):
    name = ""

    @abstractmethod
    def pair_variance(self, pos: Tensor, neg: Tensor, device: DeviceConfig, pos0: Tensor | None = None,
                      neg0: Tensor | None = None, t: float | None = None) -> Tensor:
        """var(G+) + var(G-) of every cell pair (S^2), the same shape as ``pos``/``neg`` (S, as read: after
        drift). ``pos0``/``neg0``: the same cells' conductances when programmed (t0; None: as read), ``t``:
        seconds since programming (None: ``device.drift.t_read``), for models whose noise depends on them."""

    @abstractmethod
    def sample(self, g: Tensor, z: Tensor, device: DeviceConfig, g0: Tensor | None = None,
               t: float | None = None) -> Tensor:
        """One noisy read of conductances ``g`` (S) from standard normals ``z`` (``g0``, ``t`` as above)."""


READ_NOISE_MODELS: Registry[ReadNoiseModel] = Registry("device.read_noise_model")
register = READ_NOISE_MODELS.register


def get_read_noise(name: str) -> ReadNoiseModel:
    return READ_NOISE_MODELS.instance(name)
