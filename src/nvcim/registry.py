"""One way to register implementations: a :class:`Registry` per axis of variation, keyed by each class's
``name``, and :class:`Registered`, the lazy list of its names that a config field allows.

Adding a device model, mapping, converter, drift model, read-noise model, metric or method is one file: a
class with a ``name``, decorated with its registry's ``register``. Config fields list their choices from
the registry (imported when first needed), so that nothing repeats the list.

A model with settings of its own (a device model, drift law or mapping) names its typed config class as
``config_type`` instead of a ``name``: the config class's name in files (``LognormalConfig.model =
'lognormal'``) becomes the registered name, and :meth:`Registry.for_config` dispatches on the config's type
(torchao's way: the config is the choice, and the registry maps its type to the code that runs it).
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """The implementations of one interface by ``name``. ``field`` names what chooses one (a config field's
    dotted path, or a word such as 'method'), for the error that lists the allowed names."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._classes: dict[str, type[T]] = {}
        self._instances: dict[str, T] = {}
        self._by_config: dict[type, type[T]] = {}
        self._keyed: dict[str, T] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: ``cls.name`` becomes a known name; a class with a typed ``config_type`` is
        registered under that config's name and found again from its config's type."""
        config_type = getattr(cls, "config_type", None)
        if config_type is not None:
            cls.name = config_type.variant_name()  # type: ignore[attr-defined]
            self._by_config[config_type] = cls
        name = cls.name  # type: ignore[attr-defined]
        if not name:
            raise TypeError(f"{cls.__name__} has no name to register under")
        self._classes[name] = cls
        self._instances.pop(name, None)
        self._keyed.clear()
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an error naming the field and the known names otherwise."""
        if not isinstance(name, str) or name not in self._classes:  # a list or table from a file, too
            near = difflib.get_close_matches(str(name), self.names(), n=1)
            raise ConfigError(self.field, name, "one of " + ", ".join(repr(n) for n in self.names()),
                              f"Did you mean '{near[0]}'?" if near else "")
        return self._classes[name]

    def config_class(self, name: str) -> type:
        """The typed config class of the model registered as ``name`` (an error listing the names otherwise)."""
        cls = self.get(name)
        config_type = getattr(cls, "config_type", None)
        if config_type is None:
            raise TypeError(f"{cls.__name__} ({self.field} = {name!r}) has no typed config")
        return config_type  # type: ignore[no-any-return]

    def for_config(self, config: object) -> type[T]:
        """The implementation registered for ``type(config)`` (or the nearest registered base class)."""
        for t in type(config).__mro__:
            if t in self._by_config:
                return self._by_config[t]
        raise TypeError(f"no {self.field} is registered for {type(config).__name__}")

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """A new instance of the class registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def for_key(self, key: str) -> T:
        """The shared instance for a config's ``key()`` (a model's name, or the JSON of a config with fields
        of its own), made from that config: what the compiled loops carry as a static string."""
        if key not in self._keyed:
            if key.startswith("{"):
                data = json.loads(key)
                cls = self.config_class(data.pop(next(iter(data))))  # the tag is written first
                config = cls(**data)
            else:
                config = self.config_class(key)()
            self._keyed[key] = self.for_config(config)(config)  # type: ignore[call-arg]
        return self._keyed[key]

    def instance_for(self, config: object) -> T:
        """The shared instance of the stateless implementation registered for ``type(config)``."""
        return self.instance(self.for_config(config).name)  # type: ignore[attr-defined]

    def instance(self, name: str) -> T:
        """The shared instance of a stateless implementation (converters, read noise, drift)."""
        if name not in self._instances:
            self._instances[name] = self.create(name)
        return self._instances[name]


class Registered(Sequence[str]):
    """The names of a registry that lives in ``module`` as ``attribute``, looked up when first asked: config
    fields use it as their ``choices`` without importing the implementations (which import the config). A
    sequence of the sorted names, read anew each time (a model registered later is allowed)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def registry(self) -> Registry[Any]:
        return getattr(importlib.import_module(self.module), self.attribute)  # type: ignore[no-any-return]

    def names(self) -> list[str]:
        return self.registry().names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, i: Any) -> Any:
        return self.names()[i]

    def __repr__(self) -> str:
        return f"Registered({self.module}.{self.attribute})"
