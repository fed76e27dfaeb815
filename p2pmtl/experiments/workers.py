"""Worker processes for ``--jobs N`` runs and sweeps: spawned, one torch thread each, quiet on
Ctrl-C.

The terminal sends SIGINT to the whole process group. Workers ignore it, so none prints a
traceback; the parent catches KeyboardInterrupt and calls :func:`stop_pool`, which sends each
worker SIGTERM; a worker turns SIGTERM into KeyboardInterrupt inside its task, where the run's
recorder closes its files and marks the unfinished scenario ``interrupted``. Tasks not yet
started are cancelled. Workers stop within about a second (the next Python bytecode after the
signal; a long torch kernel finishes first); one still alive after
:data:`STOP_GRACE_SECONDS` is killed, so the parent always returns.
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, wait
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
    """Initializer of every worker: signal handling, torch threads, user plugins (installed
    ones through their entry points, and ``plugins``: the config's and ``--plugin``'s)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    import torch

    from ..validation import ConfigWarning
    from .plugins import load_plugins

    warnings.simplefilter("ignore", ConfigWarning)  # the parent has shown them once
    torch.set_num_threads(threads)
    load_plugins(plugins)


UNGUARDED = ("a p2pmtl worker process re-ran your script while importing it, and the script starts "
             "parallel work again: put the script's calls under `if __name__ == \"__main__\":` "
             "(or run with jobs = 1)")


def in_worker_startup() -> bool:
    """True while a spawned child process re-runs the parent's script (``multiprocessing``
    runs it as module ``__mp_main__`` before the child's first task)."""
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


def process_pool(jobs: int, threads: int = 1, plugins: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A spawn-context pool of ``jobs`` workers set up by :func:`worker_init`.

    Spawned workers import the parent's main module; a script that starts a parallel run at its
    top level (no ``if __name__ == "__main__":`` guard) would start it again in every worker.
    Such a nested start stops the worker with one line (:data:`UNGUARDED`), and the parent
    turns the broken pool into the same one-line error."""
    import multiprocessing as mp

    if in_worker_startup():
        raise SystemExit(f"error: {UNGUARDED}")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                               initializer=worker_init, initargs=(threads, tuple(plugins)))


def broken_pool_error(e: BaseException) -> RuntimeError:
    """The error a parent raises when its worker processes died at start-up."""
    return RuntimeError(f"worker processes could not start ({type(e).__name__}); if you run p2pmtl from a "
                        f"script: {UNGUARDED.split(': ', 1)[1]}")


STOP_GRACE_SECONDS = 10.0
"""How long :func:`stop_pool` waits for workers to close their runs before killing them."""


def stop_pool(pool: ProcessPoolExecutor, futures: Sequence[Future] = (),
              grace: float = STOP_GRACE_SECONDS) -> None:
    """Ask every live worker to stop (SIGTERM -> KeyboardInterrupt in its task), cancel the
    tasks that have not started, and wait up to ``grace`` seconds for the running ``futures``;
    workers still alive then are killed (SIGKILL), so an interrupted parent never waits on a
    worker that missed its signal. A killed worker's run keeps what it had flushed; its
    summary still says ``running``, which :func:`~p2pmtl.experiments.runner.merge_parts`
    reads as interrupted."""
    procs = [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.pid]
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    wait([f for f in futures if not f.cancelled()], timeout=grace)
    for proc in procs:  # a worker whose task ended exits at once (the signal or the shutdown)
        proc.join(timeout=max(0.0, min(deadline - time.monotonic(), 1.0)))
        _signal(proc, signal.SIGKILL)


def _signal(proc, sig: int) -> None:
    if proc.is_alive():
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def components_of(cfg) -> list[tuple[str, object]]:
    """(config key, registry entry) of every registered component a config uses."""
    from ..data import IMAGE_SETS
    from ..graphs.families import GRAPHS
    from ..robust.aggregators import AGGREGATORS, PRE_AGGREGATORS
    from ..robust.attacks import ATTACKS
    from ..rules.combine import COMBINES
    from ..rules.weights import RULES
    from ..tasks import TASKS
    from ..tasks.models import MODELS

    used = [("graph.family", GRAPHS.entry(cfg.graph.family)), ("task.name", TASKS.entry(cfg.task.name)),
            ("rules.combine", COMBINES.entry(cfg.rules.combine))]
    if cfg.mode == "gossip":
        used += [("rules.names", RULES.entry(r)) for r in cfg.rules.names]
    used += [(f"scenarios.{s.name}.attack.name", ATTACKS.entry(s.attack.name)) for s in cfg.scenarios]
    model = getattr(cfg.task, "model", None)
    if isinstance(model, str) and model in MODELS:
        used.append(("task.model", MODELS.entry(model)))
    used += [("task.datasets", IMAGE_SETS.entry(d)) for d in getattr(cfg.task, "datasets", []) if d in IMAGE_SETS]
    if cfg.mode == "server":
        from ..server.federated import Method

        for s in cfg.scenarios:
            for m in s.methods or cfg.server.methods:
                agg = Method.parse(m).aggregator
                if agg in AGGREGATORS:
                    used.append(("server.methods", AGGREGATORS.entry(agg)))
        used += [("server.pre", PRE_AGGREGATORS.entry(p)) for p in cfg.server.pre]
    return used


def check_importable(cfg) -> None:
    """Worker processes import components by module: one defined in ``__main__`` (a script run
    directly, a notebook) cannot be found there. Refuse before any work, in one line."""
    from ..validation import ConfigError

    for key, entry in components_of(cfg):
        if entry.module in ("__main__", "__mp_main__") or entry.module.startswith("<"):
            raise ConfigError(
                f"{key} = {entry.name!r} is defined in {entry.module} (a script or a notebook), which worker "
                f"processes cannot import: put it in a module and load it with plugins = [\"that_module\"] "
                f"(or --plugin), or run with jobs = 1")
