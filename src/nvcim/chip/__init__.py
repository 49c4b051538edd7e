"""Simulated chips: analog layers, counter-based randomness, model conversion."""

from . import attention, conv1d, conv_transpose, recurrent, transposed_linear  # noqa: F401  (they register their module kinds)
from .conv2d import AnalogConv2d
from .conversion import ConversionReport, convert, resolve_config
from .layers import AnalogLayer
from .linear import AnalogLinear
from .model import AnalogModel, Runtime

__all__ = ["AnalogConv2d", "AnalogLayer", "AnalogLinear", "AnalogModel", "ConversionReport", "Runtime", "convert",
           "resolve_config"]

from .interface import Chip, Verified  # noqa: E402
from .simulated import SimulatedChip  # noqa: E402

__all__ += ["Chip", "SimulatedChip", "Verified"]
