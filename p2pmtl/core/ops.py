"""Small tensor helpers for the hot path, chosen by measurement on this CPU (100 agents,
~1,000 edges): ``(a*b) @ ones`` is 4x faster than ``(a*b).sum(-1)`` for narrow rows, and one
``sum`` plus a Python finiteness test is 3x cheaper than ``isfinite(x).all()``."""
from __future__ import annotations

import math
from functools import lru_cache

import torch


@lru_cache(maxsize=64)
def _ones(d: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.ones(d, dtype=dtype)


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis, with broadcasting: ``[..., D] x [..., D] -> [...]``."""
    return (a * b) @ _ones(a.shape[-1], a.dtype)


def all_finite(x: torch.Tensor) -> bool:
    """True iff every entry is finite (a sum overflowing to inf answers False: safe side)."""
    return math.isfinite(float(x.sum()))
