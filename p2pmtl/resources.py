"""The configs and topologies that ship with p2pmtl, found by name from any folder.

In a source checkout they are the repository's ``experiments/`` and ``topologies/`` folders; an
installed wheel carries copies as package data (``p2pmtl/bundled/``). A name is looked up as
a path first (relative to the current folder), then as a bundled file, with or without the
``.toml`` suffix: ``p2pmtl run target_localization`` works anywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

_PKG = Path(__file__).resolve().parent
_SOURCE = _PKG.parent  # a source checkout: experiments/ and topologies/ beside the package


def bundled_dir(kind: str) -> Path:
    """The folder of bundled ``experiments`` or ``topologies``."""
    if kind not in ("experiments", "topologies"):
        raise ValueError(f"kind = {kind!r}; allowed: experiments, topologies")
    installed = _PKG / "bundled" / kind
    if installed.is_dir():
        return installed
    return _SOURCE / kind


def bundled_configs() -> dict[str, Path]:
    """Name -> path of every bundled experiment, sweep and study config."""
    d = bundled_dir("experiments")
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def resolve_config(source: Union[str, Path]) -> Path:
    """A config path from a path or a bundled name; a missing one is a ConfigError that lists
    the bundled names."""
    from .validation import ConfigError

    p = Path(source).expanduser()
    if p.is_file():
        return p
    if p.exists():
        raise ConfigError(f"config {str(source)!r} is a folder, not a TOML file")
    name = p.name.removesuffix(".toml")
    if p.parent == Path(".") or str(p.parent) in ("experiments", "./experiments"):
        found = bundled_configs().get(name)
        if found is not None:
            return found
    names = ", ".join(bundled_configs()) or "(none found)"
    raise ConfigError(f"config file {str(source)!r} not found; bundled configs: {names}")
