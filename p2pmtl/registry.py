"""Name -> component registries, so configs and ``p2pmtl list`` find rules, attacks, tasks,
graphs, aggregators and models.

Built-in components and user plugins register the same way, with a decorator::

    @p2pmtl.register_attack("my_attack", "sends the honest mean plus noise")
    class MyAttack(p2pmtl.Attack):
        ...

Each entry remembers the module that registered it (``origin``): ``p2pmtl list`` shows it, and
runs in worker processes refuse components defined in ``__main__`` (a script or a notebook),
which the workers cannot import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: the object, its one-line description, where it comes from."""

    name: str
    obj: T
    description: str
    module: str
    extra: Optional[dict] = None

    @property
    def builtin(self) -> bool:
        return self.module == "p2pmtl" or self.module.startswith("p2pmtl.")

    @property
    def origin(self) -> str:
        """``built-in``, or the plugin module that registered it."""
        return "built-in" if self.builtin else self.module


def _module_of(obj: Any) -> str:
    return getattr(obj, "__module__", None) or "?"


class Registry(Generic[T]):
    """A named collection of components, each with a one-line description and its origin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str, *, replace: bool = False,
                 **extra: Any) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. Registering a name twice is an error,
        unless the same object comes again (a module imported twice, e.g. a plugin loaded by
        config and by ``--plugin``) or ``replace=True``. ``extra`` keeps per-kind details
        (a task's config model)."""
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r}: use letters, digits, '_', '-' or '.'")
        if not isinstance(description, str) or not description.strip():
            raise ValueError(f"{self.kind} {name!r}: give a one-line description")

        def deco(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and not replace and not _same(old.obj, obj):
                raise ValueError(f"{self.kind} {name!r} registered twice (first by {old.module}, "
                                 f"now by {_module_of(obj)}); pick another name")
            self._items[name] = Entry(name, obj, description.strip().splitlines()[0], _module_of(obj),
                                      dict(extra) or None)
            return obj

        return deco

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def entries(self) -> list[Entry[T]]:
        return [self._items[n] for n in sorted(self._items)]

    def describe(self) -> Iterator[tuple[str, str]]:
        for name in sorted(self._items):
            yield name, self._items[name].description

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that redefine a component)."""
        self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


def _same(a: Any, b: Any) -> bool:
    """The same component defined again (same module and qualified name): a re-import."""
    if a is b:
        return True
    return (_module_of(a) == _module_of(b) and getattr(a, "__qualname__", None) is not None
            and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None))
