"""Graph families and named topology specs from ``topologies/``.

Every generator is a function with keyword parameters returning a graph on nodes 0..n-1: a
networkx graph, or for the families that scale to millions of agents (random geometric, ring,
grid) an :class:`~p2pmtl.graphs.edge_list.EdgeListGraph` built straight into edge arrays. Directed edge ``l -> k`` means agent k receives from l. Every agent is its own
neighbour (self loops are added by :class:`~p2pmtl.core.edges.EdgeIndex`, not stored here).
"""
from __future__ import annotations

import inspect
import tomllib
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import numpy as np
from pydantic import Field

from ..kernels import numba_available
from ..registry import Registry
from ..resources import bundled_dir
from ..validation import plain
from .edge_list import AnyGraph, EdgeListGraph, is_connected
from .geometric import LINEAR_ORDER_MIN_EDGES, pairs_within

if TYPE_CHECKING:
    import networkx as nx

GRAPHS: Registry[Callable[..., AnyGraph]] = Registry("graph family")
"""Graph families. A family declares the range of each parameter in its signature
(``Annotated[int, Field(ge=1)]``), checked where the config is loaded; relations between
parameters (``k < n``) go in a ``check`` function given to ``register``, and the number of nodes
a parameter set gives in ``nodes`` (default: the parameter ``n``)."""

Nodes = Annotated[int, Field(ge=1, description="number of agents")]
Side = Annotated[int, Field(ge=1, description="agents along one side of the grid")]
Positive = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0)]
TOPOLOGY_DIR = bundled_dir("topologies")


