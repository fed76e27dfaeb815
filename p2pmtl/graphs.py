"""Graph families (networkx) and named topology specs from ``topologies/``.

Every generator is a function with keyword parameters returning a networkx graph on nodes
0..n-1. Directed edge ``l -> k`` means agent k receives from l. Every agent is its own
neighbour (self loops are added by :class:`~p2pmtl.edges.EdgeIndex`, not stored here).
"""
from __future__ import annotations

import inspect
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

from .registry import Registry

GRAPHS: Registry[Callable[..., nx.Graph]] = Registry("graph family")
TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"


def cap_in_neighbours(
    src: np.ndarray, dst: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``cap`` in-neighbours per receiver, chosen uniformly at random (vectorized:
    random keys, sort by receiver then key, keep the first ``cap`` of each receiver)."""
    order = np.lexsort((rng.random(src.size), dst))
    src, dst = src[order], dst[order]
    starts = np.searchsorted(dst, dst, side="left")
    rank = np.arange(dst.size) - starts
    keep = rank < cap
    return src[keep], dst[keep]


@GRAPHS.register(
    "random_geometric",
    "agents uniform in [0,box]^2, linked within radius; optional cap on in-neighbours (Li2020)",
)
def random_geometric(
    *,
    n: int,
    radius: float = 1.0,
    box: float = 3.0,
    max_neighbors: Optional[int] = None,
    directed: bool = True,
    seed: int = 0,
) -> nx.Graph:
    """Li2020's target-localization network: n agents uniform in [0, box]^2; l is a neighbour
    of k when ||x_l - x_k|| <= radius; each agent keeps at most ``max_neighbors`` of them chosen
    at random (the reference code: 9 plus itself), which makes the graph directed.
    Positions are stored in the node attribute ``pos``."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, box, size=(n, 2))
    pairs = cKDTree(pos).query_pairs(radius, output_type="ndarray").astype(np.int64)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    if max_neighbors is not None:
        src, dst = cap_in_neighbours(src, dst, max_neighbors, rng)
    g: nx.Graph = nx.DiGraph() if (directed or max_neighbors is not None) else nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    nx.set_node_attributes(g, {k: (float(p[0]), float(p[1])) for k, p in enumerate(pos)}, "pos")
    return g


@GRAPHS.register("complete", "every agent linked to every other")
def complete(*, n: int) -> nx.Graph:
    return nx.complete_graph(n)


@GRAPHS.register("ring", "cycle: every agent linked to its two neighbours")
def ring(*, n: int) -> nx.Graph:
    return nx.cycle_graph(n)


@GRAPHS.register("star", "node 0 at the hub linked to all others (the server-mode layout)")
def star(*, n: int) -> nx.Graph:
    return nx.star_graph(n - 1)


@GRAPHS.register("grid_2d", "rows x cols lattice (n = rows * cols), 4-neighbourhood")
def grid_2d(*, rows: int, cols: int, periodic: bool = False) -> nx.Graph:
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols, periodic=periodic))


@GRAPHS.register("erdos_renyi", "G(n, p): each pair linked with probability p")
def erdos_renyi(*, n: int, p: float, directed: bool = False, seed: int = 0) -> nx.Graph:
    return nx.fast_gnp_random_graph(n, p, seed=seed, directed=directed)


@GRAPHS.register("watts_strogatz", "small world: ring of k nearest neighbours, rewired with p")
def watts_strogatz(*, n: int, k: int, p: float, seed: int = 0) -> nx.Graph:
    return nx.watts_strogatz_graph(n, k, p, seed=seed)


@GRAPHS.register("barabasi_albert", "preferential attachment, m edges per new node (scale-free)")
def barabasi_albert(*, n: int, m: int, seed: int = 0) -> nx.Graph:
    return nx.barabasi_albert_graph(n, m, seed=seed)


@GRAPHS.register("file", "read a GraphML (.graphml) or edge-list (.edgelist/.txt) file")
def from_file(*, path: str, directed: bool = False) -> nx.Graph:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"graph.path = {path!r}: no such file (expected GraphML or edge list)")
    if p.suffix.lower() == ".graphml":
        g = nx.read_graphml(p)
    else:
        g = nx.read_edgelist(p, create_using=nx.DiGraph if directed else nx.Graph, nodetype=int)
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def family_parameters(family: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(GRAPHS.get(family)).parameters)


def build_graph(family: str, params: dict[str, Any], seed: int) -> nx.Graph:
    """Build a graph; ``seed`` is used where the family takes one and ``params`` sets none."""
    allowed = family_parameters(family)
    kwargs = dict(params)
    if "seed" in allowed and "seed" not in kwargs:
        kwargs["seed"] = seed
    g = GRAPHS.get(family)(**kwargs)
    check_graph(g)
    return g


def check_graph(g: nx.Graph) -> None:
    """An empty graph is an error; a disconnected one a warning."""
    if g.number_of_nodes() == 0:
        raise ValueError("graph has no nodes")
    connected = nx.is_weakly_connected(g) if g.is_directed() else nx.is_connected(g)
    if not connected:
        warnings.warn(
            f"graph with {g.number_of_nodes()} nodes is not connected: some agents never hear "
            "from others",
            stacklevel=2,
        )


def named_topologies(extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in (*extra_dirs, Path.cwd() / "topologies", TOPOLOGY_DIR):
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def load_topology(name: str, extra_dirs: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec of a named topology: a TOML file ``topologies/NAME.toml`` holding ``family``,
    its parameters, and an optional ``description``."""
    specs = named_topologies(extra_dirs)
    if name not in specs:
        raise KeyError(f"graph.topology = {name!r}: unknown; allowed: {', '.join(sorted(specs))}")
    spec = tomllib.loads(specs[name].read_text())
    spec.pop("description", None)
    return spec


def positions(g: nx.Graph) -> Optional[np.ndarray]:
    """Node positions ``[n, 2]`` if every node has a ``pos`` attribute, else None."""
    pos = nx.get_node_attributes(g, "pos")
    if len(pos) != g.number_of_nodes():
        return None
    return np.array([pos[k] for k in range(g.number_of_nodes())], dtype=np.float64)
