"""numba's threads for the parallel kernels (:mod:`~p2pmtl.kernels.fused_round`,
:mod:`~p2pmtl.kernels.column_ranks`): one thread layer and one way to launch on it.

Importing this module picks numba's own thread pool (``workqueue``) unless the user chose a
layer (``NUMBA_THREADING_LAYER``): numba's OpenMP layer shares the OpenMP runtime with torch and
sets that runtime's thread count when it starts, so torch's ``threads`` would silently become
numba's count (seen: ``torch.get_num_threads()`` went from 1 to 2 at the first striped
selection). Every parallel kernel module imports this one before its first launch.

The ``workqueue`` pool takes parallel calls from one Python thread at a time (two at once abort
the process): :func:`launch` holds a lock around each parallel call, so callers on several
threads take turns instead.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numba
import torch

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_LAUNCH = threading.Lock()


def kernel_threads(wanted: int | None = None) -> int:
    """Threads a parallel kernel may use: ``wanted`` (default ``torch.get_num_threads()``, the
    run's ``threads``), at most numba's ``NUMBA_NUM_THREADS``, at least 1."""
    k = torch.get_num_threads() if wanted is None else wanted
    return max(1, min(int(k), numba.config.NUMBA_NUM_THREADS))


@contextmanager
def launch(threads: int | None = None) -> Iterator[int]:
    """Run the body's parallel kernel call on :func:`kernel_threads` ``(threads)`` numba
    threads, one caller at a time; yields that count."""
    k = kernel_threads(threads)
    with _LAUNCH:
        numba.set_num_threads(k)
        yield k
