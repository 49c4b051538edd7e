"""One way to register implementations: a :class:`Registry` per axis of variation, keyed by each class's
``name``, and :class:`Registered`, the lazy list of its names that a config field allows.

Adding a device model, mapping, converter, drift model, read-noise model, metric or method is one file: a
class with a ``name``, decorated with its registry's ``register``. Config fields list their choices from
the registry (imported when first needed), so that nothing repeats the list.
"""

from __future__ import annotations

import difflib
import importlib
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

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: ``cls.name`` becomes a known name."""
        name = cls.name  # type: ignore[attr-defined]
        if not name:
            raise TypeError(f"{cls.__name__} has no name to register under")
        self._classes[name] = cls
        self._instances.pop(name, None)
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an error naming the field and the known names otherwise."""
        if name not in self._classes:
            near = difflib.get_close_matches(str(name), self.names(), n=1)
            raise ConfigError(self.field, name, "one of " + ", ".join(repr(n) for n in self.names()),
                              f"Did you mean '{near[0]}'?" if near else "")
        return self._classes[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """A new instance of the class registered as ``name``."""
        return self.get(name)(*args, **kwargs)

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

    def names(self) -> list[str]:
        registry: Registry[Any] = getattr(importlib.import_module(self.module), self.attribute)
        return registry.names()

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
