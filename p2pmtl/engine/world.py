"""A *world*: what is fixed for one scenario across weight rules (graphs, agents' setups,
Byzantine sets, per-run seeds), and the helpers that draw it reproducibly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..core.edges import EdgeIndex

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def run_seeds(seed: int) -> dict[str, int]:
    """Independent child seeds of one run (numpy SeedSequence), one per random stream."""
    kids = np.random.SeedSequence(seed).spawn(6)
    names = ("graph", "setup", "data", "byzantine", "attack", "network")
    return {k: int(s.generate_state(1)[0]) for k, s in zip(names, kids)}


@dataclass
class World:
    """Everything fixed for one scenario across rules: graphs, agents, Byzantine sets."""

    graphs: list
    edges: EdgeIndex
    setups: list
    seeds: list[dict[str, int]]
    byzantine: torch.Tensor  # node ids in the batched numbering
    n: int
    present: Optional[list] = None  # time-varying topology: world edge ids present per block

    @property
    def run_of_node(self) -> torch.Tensor:
        return torch.arange(self.edges.num_nodes) // self.n


def choose_byzantine(spec, n: int, seed: int, field: str = "byzantine", placement: str = "random",
                     graph=None) -> np.ndarray:
    """Byzantine node ids: listed, or a count placed at random or on the highest-degree nodes
    (in-degree + out-degree without self loops; ties broken at random)."""
    if isinstance(spec, int):
        if spec > n:
            raise ValueError(f"{field} = {spec}: more Byzantine agents than the {n} agents")
        rng = np.random.default_rng(seed)
        if placement == "degree":
            from ..graphs.edge_list import node_degrees

            deg = node_degrees(graph)
            return np.sort(np.lexsort((rng.random(n), -deg))[:spec])
        return np.sort(rng.choice(n, size=spec, replace=False))
    ids = np.asarray(spec, dtype=np.int64)
    if ids.size and ids.max() >= n:
        raise ValueError(f"{field} = {spec}: ids must be < {n} (the number of agents)")
    return np.sort(ids)
