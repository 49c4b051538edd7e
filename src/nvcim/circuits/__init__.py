"""Peripheral circuits and array wires: one interface per converter axis (ADC, DAC, read noise) with its
models, each in its own file, and the IR-drop model of the wires."""

from . import (  # noqa: F401  (registration)
    adc_midrise,
    adc_symmetric,
    adc_uniform,
    dac_symmetric,
    dac_uniform,
    read_noise_additive,
    read_noise_pcm,
    read_noise_proportional,
)
from .adc import ADC_MODELS, ADCModel, get_adc
from .adc_midrise import MidriseADCConfig
from .adc_symmetric import SymmetricADCConfig
from .converters import dac, ste_round
from .dac import DAC_MODELS, DACModel, get_dac
from .dac_symmetric import SymmetricDACConfig
from .irdrop import IR_SOLVERS, attenuation, exact_transfer, nodal_column_currents, transfer
from .read_noise import READ_NOISE_MODELS, ReadNoiseModel, get_read_noise

__all__ = ["ADC_MODELS", "ADCModel", "DAC_MODELS", "DACModel", "IR_SOLVERS", "MidriseADCConfig", "READ_NOISE_MODELS",
           "ReadNoiseModel", "SymmetricADCConfig", "SymmetricDACConfig",
           "attenuation", "dac", "exact_transfer", "get_adc", "get_dac", "get_read_noise", "nodal_column_currents",
           "ste_round", "transfer"]
