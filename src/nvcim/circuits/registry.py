"""A small name -> implementation registry, one per converter axis (ADC, DAC, read noise)."""

from __future__ import annotations

from typing import Generic, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one interface by ``name``; ``field`` is the config field that chooses one."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._items: dict[str, T] = {}

    def register(self, cls: type[T]) -> type[T]:
        self._items[cls.name] = cls()  # type: ignore[attr-defined]
        return cls

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(self.field, name, "one of " + ", ".join(self.names()))
        return self._items[name]
