"""Peripheral circuits and array wires: DAC, ADC, IR drop."""

from .converters import adc, adc_codes, dac, ste_round
from .irdrop import attenuation, nodal_column_currents

__all__ = ["ste_round", "adc", "adc_codes", "attenuation", "dac", "nodal_column_currents"]