def cap_in_neighbours(
    src: np.ndarray, dst: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``cap`` in-neighbours per receiver, chosen uniformly at random (vectorized:
    random keys, sort by receiver then key, keep the first ``cap`` of each receiver).

    The order is exactly ``np.lexsort((keys, dst))`` (ties in the keys broken by edge index),
    so every seeded graph is the one earlier versions built; it is computed with value sorts
    of packed 64-bit integers (key, then receiver, each beside an edge position in the low
    bits), which numpy sorts far faster than ``argsort`` (1,000,000 agents, 35M candidate
    edges: 15.4 -> 3 s measured), and only the kept edges' senders are gathered. From
    :data:`~p2pmtl.graphs.geometric.LINEAR_ORDER_MIN_EDGES` edges, with numba, a counting sort
    on the receiver and a running selection of each receiver's ``cap`` smallest keys give the
    same edges in the same order (:func:`p2pmtl.kernels.edge_order.capped_in_edges`)."""
    e = int(src.size)
    keys = rng.random(e)
    if e == 0:
        return src[:0], dst[:0]
    if e >= LINEAR_ORDER_MIN_EDGES and numba_available():
        from ..kernels.edge_order import capped_in_edges  # numba: large graphs only

        return capped_in_edges(src, dst.astype(np.int64, copy=False), keys, int(cap), int(dst.max()) + 1)
    bits = max((e - 1).bit_length(), 1)  # an edge position fits in `bits` bits
    position = np.arange(e, dtype=np.int64)
    by_key = _argsort_keys(keys, bits, position)
    packed = dst[by_key].astype(np.int64, copy=False)
    packed <<= bits
    packed |= position
    packed.sort()  # by receiver, then by position in key order: all values distinct
    dst_sorted = packed >> bits
    first = np.empty(e, dtype=bool)  # first edge of each receiver's run
    first[0] = True
    np.not_equal(dst_sorted[1:], dst_sorted[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    take = np.minimum(np.diff(starts, append=e), cap)  # kept per receiver
    offset = np.cumsum(take) - take
    kept = np.repeat(starts - offset, take) + np.arange(int(take.sum()), dtype=np.int64)  # sorted positions kept
    return src[by_key[packed[kept] & ((1 << bits) - 1)]], dst_sorted[kept]


def _argsort_keys(keys: np.ndarray, bits: int, position: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for keys in [0, 1): the top ``63 - bits`` bits of
    each key's 53-bit fraction packed above its position (``position = arange(len(keys))``) and
    value-sorted; the few runs of keys that share those top bits (about E^2 / 2^(64 - bits) of
    them) are then put in (full key, position) order by a lexsort of just their members."""
    key_bits = min(53, 63 - bits)
    packed = (keys * float(2 ** 53)).astype(np.int64)
    packed >>= 53 - key_bits
    packed <<= bits
    packed |= position
    packed.sort()
    order = packed & ((1 << bits) - 1)
    packed >>= bits  # the sorted top bits
    same = packed[1:] == packed[:-1]
    if same.any():
        at = np.flatnonzero(same)
        at = np.union1d(at, at + 1)  # sorted positions inside a run (runs are contiguous)
        new_run = np.ones(at.size, dtype=bool)
        inner = at > 0
        new_run[inner] = ~same[at[inner] - 1]
        run = np.cumsum(new_run)
        sub = order[at]
        order[at] = sub[np.lexsort((sub, keys[sub], run))]
    return order


def _need(cond: bool, key: str, params: dict, rule: str) -> None:
    if not cond:
        raise ValueError(f"graph.{key} = {params.get(key)!r}: {rule}")


@GRAPHS.register(
    "random_geometric",
    "agents uniform in [0,box]^2, linked within radius; optional cap on in-neighbours (Li2020)",
)
def random_geometric(
    *,
    n: Nodes,
    radius: Positive = 1.0,
    box: Positive = 3.0,
    max_neighbors: Optional[Annotated[int, Field(ge=1)]] = None,
    directed: bool = True,
    seed: Seed = 0,
) -> EdgeListGraph:
    """Li2020's target-localization network: n agents uniform in [0, box]^2; l is a neighbour
    of k when ||x_l - x_k|| <= radius; each agent keeps at most ``max_neighbors`` of them chosen
    at random (the reference code: 9 plus itself), which makes the graph directed.
    Built straight into edge arrays (an :class:`~p2pmtl.graphs.edge_list.EdgeListGraph` with
    the positions, no networkx objects): 1,000,000 agents in seconds. The pairs within the
    radius come in (i, j) order (:func:`~p2pmtl.graphs.geometric.pairs_within`), so the cap's
    random choice, and the graph, depend on the seed alone."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, box, size=(n, 2))
    pairs = pairs_within(pos, radius)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    if max_neighbors is not None:
        src, dst = cap_in_neighbours(src, dst, max_neighbors, rng)
    if not directed and max_neighbors is None:  # each pair once
        return EdgeListGraph(n, pairs[:, 0], pairs[:, 1], directed=False, pos=pos)
    return EdgeListGraph(n, src, dst, directed=True, pos=pos)


@GRAPHS.register("complete", "every agent linked to every other")
def complete(*, n: Nodes) -> nx.Graph:
    import networkx as nx

    return nx.complete_graph(n)


@GRAPHS.register("ring", "cycle: every agent linked to its two neighbours")
def ring(*, n: Nodes) -> AnyGraph:
    """Edges k - (k + 1) mod n, as arrays (networkx's ``cycle_graph`` below 3 nodes)."""
    if n < 3:
        import networkx as nx

        return nx.cycle_graph(n)
    k = np.arange(n, dtype=np.int64)
    return EdgeListGraph(n, k, (k + 1) % n, directed=False)


def _star_check(p: dict) -> None:
    _need(p["n"] >= 2, "n", p, "a star needs n >= 2 (node 0, the hub or server, and at least one client)")


@GRAPHS.register("star", "node 0 at the hub linked to all others (the server-mode layout)", check=_star_check)
def star(*, n: Nodes) -> nx.Graph:
    import networkx as nx

    return nx.star_graph(n - 1)


def _grid_check(p: dict) -> None:
    if p.get("periodic"):
        for key in ("rows", "cols"):
            _need(p[key] >= 3, key, p, "a periodic grid needs rows >= 3 and cols >= 3")


@GRAPHS.register("grid_2d", "rows x cols lattice (n = rows * cols), 4-neighbourhood", check=_grid_check,
                 nodes=lambda p: p["rows"] * p["cols"])
def grid_2d(*, rows: Side, cols: Side, periodic: bool = False) -> EdgeListGraph:
    """Node ``i * cols + j`` at row i, column j (networkx's ``grid_2d_graph`` numbering), linked
    to its right and lower neighbours (wrapping around when periodic), as arrays."""
    idx = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    right = (idx, np.roll(idx, -1, axis=1)) if periodic else (idx[:, :-1], idx[:, 1:])
    down = (idx, np.roll(idx, -1, axis=0)) if periodic else (idx[:-1, :], idx[1:, :])
    src = np.concatenate([right[0].ravel(), down[0].ravel()])
    dst = np.concatenate([right[1].ravel(), down[1].ravel()])
    return EdgeListGraph(rows * cols, src, dst, directed=False)


@GRAPHS.register("erdos_renyi", "G(n, p): each pair linked with probability p")
def erdos_renyi(*, n: Nodes, p: Probability, directed: bool = False, seed: Seed = 0) -> EdgeListGraph:
    """networkx's ``fast_gnp_random_graph(n, p, seed, directed)``, the same edges, built as
    arrays (:func:`p2pmtl.graphs.random_families.erdos_renyi_arrays`)."""
    from .random_families import erdos_renyi_arrays

    return EdgeListGraph(n, *erdos_renyi_arrays(n, p, seed, directed), directed=directed)


def _ws_check(p: dict) -> None:
    _need(p["k"] < p["n"], "k", p, f"neighbours per node must be < n = {p['n']}")


@GRAPHS.register("watts_strogatz", "small world: ring of k nearest neighbours, rewired with p", check=_ws_check)
def watts_strogatz(*, n: Nodes, k: Annotated[int, Field(ge=1)], p: Probability, seed: Seed = 0) -> AnyGraph:
    """networkx's ``watts_strogatz_graph(n, k, p, seed)``: from
    :data:`~p2pmtl.graphs.random_families.COMPILED_MIN_EDGES` edges the same edges built as
    arrays (:func:`~p2pmtl.graphs.random_families.watts_strogatz_arrays`), below by networkx."""
    import networkx as nx

    from .random_families import COMPILED_MIN_EDGES, watts_strogatz_arrays

    if n * (k // 2) < COMPILED_MIN_EDGES or not numba_available():
        return nx.watts_strogatz_graph(n, k, p, seed=seed)
    return EdgeListGraph(n, *watts_strogatz_arrays(n, k, p, seed), directed=False)


def _ba_check(p: dict) -> None:
    _need(p["m"] < p["n"], "m", p, f"edges per new node must be < n = {p['n']}")


@GRAPHS.register("barabasi_albert", "preferential attachment, m edges per new node (scale-free)", check=_ba_check)
def barabasi_albert(*, n: Nodes, m: Annotated[int, Field(ge=1)], seed: Seed = 0) -> AnyGraph:
    """networkx's ``barabasi_albert_graph(n, m, seed)``: from
    :data:`~p2pmtl.graphs.random_families.COMPILED_MIN_EDGES` edges the same edges built as
    arrays (:func:`~p2pmtl.graphs.random_families.barabasi_albert_arrays`), below by networkx."""
    import networkx as nx

    from .random_families import COMPILED_MIN_EDGES, barabasi_albert_arrays

    if (n - m) * m < COMPILED_MIN_EDGES or not numba_available():
        return nx.barabasi_albert_graph(n, m, seed=seed)
    return EdgeListGraph(n, *barabasi_albert_arrays(n, m, seed), directed=False)


def _file_check(p: dict) -> None:
    from_file(**p)  # parse now: a missing or malformed file is a config error


def _file_nodes(p: dict) -> int:
    return from_file(**p).number_of_nodes()


@GRAPHS.register("file", "read a GraphML (.graphml) or edge-list (.edgelist/.txt) file", check=_file_check,
                 nodes=_file_nodes)
def from_file(*, path: str, directed: bool = False) -> nx.Graph:
    """A graph file; any problem (missing, unreadable, malformed, empty) is a ``ValueError``
    naming ``graph.path`` and the parser's complaint."""
    import networkx as nx

    p = Path(path)
    if not p.is_file() and not p.is_absolute() and p.parent in (Path("."), Path("topologies")):
        from ..resources import bundled_dir  # a bundled graph file, found from any folder

        bundled = bundled_dir("topologies") / p.name
        p = bundled if bundled.is_file() else p
    if not p.is_file():
        raise ValueError(f"graph.path = {path!r}: no such file (expected GraphML or edge list)")
    try:
        if p.suffix.lower() == ".graphml":
            g = nx.read_graphml(p)
            if directed and not g.is_directed():
                g = g.to_directed()
        else:
            g = nx.read_edgelist(p, create_using=nx.DiGraph if directed else nx.Graph, nodetype=int)
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    except Exception as e:  # parsers raise many types (ParseError, TypeError, KeyError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"graph.path = {path!r}: cannot read it as "
                         f"{'GraphML' if p.suffix.lower() == '.graphml' else 'an edge list of integer ids'}: "
                         f"{msg}") from None
    if g.number_of_nodes() == 0:
        raise ValueError(f"graph.path = {path!r}: the file holds no nodes")
    return g


def family_parameters(family: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(GRAPHS.get(family)).parameters)


def _parameter_hints(fn: Callable) -> dict[str, Any]:
    """The evaluated annotations of ``fn``'s parameters (not its return annotation, which may
    name a module imported for type checking only, such as networkx here)."""
    ann = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "return"}
    return typing.get_type_hints(types.SimpleNamespace(__annotations__=ann, __globals__=getattr(fn, "__globals__", {})),
                                 include_extras=True)


def check_family_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` of ``family`` (unknown keys, missing keys, each value's type and
    range from the signature, then the family's ``check``); return them with defaults filled.
    Every error is a ``ValueError`` naming ``graph.<key>``, the value and what is allowed."""
    from pydantic import TypeAdapter, ValidationError

    allowed = family_parameters(family)
    for key in params:
        if key not in allowed:
            raise ValueError(f"graph.{key}: not a parameter of family {family!r}; allowed: {', '.join(allowed)}")
    missing = [k for k, p in allowed.items() if p.default is p.empty and k not in params]
    if missing:
        raise ValueError(f"graph family {family!r} needs {', '.join('graph.' + k for k in missing)}")
    hints = _parameter_hints(GRAPHS.get(family))
    full = {k: p.default for k, p in allowed.items() if p.default is not p.empty}
    for key, value in params.items():
        ann = hints.get(key, allowed[key].annotation)
        if ann is inspect.Parameter.empty:
            full[key] = value
            continue
        try:
            full[key] = TypeAdapter(ann).validate_python(value, strict=False)
        except ValidationError as e:
            raise ValueError(f"graph.{key} = {value!r}: {plain(e.errors()[0]['msg'])}") from None
    extra = GRAPHS.entry(family).extra or {}
    if extra.get("check") is not None:
        extra["check"](full)
    return full


def family_nodes(family: str, params: dict[str, Any]) -> Optional[int]:
    """The number of nodes ``params`` give, when known before the graph is drawn."""
    extra = GRAPHS.entry(family).extra or {}
    if extra.get("nodes") is not None:
        return int(extra["nodes"](params))
    n = params.get("n")
    return int(n) if isinstance(n, int) else None


def build_graph(family: str, params: dict[str, Any], seed: int) -> AnyGraph:
    """Build a graph; ``seed`` is used where the family takes one and ``params`` sets none."""
    allowed = family_parameters(family)
    kwargs = dict(params)
    if "seed" in allowed and "seed" not in kwargs:
        kwargs["seed"] = seed
    g = GRAPHS.get(family)(**kwargs)
    check_graph(g)
    return g


def check_graph(g: AnyGraph) -> None:
    """An empty graph is an error; a disconnected one a warning."""
    if g.number_of_nodes() == 0:
        raise ValueError("graph has no nodes")
    if not is_connected(g):
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


def positions(g: AnyGraph) -> Optional[np.ndarray]:
    """Node positions ``[n, 2]`` if every node has a ``pos`` attribute (an array graph: its
    ``pos``), else None."""
    if isinstance(g, EdgeListGraph):
        return None if g.pos is None else np.asarray(g.pos, dtype=np.float64)
    import networkx as nx

    pos = nx.get_node_attributes(g, "pos")
    if len(pos) != g.number_of_nodes():
        return None
    return np.array([pos[k] for k in range(g.number_of_nodes())], dtype=np.float64)
