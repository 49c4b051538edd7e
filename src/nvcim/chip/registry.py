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
Matcher = Callable[[nn.Module], bool]

class Unsupported(Exception):
    """Raised by a converter for a module it cannot hold (an option it does not model): ``convert`` leaves
    that module digital and names it, with this message, in its report."""


_CONVERTERS: dict[type[nn.Module], Converter] = {}
_DIGITAL: dict[type[nn.Module], str] = {}
_MATCHERS: list[tuple[Matcher, Converter]] = []  # modules recognised by their structure, not their type
_NOT_MATRIX: dict[type[nn.Module], str] = {}  # kinds whose 2-D+ parameters are not matrix-product weights


def register(kind: type[nn.Module]) -> Callable[[C], C]:
    """Class decorator: the decorated analog layer (called as ``cls(module, config, name)``) replaces
    modules of type ``kind`` and its subclasses."""
    def deco(conv: C) -> C:
        _CONVERTERS[kind] = conv
        _DIGITAL.pop(kind, None)
        return conv
    return deco


def register_structural(matches: Matcher) -> Callable[[C], C]:
    """Class decorator: the decorated analog layer replaces every module for which ``matches(module)`` is
    true. For module kinds of packages that nvcim does not depend on (GPT-2's ``Conv1D`` in
    ``transformers``): they are recognised by their attributes, without importing the package. A type
    registered with :func:`register` wins over a structural match."""
    def deco(conv: C) -> C:
        _MATCHERS.append((matches, conv))
        return conv
    return deco


def not_a_matrix(kind: type[nn.Module], what: str) -> None:
    """Declare that the parameters of modules of ``kind`` (and its subclasses) are not weights of a matrix
    product (``what``: a lookup table, a normalisation's scale): the conversion report does not count them."""
    _NOT_MATRIX[kind] = what


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
    conv = _lookup(_CONVERTERS, module)
    if conv is None:
        conv = next((c for matches, c in _MATCHERS if matches(module)), None)
    return conv


def digital_reason(module: nn.Module) -> str | None:
    """Why ``module``'s matrix products stay digital, or None when it is not such a module."""
    return _lookup(_DIGITAL, module)


def non_matrix_kind(module: nn.Module) -> str | None:
    """What ``module``'s parameters are when they are not matrix-product weights (``not_a_matrix``), or None.
    Normalisations of other packages are recognised by name: a class whose name ends in ``Norm`` or
    ``Norm2d`` (``LlamaRMSNorm``, timm's ``LayerNorm2d``)."""
    what = _lookup(_NOT_MATRIX, module)
    if what is None and type(module).__name__.endswith(("Norm", "Norm2d")):
        what = "a normalisation's scale"
    return what


_NOT_YET = "no analog layer for it yet: it runs digitally"
leave_digital(nn.Conv3d, _NOT_YET)
leave_digital(nn.ConvTranspose1d, _NOT_YET)
leave_digital(nn.ConvTranspose3d, _NOT_YET)
leave_digital(nn.Bilinear, _NOT_YET)

for _table in (nn.Embedding, nn.EmbeddingBag):
    not_a_matrix(_table, "a lookup table")
for _norm in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm):
    not_a_matrix(_norm, "a normalisation's scale")
not_a_matrix(nn.PReLU, "an activation's slopes")
