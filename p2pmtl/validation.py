"""Validation messages phrased for the person who wrote the config."""
from __future__ import annotations

import re

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
