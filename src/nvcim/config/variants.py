"""Typed config sections with one class per model: the device's programming model, its drift law and the
weight mapping.

A :class:`Variant` section is a family of frozen dataclasses: a base class with the fields every model
has, and one subclass per model with that model's own fields, defined in the model's own file next to its
code (``LognormalConfig`` in ``devices/lognormal.py``). In a file the section names its class with one field,
``TAG`` (``model = "lognormal"``, ``scheme = "offset"``); the class sets it as a class constant, so that
``config.device.programming.model`` reads as before. Which class a name stands for is the registry's
(:meth:`nvcim.registry.Registry.config_class`): a model added in one file is a valid config value with its
own fields.

Older files and saved models wrote every model's fields in one flat section. A field of another model is
still accepted at its old default (it never did anything there), so they keep loading; set to anything
else it is an error that says which models have it, instead of a setting that silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registry import Registered


class Variant:
    """Base of a config family. Subclasses (frozen dataclasses) set ``TAG``, ``REGISTRY`` and ``LEGACY`` once
    on the family's base, and each model's class sets the ``TAG`` constant to its name."""

    TAG: ClassVar[str] = ""  # the field of files that names the model: "model", "scheme"
    TAG_DOC: ClassVar[str] = ""  # what that field chooses, for `nvcim fields`
    REGISTRY: ClassVar[Registered]  # the implementations; each knows its config class
    # fields of the flat, pre-typed section and their defaults: accepted at that default from older files
    LEGACY: ClassVar[dict[str, Any]] = {}

    @classmethod
    def variant_name(cls) -> str:
        """This class's name in files (the value of its ``TAG`` field)."""
        return str(getattr(cls, cls.TAG))

    @classmethod
    def family(cls) -> type[Variant]:
        """The family's base class (the one that sets ``REGISTRY``): the fields every model has."""
        return next(c for c in cls.__mro__ if "REGISTRY" in c.__dict__)

    @classmethod
    def models(cls) -> dict[str, type[Variant]]:
        """Every registered model's config class by name."""
        reg = cls.REGISTRY.registry()
        return {n: reg.config_class(n) for n in reg.names()}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def choose(cls, data: dict[str, Any], path: str) -> tuple[type, dict[str, Any]]:
        """(the class that ``data[TAG]`` names, or ``cls`` without one; the rest of ``data`` for its fields).

        A key that the chosen class lacks is dropped when it is a legacy field at its old default, and is
        an error naming ``path``, the class's fields and the models that have it otherwise."""
        data = dict(data)
        chosen: type[Variant] = cls
        if cls.TAG in data:
            name = data.pop(cls.TAG)
            try:
                chosen = cls.REGISTRY.registry().config_class(name)
            except ConfigError as e:
                raise ConfigError(f"{path}.{cls.TAG}" if path else cls.TAG, name, e.allowed, e.hint) from None
        own = chosen.field_names()
        for key in [k for k in data if isinstance(k, str) and k not in own]:
            if key in cls.LEGACY and _same(data[key], cls.LEGACY[key]):
                del data[key]  # an older file's field of another model, at the value it always had
            else:
                raise cls._not_a_field(key, data[key], chosen, path)
        return chosen, data

    @classmethod
    def _not_a_field(cls, key: str, value: Any, chosen: type[Variant], path: str) -> ConfigError:
        """The error for ``key``, which ``chosen`` lacks: its fields, and which models have ``key`` (or the
        nearest field name of any model)."""
        models, own = cls.models(), chosen.field_names()
        having = [n for n, c in models.items() if key in c.field_names()]
        if having:
            hint = f"{key} belongs to {cls.TAG} " + ", ".join(repr(n) for n in having)
        else:
            near = difflib.get_close_matches(key, sorted({f for c in models.values() for f in c.field_names()}), n=1)
            hint = f"Did you mean '{path + '.' if path else ''}{near[0]}'?" if near else ""
            if near and near[0] not in own:
                hint += f" (a field of {cls.TAG} " + ", ".join(
                    repr(n) for n, c in models.items() if near[0] in c.field_names()) + ")"
        return ConfigError(f"{path}.{key}" if path else key, value, f"a field of {cls.TAG} "
                           f"'{chosen.variant_name()}': " + (", ".join(own) if own else "(it has none)"), hint)

    def as_dict(self) -> dict[str, Any]:
        """The section as files write it: ``TAG`` first, then this model's fields."""
        return {self.TAG: self.variant_name(),
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}  # type: ignore[arg-type]

    def key(self) -> str:
        """A string that stands for this config: the model's name when it has no fields, else the JSON of
        :meth:`as_dict` (tag first). Compiled loops take it as a static argument, and the registry's
        :meth:`~nvcim.registry.Registry.for_key` makes the model from it again."""
        d = self.as_dict()
        return self.variant_name() if len(d) == 1 else json.dumps(
            {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()})

    def legacy_dict(self) -> dict[str, Any]:
        """:meth:`as_dict` completed with the flat section's other fields at their old defaults: the shape
        that experiment-store keys were hashed from before the split, so that those keys hold."""
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in self.LEGACY.items()}, **self.as_dict()}


def _same(value: Any, default: Any) -> bool:
    """Whether a file's ``value`` is the field's old ``default`` (a list for a tuple; a bool only for a bool)."""
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and tuple(value) == default
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    return bool(value == default)
