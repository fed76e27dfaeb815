"""Graphs held as edge arrays: large generated graphs without per-edge Python objects.

A networkx graph stores a dict per node and per edge: building the 1,000,000-agent random
geometric graph through it took 49 of the 65 s of set-up. :class:`EdgeListGraph` holds the
same graph as two integer arrays (and the node positions when the family has them), which is
all the batched engine reads (:meth:`p2pmtl.core.edges.EdgeIndex.from_graph`). It answers
the few questions the rest of the package asks a graph (``number_of_nodes``, ``is_directed``,
``get_edge_data``) and converts to networkx on demand (:meth:`EdgeListGraph.to_networkx`) for
anything else. networkx stays the interface for user graphs, files and small families.

The helpers :func:`node_degrees` and :func:`is_connected` work on both kinds of graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True, eq=False)
class EdgeListGraph:
    """``n`` nodes 0..n-1 and edges ``src[i] -> dst[i]`` (int64 arrays, no self loops needed;
    an undirected graph lists each edge once, either way round). ``pos``: ``[n, 2]`` node
    positions or None."""

    n: int
    src: np.ndarray
    dst: np.ndarray
    directed: bool = True
    pos: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        src = np.ascontiguousarray(self.src, dtype=np.int64)
        dst = np.ascontiguousarray(self.dst, dtype=np.int64)
        if src.shape != dst.shape or src.ndim != 1:
            raise ValueError(f"edge arrays must be one-dimensional and of one length; got {src.shape} and {dst.shape}")
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.n):
            raise ValueError(f"edge endpoints must be node ids 0..{self.n - 1}")
        if self.pos is not None and np.shape(self.pos) != (self.n, 2):
            raise ValueError(f"pos must be [n, 2] = [{self.n}, 2]; got {np.shape(self.pos)}")
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)

    # the part of the networkx interface the package uses
    def number_of_nodes(self) -> int:
        return self.n

    def number_of_edges(self) -> int:
        return int(self.src.size)

    def is_directed(self) -> bool:
        return self.directed

    def get_edge_data(self, u: int, v: int, default=None):
        """Edge attributes: an array graph has none (``default``)."""
        return default

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed edges ``(src, dst)``: an undirected edge appears both ways."""
        if self.directed:
            return self.src, self.dst
        return np.concatenate([self.src, self.dst]), np.concatenate([self.dst, self.src])

    def to_networkx(self) -> nx.Graph:
        """The same graph as a networkx (Di)Graph, positions in the node attribute ``pos``
        (slow for millions of edges: for small graphs and figures)."""
        import networkx as nx

        g: nx.Graph = nx.DiGraph() if self.directed else nx.Graph()
        g.add_nodes_from(range(self.n))
        g.add_edges_from(zip(self.src.tolist(), self.dst.tolist()))
        if self.pos is not None:
            nx.set_node_attributes(g, {k: (float(p[0]), float(p[1])) for k, p in enumerate(self.pos)}, "pos")
        return g


AnyGraph = Union["nx.Graph", EdgeListGraph]  # networkx is imported where a graph needs it


def node_degrees(g: AnyGraph) -> np.ndarray:
    """Per node, in-degree + out-degree (directed) or degree (undirected), self loops not
    counted: the number of non-loop edge ends at each node."""
    if isinstance(g, EdgeListGraph):
        src, dst = g.src, g.dst
        if not g.directed:  # (a, b) and (b, a) are one edge
            src, dst = np.minimum(src, dst), np.maximum(src, dst)
        key = src[src != dst] * g.n + dst[src != dst]
        key.sort()
        key = key[np.r_[True, key[1:] != key[:-1]]] if key.size else key  # repeated edges count once
        src, dst = np.divmod(key, g.n)
        return (np.bincount(src, minlength=g.n) + np.bincount(dst, minlength=g.n)).astype(np.float64)
    n = g.number_of_nodes()
    return np.array([g.degree(k) - 2 * g.has_edge(k, k) for k in range(n)], dtype=np.float64)


SMALL_GRAPH_EDGES = 1 << 16
"""Array graphs with at most this many edges try numpy's label spreading first (no scipy import)."""
SPREAD_ROUNDS = 64
"""Rounds of label spreading before :func:`is_connected` hands over to scipy (long paths with
scattered ids need many)."""


def component_labels(n: int, src: np.ndarray, dst: np.ndarray, max_rounds: Optional[int] = None
                     ) -> Optional[np.ndarray]:
    """Per node, the smallest node id of its weakly connected component: labels spread along
    the edges (both ways) by a minimum, then pointer jumping, until nothing changes (rounds of
    vectorized numpy, no Python loop over nodes or edges). None when ``max_rounds`` rounds did
    not settle them."""
    labels = np.arange(n, dtype=np.int64)
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        rounds += 1
        low = np.minimum(labels[src], labels[dst])
        new = labels.copy()
        np.minimum.at(new, src, low)
        np.minimum.at(new, dst, low)
        new = new[new]  # a label is a node of the same component with a smaller or equal id
        if np.array_equal(new, labels):
            return labels
        labels = new
    return None


def is_connected(g: AnyGraph) -> bool:
    """Weakly connected (directed) or connected (undirected). Array graphs: numpy's label
    spreading (:func:`component_labels`) for up to :data:`SMALL_GRAPH_EDGES` edges and
    :data:`SPREAD_ROUNDS` rounds, else scipy's sparse connected components (no Python loop
    over nodes either way)."""
    if isinstance(g, EdgeListGraph):
        if g.n <= 1:
            return g.n == 1
        if g.src.size <= SMALL_GRAPH_EDGES:
            labels = component_labels(g.n, g.src, g.dst, SPREAD_ROUNDS)
            if labels is not None:
                return bool((labels == 0).all())
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        adj = coo_matrix((np.ones(g.src.size, dtype=np.int8), (g.src, g.dst)), shape=(g.n, g.n))
        count, _ = connected_components(adj, directed=True, connection="weak")
        return count == 1
    import networkx as nx

    return nx.is_weakly_connected(g) if g.is_directed() else nx.is_connected(g)
