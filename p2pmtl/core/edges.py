"""The graph as a destination-sorted edge list: the layout every batched step works on.

An edge ``e`` carries a message from ``src[e]`` to ``dst[e]``; every node has a self edge.
Independent runs are batched as a disjoint union (node ``r * n + k`` is agent ``k`` of run ``r``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class EdgeIndex:
    src: torch.Tensor  # [E] long, sender
    dst: torch.Tensor  # [E] long, receiver, sorted ascending
    self_edge: torch.Tensor  # [N] long, index of edge k->k for every node k
    num_nodes: int
    self_of_dst: torch.Tensor = field(init=False, repr=False)  # [E] self edge of each receiver
    offsets: torch.Tensor = field(init=False, repr=False)  # [N+1] first edge of each receiver

    def __post_init__(self) -> None:
        object.__setattr__(self, "self_of_dst", self.self_edge[self.dst])
        offsets = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.bincount(self.dst, minlength=self.num_nodes), 0)
        object.__setattr__(self, "offsets", offsets)

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    @staticmethod
    def from_arrays(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> "EdgeIndex":
        """Build from raw arrays: adds missing self loops, drops duplicates, sorts by destination."""
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        loops = np.arange(num_nodes, dtype=np.int64)
        src = np.concatenate([src, loops])
        dst = np.concatenate([dst, loops])
        key = dst * num_nodes + src
        key.sort()  # by (dst, src); numpy's default sort, then duplicates dropped: the result of
        distinct = np.empty(key.size, dtype=bool)  # np.unique, 100x faster at 10M edges (measured)
        distinct[:1] = True
        np.not_equal(key[1:], key[:-1], out=distinct[1:])
        dst, src = np.divmod(key[distinct], num_nodes)
        is_self = src == dst
        self_edge = np.empty(num_nodes, dtype=np.int64)
        self_edge[dst[is_self]] = np.nonzero(is_self)[0]
        return EdgeIndex(
            torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(self_edge), num_nodes
        )

    @staticmethod
    def from_graph(graph: nx.Graph) -> "EdgeIndex":
        """Nodes must be 0..n-1. Undirected edges become two directed ones; edge l->k means
        k listens to l (l is in k's neighbourhood N_k). A graph held as edge arrays (anything
        with ``edge_arrays()``, e.g. :class:`~p2pmtl.graphs.edge_list.EdgeListGraph`) is read
        without networkx."""
        n = graph.number_of_nodes()
        if hasattr(graph, "edge_arrays"):
            return EdgeIndex.from_arrays(*graph.edge_arrays(), n)
        if sorted(graph.nodes) != list(range(n)):
            raise ValueError("graph nodes must be the integers 0..n-1")
        e = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
        src, dst = e[:, 0], e[:, 1]
        if not graph.is_directed():
            src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        return EdgeIndex.from_arrays(src, dst, n)

    @staticmethod
    def disjoint_union(parts: list["EdgeIndex"]) -> "EdgeIndex":
        srcs, dsts, selfs, offset, eoff = [], [], [], 0, 0
        for p in parts:
            srcs.append(p.src + offset)
            dsts.append(p.dst + offset)
            selfs.append(p.self_edge + eoff)
            offset += p.num_nodes
            eoff += p.num_edges
        return EdgeIndex(torch.cat(srcs), torch.cat(dsts), torch.cat(selfs), offset)

    def in_degree(self) -> torch.Tensor:
        return torch.bincount(self.dst, minlength=self.num_nodes)

    def segment_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-edge values ``[E, ...]`` into their receivers ``[N, ...]``: a segment
        reduction over the destination-sorted edges (2x faster than ``index_add_`` here)."""
        return torch.segment_reduce(values, "sum", offsets=self.offsets, axis=0)

    def gather(self, node_values: torch.Tensor, side: str = "src") -> torch.Tensor:
        """Per-edge copies ``[E, ...]`` of per-node values ``[N, ...]`` (``index_select``:
        3x faster than ``x[idx]`` here)."""
        return torch.index_select(node_values, 0, self.src if side == "src" else self.dst)

    def dense(self, weights: torch.Tensor) -> torch.Tensor:
        """Dense ``[N, N]`` matrix A with ``A[l, k] = weights[e]`` for edge l->k (small graphs only)."""
        a = weights.new_zeros((self.num_nodes, self.num_nodes))
        a[self.src, self.dst] = weights
        return a
