"""Which modules become analog, and which matrix products stay digital and why.

Each analog layer kind registers the module type it replaces (:func:`register`); ``convert`` asks
:func:`converter_for` and nothing else, so adding a layer kind is one file and one decorator. Module
kinds that do hold matrix products but have no analog layer yet are listed with the reason
(:func:`leave_digital`): ``convert`` names them in its report and does not look inside them, so that
their parts (``nn.MultiheadAttention.out_proj``, whose weight the attention reads directly) are never
converted into layers that would not run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Converter = Callable[..., nn.Module]  # called as (module, config, qualified name)
C = TypeVar("C", bound=Converter)

class Unsupported(Exception):
    """Raised by a converter for a module it cannot hold (an option it does not model): ``convert`` leaves
    that module digital and names it, with this message, in its report."""


_CONVERTERS: dict[type[nn.Module], Converter] = {}
_DIGITAL: dict[type[nn.Module], str] = {}


def register(kind: type[nn.Module]) -> Callable[[C], C]:
    """Class decorator: the decorated analog layer (called as ``cls(module, config, name)``) replaces
    modules of type ``kind`` and its subclasses."""
    def deco(conv: C) -> C:
        _CONVERTERS[kind] = conv
        _DIGITAL.pop(kind, None)
        return conv
    return deco


def leave_digital(kind: type[nn.Module], reason: str) -> None:
    """Declare that modules of ``kind`` hold matrix products that stay digital, for ``reason``."""
    if kind not in _CONVERTERS:
        _DIGITAL[kind] = reason


def _lookup(table: dict, module: nn.Module):  # type: ignore[no-untyped-def]
    for cls in type(module).__mro__:  # the most specific registered type wins
        if cls in table:
            return table[cls]
    return None


def converter_for(module: nn.Module) -> Converter | None:
    """The analog layer that replaces ``module``, or None."""
    return _lookup(_CONVERTERS, module)


def digital_reason(module: nn.Module) -> str | None:
    """Why ``module``'s matrix products stay digital, or None when it is not such a module."""
    return _lookup(_DIGITAL, module)


_NOT_YET = "no analog layer for it yet: it runs digitally"
leave_digital(nn.Conv3d, _NOT_YET)
leave_digital(nn.ConvTranspose1d, _NOT_YET)
leave_digital(nn.ConvTranspose3d, _NOT_YET)
leave_digital(nn.Bilinear, _NOT_YET)
