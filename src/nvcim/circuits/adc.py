"""The ADC interface: how a column's (noisy) analog signal becomes a digital code and back.

A model is a stateless object with a pure tensor function, :meth:`ADCModel.quantize`, which the fused
per-read epilogue calls inside its loop (compiled or eager), so it must use elementwise torch ops only.
A new ADC model is one file: subclass :class:`ADCModel`, set ``name``, decorate with ``@register`` and import
it in ``circuits/__init__.py``; ``circuit.adc_model`` then selects it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from ..registry import Registry


class ADCModel(ABC):
    name = ""

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


ADC_MODELS: Registry[ADCModel] = Registry("circuit.adc_model")
register = ADC_MODELS.register


def get_adc(name: str) -> ADCModel:
    return ADC_MODELS.instance(name)
