"""Configs shared by the benchmarks."""
from __future__ import annotations

from ..experiments.config import load_config


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
