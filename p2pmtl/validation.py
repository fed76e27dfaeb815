"""Shared pieces of configuration: the error and warning types, the strict pydantic base every
config model derives from, common value types (probabilities, simulated seconds, coordinates)
and messages phrased for the person who wrote the config.

Every component's config model lives beside the component (a task's config in its task module,
the network's in :mod:`p2pmtl.network.config`, ...); :mod:`p2pmtl.experiments.config` assembles
them into one experiment config.
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_PYDANTIC = [
    (r"^Input should be greater than or equal to (.+)$", r"allowed: >= \1"),
    (r"^Input should be greater than (.+)$", r"allowed: > \1"),
    (r"^Input should be less than or equal to (.+)$", r"allowed: <= \1"),
    (r"^Input should be less than (.+)$", r"allowed: < \1"),
    (r"^Input should be a finite number$", "allowed: a finite number (no NaN or inf)"),
    (r"^Input should be (.+)$", r"allowed: \1"),
]


def plain(msg: str) -> str:
    """pydantic's ``Input should be greater than or equal to 1`` as ``allowed: >= 1``."""
    msg = msg.removeprefix("Value error, ")
    for pattern, repl in _PYDANTIC:
        new, n = re.subn(pattern, repl, msg)
        if n:
            return new
    return msg


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class ConfigWarning(UserWarning):
    """A setting that runs but is probably not what was meant (the CLI prints ``warning: ...``)."""


Probability = Annotated[float, Field(ge=0, le=1)]


MAX_SECONDS = 1e12
"""The longest simulated time any one setting may give (about 30,000 years): times summed over a
run stay far from overflow."""


Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


MAX_COORDINATE = 1e6
"""Positions, targets and noise levels of the linear tasks: |value| <= 1e6, so that squared
errors (up to ~1e12 per coordinate) stay far from overflow in float32 and float64."""


Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]


Magnitude = Annotated[float, Field(ge=0, le=MAX_COORDINATE)]


def ordered_pair(key: str, v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{key} = {list(v)}: a range [low, high] needs low <= high")
    return v


def registered(names: list[str], registry) -> list[str]:
    """Every name must be in ``registry``; the error lists the allowed names."""
    for name in names:
        if name not in registry:
            raise ValueError(f"{name!r} is not a known {registry.kind}; allowed: {', '.join(registry.names())}")
    return names


class Strict(BaseModel):
    """Unknown keys are errors, defaults are validated, and no float may be NaN or inf."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
