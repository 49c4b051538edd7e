"""Exceptions that nvcim raises on purpose.

Every error a user can cause derives from :class:`NvcimError`; the command line prints its message
without a traceback. :class:`ConfigError` names the offending field by its dotted path, the value and
the allowed range.
"""

from __future__ import annotations

from typing import Any


class NvcimError(Exception):
    """Base class for errors caused by user input (config, model, data)."""


class ConfigError(NvcimError, ValueError):
    """A config field has a bad value. ``path`` is the dotted field path, e.g. ``device.g_min``."""

    def __init__(self, path: str, value: Any, allowed: str, hint: str = "") -> None:
        self.path, self.value, self.allowed, self.hint = path, value, allowed, hint
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.path} = {self.value!r} is invalid: allowed {self.allowed}"
        return f"{msg}. {self.hint}" if self.hint else msg

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` put in front of the field path."""
        return ConfigError(f"{prefix}.{self.path}" if prefix else self.path, self.value, self.allowed, self.hint)


class ConversionError(NvcimError):
    """A model cannot be put on a chip (nothing to convert, unsupported layer, ...)."""


class ShapeError(NvcimError, ValueError):
    """An input tensor does not have the shape a layer or model expects."""


class DatasetError(NvcimError):
    """A dataset is missing, truncated or corrupt."""
