"""The ADC interface: how a column's (noisy) analog signal becomes a digital code and back.

A model is an object made from its config (``circuit.adc``) with a pure tensor function,
:meth:`ADCModel.quantize`, which the fused per-read epilogue calls inside its loop (compiled or eager), so it
must use elementwise torch ops only. A new ADC model is one file: its config class (a frozen dataclass
subclassing :class:`~nvcim.config.schema.ADCConfig`, its name as the class constant ``model``, its own
fields declared with ``spec``) and an :class:`ADCModel` subclass that names it as ``config_type``, decorated
with ``@register`` and imported in ``circuits/__init__.py``; ``circuit.adc.model`` then selects it. The
compiled loops carry the config as :meth:`~nvcim.config.variants.Variant.key`, and :func:`get_adc` makes the
model from that key again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from ..config.schema import ADCConfig
from ..registry import Registry


class ADCModel(ABC):
    name: ClassVar[str] = ""  # set on registration, from config_type
    config_type: ClassVar[type[ADCConfig]]

    def __init__(self, config: ADCConfig) -> None:
        self.config = config

    def codes(self, bits: int) -> tuple[int, int]:
        """Lowest and highest output code of a ``bits``-bit converter (signed: 2^bits codes)."""
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def step(self, full_scale: Tensor, bits: int) -> Tensor:
        """The LSB for a full-scale range ``full_scale`` (signal units): full_scale / 2^(bits-1)."""
        return full_scale / 2 ** (bits - 1)

    def saturated(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        """Where signal ``y`` lies beyond the code range (a mid-tread converter: its code would round past
        ``hi`` or ``lo``); bound management reads those input vectors again."""
        v = y / delta
        return (v >= hi + 0.5) | (v <= lo - 0.5)

    @abstractmethod
    def quantize(self, y: Tensor, delta: Tensor, lo: int, hi: int) -> Tensor:
        """The reconstructed signal of ``y`` for LSB ``delta`` and codes ``[lo, hi]`` (broadcasting). When
        gradients flow it must pass them straight through (see :func:`~nvcim.circuits.converters.ste_round`)."""


ADC_MODELS: Registry[ADCModel] = Registry("circuit.adc.model")
register = ADC_MODELS.register


def get_adc(key: str) -> ADCModel:
    """The ADC model of ``circuit.adc_key`` (a model's name, or its config's key)."""
    return ADC_MODELS.for_key(key)
