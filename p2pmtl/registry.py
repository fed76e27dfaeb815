"""Name -> class registries, so configs and ``p2pmtl list`` find rules, attacks, tasks, graphs."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of components, each with a one-line description."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, tuple[T, str]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = (obj, description)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name][0]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> Iterator[tuple[str, str]]:
        for name in sorted(self._items):
            yield name, self._items[name][1]

    def __contains__(self, name: object) -> bool:
        return name in self._items
