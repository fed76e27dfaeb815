"""User plugins: modules that register components (rules, attacks, aggregators, tasks, models,
graph families, datasets) with the public decorators.

A plugin is named three ways, all loaded the same way and in every worker process:

- in a config, sweep or study file: ``plugins = ["my_module", "path/to/file.py"]`` (a path is
  relative to the file that names it);
- on the command line: ``--plugin my_module`` (repeatable, every command);
- by an installed package, through the entry-point group ``p2pmtl.plugins``: each entry point
  names a module (``my_pkg.components``) or an object in it, which is imported.

Loading is idempotent: a module is imported once per process.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

ENTRY_POINT_GROUP = "p2pmtl.plugins"

_loaded: dict[str, str] = {}  # spec -> module name
_entry_points_loaded = False


class PluginError(ImportError):
    """A plugin that cannot be found or imported (the message names it and why)."""


def resolve_spec(spec: str, base: Optional[Path] = None) -> str:
    """A plugin spec as it will travel to workers: module names unchanged; file paths made
    absolute (relative to ``base``, the folder of the file that names them)."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugin {spec!r}: give a module name or a path to a .py file")
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        p = Path(spec).expanduser()
        if not p.is_absolute() and base is not None:
            p = Path(base) / p
        return str(p.resolve())
    return spec


def load_plugin(spec: str, base: Optional[Path] = None) -> str:
    """Import one plugin (module name or ``.py`` path); returns the module name."""
    spec = resolve_spec(spec, base)
    if spec in _loaded:
        return _loaded[spec]
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise PluginError(f"plugin {spec!r}: no such file")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]  # the same name in every process
        name = f"p2pmtl_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"plugin {spec!r}: cannot be imported as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # pickling classes of the plugin needs it importable by name
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise PluginError(f"plugin {spec!r} failed to import: {type(e).__name__}: {e}") from e
    else:
        name = spec
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                raise PluginError(f"plugin {spec!r}: no module of that name (is it installed, or on "
                                  f"PYTHONPATH? a file needs its path, e.g. ./{spec}.py)") from None
            raise PluginError(f"plugin {spec!r} failed to import: {e}") from e
        except Exception as e:
            raise PluginError(f"plugin {spec!r} failed to import: {type(e).__name__}: {e}") from e
    _loaded[spec] = name
    return name


def load_entry_points() -> list[str]:
    """Import every installed plugin of the ``p2pmtl.plugins`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(e).__name__}: {e}") from e
        names.append(ep.value)
    return names


def load_plugins(specs: Iterable[str] = (), base: Optional[Path] = None, entry_points: bool = True) -> list[str]:
    """Entry-point plugins (once per process), then ``specs`` in order; returns module names."""
    out = load_entry_points() if entry_points else []
    for spec in specs:
        out.append(load_plugin(spec, base))
    return out


def resolved(specs: Sequence[str], base: Optional[Path] = None) -> list[str]:
    """``specs`` with file paths made absolute (what a worker process needs)."""
    return [resolve_spec(s, base) for s in specs]
