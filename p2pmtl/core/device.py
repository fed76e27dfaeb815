"""Where neural models compute: the ``device`` setting (``"auto" | "cpu" | "cuda" | "cuda:N"``).

``auto`` picks the first CUDA GPU when torch sees one and the CPU otherwise, so a config runs
unchanged on a laptop and on a GPU machine. The device is where the *models* live (the model
banks of the image tasks, the server's workers): training, scoring and evaluation run there.
Gossip messages, edge weights, attacks and aggregators stay on the CPU, where their per-edge
arithmetic is a small part of a round (DESIGN: the boundary is the model bank).
"""
from __future__ import annotations

import re

import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N' (N a GPU index)"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str, key: str = "device") -> str:
    """The spec itself when it is well formed (it may name a GPU this machine lacks: that is
    found by :func:`resolve_device`, when the run starts); else a ValueError naming ``key``."""
    if not isinstance(spec, str) or not _PATTERN.match(spec.strip().lower()):
        raise ValueError(f"{key} = {spec!r}; allowed: {DEVICE_CHOICES}")
    return spec.strip().lower()


def resolve_device(spec: str = "auto", key: str = "device") -> torch.device:
    """The torch device of ``spec``: ``auto`` is ``cuda:0`` when a GPU is visible, else ``cpu``;
    ``cuda`` or ``cuda:N`` without such a GPU is an error naming ``key`` and what torch sees.
    Resolving a GPU also makes its computations reproducible (deterministic cuDNN kernels, no
    TF32)."""
    spec = check_device_spec(spec, key)
    if spec == "auto":
        return _reproducible(torch.device("cuda:0")) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        seen = f"{count} CUDA GPU(s)" if count else "no CUDA GPU (torch.cuda.is_available() is False)"
        raise ValueError(f"{key} = {spec!r}: this machine has {seen}; use 'cpu' or 'auto'")
    return _reproducible(torch.device("cuda", index))


def _reproducible(device: torch.device) -> torch.device:
    """Same seed, same numbers on a GPU too: cuDNN picks deterministic kernels (no autotuning,
    whose choice can change between runs) and full float32 (no TF32, whose 10-bit mantissa
    would make GPU runs differ from CPU runs far beyond float32 rounding)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return device
