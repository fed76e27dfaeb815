"""Worker processes for ``--jobs N`` runs and sweeps: spawned, one torch thread each, quiet on
Ctrl-C.

The terminal sends SIGINT to the whole process group. Workers ignore it, so none prints a
traceback; the parent catches KeyboardInterrupt and calls :func:`stop_pool`, which sends each
worker SIGTERM; a worker turns SIGTERM into KeyboardInterrupt inside its task, where the run's
recorder closes its files and marks the unfinished scenario ``interrupted``. Tasks not yet
started are cancelled. Workers stop within about a second (the next Python bytecode after the
signal; a long torch kernel finishes first).
"""
from __future__ import annotations

import os
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence


_busy = False


def _on_term(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    if _busy:
        raise KeyboardInterrupt  # inside a task: the run closes its files as interrupted
    raise SystemExit(0)  # idle: leave quietly


def call(fn, *args, **kwargs):
    """Run ``fn`` as a worker task (module-level, picklable): SIGTERM interrupts it."""
    global _busy
    _busy = True
    try:
        return fn(*args, **kwargs)
    finally:
        _busy = False


def worker_init(threads: int = 1, plugins: Sequence[str] = ()) -> None:
    """Initializer of every worker: signal handling, torch threads, user plugins."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    import torch

    torch.set_num_threads(threads)
    if plugins:
        from .plugins import load_plugins

        load_plugins(plugins)


def process_pool(jobs: int, threads: int = 1, plugins: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A spawn-context pool of ``jobs`` workers set up by :func:`worker_init`."""
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                               initializer=worker_init, initargs=(threads, tuple(plugins)))


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Ask every live worker to stop (SIGTERM -> KeyboardInterrupt in its task) and cancel the
    tasks that have not started."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    pool.shutdown(wait=False, cancel_futures=True)
