"""torch's float64 normal draws, bit for bit, with the Box-Muller transform on several threads:
the target-localization task's noise (:class:`p2pmtl.tasks.target_localization.NoiseStream`)
at large worlds.

For a contiguous float64 tensor of ``16 k`` elements, ``t.normal_(generator=g)`` first draws one
uniform per element, in order (``t.uniform_(generator=g)`` draws the same numbers and leaves
the generator in the same state), then transforms each block of 16 on one thread: for
``j < 8``, ``u1 = 1 - t[j]``, ``u2 = t[j + 8]``, ``r = sqrt(-2 log u1)``,
``theta = 2 pi u2``, ``t[j] = r cos(theta) * std + mean``, ``t[j + 8] = r sin(theta) * std +
mean`` (ATen's ``normal_fill_16``; here ``std = 1``, ``mean = 0``). The uniforms stay serial
(one generator), the transform here is split over the run's threads and calls the same C
library's ``log``, ``sqrt``, ``cos`` and ``sin``, so the numbers are torch's.

That rests on torch's implementation, so :func:`normal_fill_` checks it once per process on a
draw of its own (:func:`matches_torch`) and otherwise leaves the work to torch; the tests
compare millions of draws. Measured on the 2-core machine of stop 30, 3,000,000 draws (one step
of noise at 1,000,000 agents): ``normal_`` 52-67 ms, uniforms 13-21 ms plus the transform on 2
threads 20-28 ms (``docs/results/speed.md``).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import njit, prange

from .threads import launch


@njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def box_muller_blocks(x, parts):
    """ATen's ``normal_fill_16`` (``std = 1``, ``mean = 0``) on every block of 16 of the
    float64 array ``x`` (``x.size`` a multiple of 16), in place: uniforms in, normals out; the
    blocks split into ``parts`` runs over numba's threads."""
    blocks = x.size // 16
    for p in prange(parts):
        lo = blocks * p // parts
        hi = blocks * (p + 1) // parts
        for block in range(lo, hi):
            base = block * 16
            for j in range(8):
                u1 = 1.0 - x[base + j]
                u2 = x[base + j + 8]
                radius = math.sqrt(-2.0 * math.log(u1))
                theta = 2.0 * math.pi * u2
                x[base + j] = radius * math.cos(theta) * 1.0 + 0.0
                x[base + j + 8] = radius * math.sin(theta) * 1.0 + 0.0


MIN_PER_THREAD = 1 << 14
"""Elements each thread takes at least (below, fewer threads: starting them costs more)."""


def _transform(a: np.ndarray) -> None:
    with launch() as threads:
        box_muller_blocks(a, max(1, min(threads, a.size // MIN_PER_THREAD)))


@functools.lru_cache(maxsize=1)
def matches_torch() -> bool:
    """Whether uniforms and :func:`box_muller_blocks` give ``normal_``'s numbers and generator
    state on this torch (checked once per process on 4,096 draws of a seeded generator)."""
    want, got = torch.empty(4096, dtype=torch.float64), torch.empty(4096, dtype=torch.float64)
    g_want, g_got = torch.Generator().manual_seed(20201206), torch.Generator().manual_seed(20201206)
    want.normal_(generator=g_want)
    got.uniform_(generator=g_got)
    box_muller_blocks(got.numpy(), 1)
    return torch.equal(want, got) and torch.equal(g_want.get_state(), g_got.get_state())


def normal_fill_(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``t.normal_(generator=generator)``, the same numbers and generator state, the transform
    on the run's threads where it applies (a contiguous CPU float64 tensor of a multiple of 16
    elements, and :func:`matches_torch`); torch's own ``normal_`` otherwise. Returns ``t``."""
    if (t.dtype != torch.float64 or t.device.type != "cpu" or not t.is_contiguous() or t.numel() % 16
            or t.numel() == 0 or not matches_torch()):
        return t.normal_(generator=generator)
    t.uniform_(generator=generator)
    _transform(t.view(-1).numpy())
    return t
