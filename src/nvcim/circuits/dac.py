"""The DAC interface: how a layer's digital inputs become row voltages (in input units).

A model is an object made from its config (``circuit.dac``) with a pure tensor function,
:meth:`DACModel.quantize`. A new DAC model is one file: its config class (subclassing
:class:`~nvcim.config.schema.DACConfig`, its name as the class constant ``model``, its own fields declared
with ``spec``) and a :class:`DACModel` subclass that names it as ``config_type``, decorated with
``@register`` and imported in ``circuits/__init__.py``; ``circuit.dac.model`` then selects it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from ..config.schema import DACConfig
from ..registry import Registry


class DACModel(ABC):
    name: ClassVar[str] = ""  # set on registration, from config_type
    config_type: ClassVar[type[DACConfig]]

    def __init__(self, config: DACConfig) -> None:
        self.config = config

    @abstractmethod
    def quantize(self, x: Tensor, full_scale: Tensor, bits: int, signed: bool) -> Tensor:
        """The analog value driven for inputs ``x`` at ``bits`` and full scale ``full_scale``; ``signed``
        when the layer's inputs take both signs. Gradients pass straight through."""


DAC_MODELS: Registry[DACModel] = Registry("circuit.dac.model")
register = DAC_MODELS.register


def get_dac(key: str) -> DACModel:
    """The DAC model of ``circuit.dac_key`` (a model's name, or its config's key)."""
    return DAC_MODELS.for_key(key)
