"""The DAC interface: how a layer's digital inputs become row voltages (in input units).

A model is a stateless object with a pure tensor function, :meth:`DACModel.quantize`. A new DAC model is
one file: subclass :class:`DACModel`, set ``name``, decorate with ``@register`` and import it in
``circuits/__init__.py``; ``circuit.dac_model`` then selects it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from ..registry import Registry


class DACModel(ABC):
    name = ""

    @abstractmethod
    def quantize(self, x: Tensor, full_scale: Tensor, bits: int, signed: bool) -> Tensor:
        """The analog value driven for inputs ``x`` at ``bits`` and full scale ``full_scale``; ``signed``
        when the layer's inputs take both signs. Gradients pass straight through."""


DAC_MODELS: Registry[DACModel] = Registry("circuit.dac_model")
register = DAC_MODELS.register


def get_dac(name: str) -> DACModel:
    return DAC_MODELS.instance(name)
