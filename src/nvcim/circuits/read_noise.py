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

from torch import Tensor

from .registry import Registry


class ReadNoiseModel(ABC):
    name = ""

    @abstractmethod
    def pair_variance(self, pos: Tensor, neg: Tensor, sigma: float, g_max: float) -> Tensor:
        """var(G+) + var(G-) of every cell pair (S^2), the same shape as ``pos``/``neg`` (S)."""

    @abstractmethod
    def sample(self, g: Tensor, z: Tensor, sigma: float, g_max: float) -> Tensor:
        """One noisy read of conductances ``g`` (S) from standard normals ``z``."""


READ_NOISE_MODELS: Registry[ReadNoiseModel] = Registry("device.read_noise_model")
register = READ_NOISE_MODELS.register


def get_read_noise(name: str) -> ReadNoiseModel:
    return READ_NOISE_MODELS.get(name)
