"""Configs shared by the benchmarks."""
from __future__ import annotations

import time
from typing import Callable

from ..experiments.config import load_config


def best_time(fn: Callable[[], object], repeats: int, *, warmup: bool = True,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (the timeit convention: the minimum
    is the least disturbed by other load), after one untimed call unless ``warmup`` is False
    (large inputs: no extra allocation). ``clock``: ``time.thread_time`` counts only this
    thread's CPU time. Results are dropped as soon as each call returns."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def bench_config(n: int, byzantine: int, runs: int = 1):
    """Li2020's network at density 100 agents per 3x3 box, for any n."""
    box = 3.0 * (n / 100) ** 0.5
    return load_config(data={
        "name": "bench", "runs": runs, "iterations": 1,
        "graph": {"family": "random_geometric", "n": n, "radius": 1.0, "box": box,
                  "max_neighbors": 9, "directed": True},
        "task": {"box": box},
        "scenarios": [{"name": "attack", "byzantine": byzantine,
                       "attack": {"name": "uniform", "low": 15.0, "high": 16.0}}],
    })
