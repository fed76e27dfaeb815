"""numba's threads for the parallel kernels (:mod:`~p2pmtl.kernels.fused_round`,
:mod:`~p2pmtl.kernels.column_ranks`): one way to launch them.

numba picks its thread layer as usual (``tbb``, else ``omp``, else its own ``workqueue``;
``NUMBA_THREADING_LAYER`` chooses). The OpenMP layer shares the OpenMP runtime with torch, which
is what makes it the fast one beside torch (torch's idle OpenMP threads spin for a while after
each of its parallel ops, and a separate pool would compete with them for the cores: the
coordinate median of 100 x 1e6 float32 values on 2 threads took 0.140 s on ``workqueue``
against 0.084 s on ``omp``), but the first parallel call starts it in a way that sets that
runtime's thread count to numba's, so torch's ``threads`` silently changes (seen: torch set to
1 thread reads 2 after the first striped selection, when torch's default had been read
before, and whether or not numba's own count was set first). :func:`launch` sets numba's count
for each call and puts torch's back after it.

The ``workqueue`` layer takes parallel calls from one Python thread at a time (two at once
abort the process): :func:`launch` holds a lock around each call, so callers on several
threads take turns instead.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numba
import torch

_LAUNCH = threading.Lock()


def kernel_threads(wanted: int | None = None) -> int:
    """Threads a parallel kernel may use: ``wanted`` (default ``torch.get_num_threads()``, the
    run's ``threads``), at most numba's ``NUMBA_NUM_THREADS``, at least 1."""
    k = torch.get_num_threads() if wanted is None else wanted
    return max(1, min(int(k), numba.config.NUMBA_NUM_THREADS))


@contextmanager
def launch(threads: int | None = None) -> Iterator[int]:
    """Run the body's parallel kernel call on :func:`kernel_threads` ``(threads)`` numba
    threads, one caller at a time, and leave torch's thread count as it found it; yields the
    count."""
    k = kernel_threads(threads)
    torch_threads = torch.get_num_threads()
    with _LAUNCH:
        numba.set_num_threads(k)
        try:
            yield k
        finally:
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)
