"""Declarative field specs: every config field carries its unit, range and a one-line doc.

A field is declared with :func:`spec`; :func:`check` validates a frozen dataclass instance against its
specs and raises :class:`~nvcim.errors.ConfigError` naming the field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError


def spec(
    default: Any,
    doc: str,
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: Iterable[str] | None = None,
    zero_ok: bool = False,
) -> Any:
    """Declare a config field.

    ``lo``/``hi`` bound numbers (and every element of a tuple); ``lo_open`` makes ``lo`` exclusive;
    ``zero_ok`` also admits exactly 0 (used for "0 = off / auto") when 0 is outside ``[lo, hi]``.
    ``choices``: the allowed strings, a tuple or a :class:`~nvcim.registry.Registered` list of a registry's
    names (read when a value is checked).
    """
    meta = dict(doc=doc, unit=unit, lo=lo, hi=hi, lo_open=lo_open, choices=choices, zero_ok=zero_ok)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def allowed_text(meta: dict[str, Any]) -> str:
    """Human-readable allowed range for a field, e.g. ``(0, inf) S``."""
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])  # a registry's: read now
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") or lo is None else "["
    txt = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    txt = txt[:-1] + ")" if hi is None else txt
    if meta.get("zero_ok"):
        txt = f"0 (off/auto) or {txt}"
    unit = meta.get("unit")
    return f"{txt} {unit}".rstrip() if unit and unit != "-" else txt


def _check_number(name: str, v: Any, meta: dict[str, Any], kind: type) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(name, v, f"a {kind.__name__}, {allowed_text(meta)}")
    if kind is int and not float(v).is_integer():
        raise ConfigError(name, v, f"an integer, {allowed_text(meta)}")
    if not math.isfinite(float(v)):
        raise ConfigError(name, v, f"a finite number, {allowed_text(meta)}")
    if meta.get("zero_ok") and v == 0:
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    bad_lo = lo is not None and (v <= lo if meta.get("lo_open") else v < lo)
    bad_hi = hi is not None and v > hi
    if bad_lo or bad_hi:
        raise ConfigError(name, v, allowed_text(meta))


def check(obj: Any) -> None:
    """Validate every spec'd field of the dataclass ``obj`` (types, ranges, choices); coerce lists."""
    for f in dataclasses.fields(obj):
        meta = dict(f.metadata)
        if "doc" not in meta:
            continue
        v = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        if dataclasses.is_dataclass(default):
            continue
        if isinstance(default, tuple):
            if isinstance(v, list):
                v = tuple(v)
                object.__setattr__(obj, f.name, v)
            if not isinstance(v, tuple):
                raise ConfigError(f.name, v, f"a list of numbers, each {allowed_text(meta)}")
            for i, el in enumerate(v):
                _check_number(f"{f.name}[{i}]", el, meta, float)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f.name, v, "true or false")
        elif isinstance(default, (int, float)):
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
                object.__setattr__(obj, f.name, v)
            _check_number(f.name, v, meta, type(default))
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise ConfigError(f.name, v, allowed_text(meta) if meta.get("choices") else "a string")
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(f.name, v, allowed_text(meta))


def describe(cls: type, prefix: str = "", only: Iterable[str] | None = None,
             model: str = "") -> list[tuple[str, Any, str, str]]:
    """Rows (dotted path, default, allowed range with unit, doc) for every field of a config class; a typed
    section (:class:`~nvcim.config.variants.Variant`) lists its ``model``/``scheme`` choices, its common
    fields, then each model's own fields with the model's name in brackets before their doc."""
    from .variants import Variant

    rows: list[tuple[str, Any, str, str]] = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        path = f"{prefix}{f.name}"
        if isinstance(default, Variant):
            base, models = default.family(), default.models()
            rows.append((f"{path}.{base.TAG}", default.variant_name(),
                         "one of " + ", ".join(repr(n) for n in models), base.TAG_DOC))
            rows += describe(base, path + ".")
            common = set(base.field_names())
            for name, c in models.items():
                rows += describe(c, path + ".", [n for n in c.field_names() if n not in common], name)
        elif dataclasses.is_dataclass(default):
            rows += describe(type(default), path + ".")
        elif "doc" in f.metadata:
            meta = dict(f.metadata)
            allowed = "text" if isinstance(default, str) and not meta["choices"] else (
                "true/false" if isinstance(default, bool) else allowed_text(meta))
            rows.append((path, default, allowed, f"[{model}] {meta['doc']}" if model else meta["doc"]))
    return rows
