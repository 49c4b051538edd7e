"""nvcim: deploy PyTorch models on simulated non-volatile compute-in-memory chips, thousands at once.

Quick use::

    import nvcim
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.programming.sigma": 0.2})
    chip_model = nvcim.convert(model, cfg, chips=1000, seed=0)   # outputs (chips, B, ...)
    result = nvcim.evaluate(chip_model, (x_test, y_test))
"""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

# One-line notices (for example "compiling the chip kernels") go to stderr unless the user has set up the
# "nvcim" logger; silence them with logging.getLogger("nvcim").setLevel(logging.WARNING).
_log = _logging.getLogger("nvcim")
if not _log.handlers:
    _handler = _logging.StreamHandler()
    _handler.setFormatter(_logging.Formatter("nvcim: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(_logging.INFO)
    _log.propagate = False

from . import methods  # noqa: E402  (nvcim.methods.get)
from .chip import AnalogModel, Runtime, convert  # noqa: E402
from .config import ChipConfig, dumps, load_config, override, preset, preset_names, save_config  # noqa: E402
from .errors import ConfigError, ConversionError, DatasetError, NvcimError, ShapeError  # noqa: E402
from .evaluation import EvalResult, evaluate  # noqa: E402

__all__ = [
    "AnalogModel", "ChipConfig", "ConfigError", "ConversionError", "DatasetError", "EvalResult", "NvcimError",
    "Runtime", "ShapeError", "convert", "dumps", "evaluate", "load_config", "override", "preset",
    "methods", "preset_names", "save_config",
]
