"""Benchmark of the random graph families built as edge arrays (``p2pmtl bench --only graphs``):
seconds from the family's parameters to the engine's edge index, ours
(:mod:`p2pmtl.graphs.random_families`, the same graphs as networkx) against networkx's
generator and its graph object (the naive way), at average degree 10; and the random geometric
family at the scale benchmark's density, its pair order and in-neighbour cap by compiled
counting sorts (:mod:`p2pmtl.kernels.edge_order`) against numpy's sorts of packed keys, the
same graph. Figures are printed, never asserted."""
from __future__ import annotations

import math
import resource
import time
from typing import Callable

import networkx as nx

from ..core.edges import EdgeIndex
from .common import bench_config
from ..graphs import families, geometric
from ..graphs.edge_list import EdgeListGraph
from ..graphs import random_families as rf


def _families(n: int) -> dict[str, tuple[Callable, Callable]]:
    """Per family: (ours, networkx's), both returning a graph the engine reads; average degree
    10 (less on graphs too small for it)."""
    p = min(1.0, 10 / max(n - 1, 1))
    k, m = min(10, n - 1), min(5, n - 1)
    out = {f"erdos_renyi p={p:.3g}": (lambda: EdgeListGraph(n, *rf.erdos_renyi_arrays(n, p, 0, False), directed=False),
                                      lambda: nx.fast_gnp_random_graph(n, p, seed=0))}
    if k >= 1:
        out[f"watts_strogatz k={k} p=0.1"] = (
            lambda: EdgeListGraph(n, *rf.watts_strogatz_arrays(n, k, 0.1, 0), directed=False),
            lambda: nx.watts_strogatz_graph(n, k, 0.1, seed=0))
        out[f"barabasi_albert m={m}"] = (lambda: EdgeListGraph(n, *rf.barabasi_albert_arrays(n, m, 0), directed=False),
                                         lambda: nx.barabasi_albert_graph(n, m, seed=0))
    return out


def _timed(build: Callable) -> tuple[float, int]:
    t = time.perf_counter()
    edges = EdgeIndex.from_graph(build()).num_edges
    return time.perf_counter() - t, edges


def graph_build_times(sizes: list[int], networkx_max: int) -> list[dict]:
    """Per family and size: seconds to the edge index, ours and (up to ``networkx_max``
    agents) networkx's; directed edges of the index (self loops included)."""
    for ours, _ in _families(100).values():  # untimed: numba's import and the passes' cache load
        ours()
    out = []
    for n in sizes:
        for name, (ours, naive) in _families(n).items():
            ours_s, edges = _timed(ours)
            naive_s = _timed(naive)[0] if n <= networkx_max else math.nan
            out.append({"family": name, "agents": n, "edges": edges, "ours_s": ours_s, "networkx_s": naive_s})
    return out


def geometric_order_times(sizes: list[int]) -> list[dict]:
    """Per size: seconds to build the random geometric graph of the scale benchmark
    (:func:`~p2pmtl.bench.common.bench_config`: Li2020's density, cap 9, directed) with the pair order and the cap by
    the compiled counting sorts (the default from
    :data:`~p2pmtl.graphs.geometric.LINEAR_ORDER_MIN_EDGES` edges) and by numpy's sorts (the
    threshold lifted), and whether both built the same edges. Alternated, compiled first, after
    an untimed call of each kernel, of the KD-tree and of the family (imports, numba's cache load)."""
    import numpy as np
    from scipy.spatial import cKDTree

    from ..kernels.edge_order import capped_in_edges, sorted_pairs

    cKDTree(np.zeros((4, 2))).query_pairs(1.0, output_type="ndarray")
    sorted_pairs(np.array([0, 1]), np.array([1, 2]), 3)
    capped_in_edges(np.array([0, 1]), np.array([1, 2]), np.array([0.5, 0.25]), 1, 3)
    small = bench_config(1000, 0).graph
    families.build_graph(small.family, small.params, seed=0)  # the family's own first-call costs
    out = []
    for n in sizes:
        graph = bench_config(n, 0).graph  # the scale benchmark's world
        times, graphs = {}, {}
        for way, threshold in (("compiled", geometric.LINEAR_ORDER_MIN_EDGES), ("numpy sorts", 1 << 62)):
            saved = geometric.LINEAR_ORDER_MIN_EDGES, families.LINEAR_ORDER_MIN_EDGES
            geometric.LINEAR_ORDER_MIN_EDGES = families.LINEAR_ORDER_MIN_EDGES = threshold
            try:
                t = time.perf_counter()
                graphs[way] = families.build_graph(graph.family, graph.params, seed=0)
                times[way] = time.perf_counter() - t
            finally:
                geometric.LINEAR_ORDER_MIN_EDGES, families.LINEAR_ORDER_MIN_EDGES = saved
        a, b = graphs["compiled"], graphs["numpy sorts"]
        same = bool((a.src == b.src).all() and (a.dst == b.dst).all()) if a.src.shape == b.src.shape else False
        out.append({"agents": n, "edges": int(a.src.size), "compiled_s": times["compiled"],
                    "numpy_s": times["numpy sorts"], "same": same})
    return out


def main(sizes: list[int], networkx_max: int) -> None:
    print(f"\nrandom graph families: parameters -> edge index, ours (edge arrays, networkx's graphs) vs networkx "
          f"(up to {networkx_max:,} agents)")
    print(f"{'family':<28} {'agents':>9} {'edges':>10} {'ours s':>8} {'networkx s':>11} {'networkx/ours':>14}")
    for r in graph_build_times(sizes, networkx_max):
        ratio = r["networkx_s"] / r["ours_s"]
        print(f"{r['family']:<28} {r['agents']:>9,} {r['edges']:>10,} {r['ours_s']:>8.2f} {r['networkx_s']:>11.2f} "
              f"{ratio:>13.1f}x")
    print("\nrandom geometric (scale benchmark density, cap 9): pair order and in-neighbour cap by compiled counting "
          "sorts vs numpy's sorts (from about 1M pairs; the same graph)")
    print(f"{'agents':>9} {'edges':>10} {'compiled s':>11} {'numpy s':>8} {'numpy/compiled':>15} {'same':>5}")
    for r in geometric_order_times([n for n in sizes if n >= 1000]):
        print(f"{r['agents']:>9,} {r['edges']:>10,} {r['compiled_s']:>11.2f} {r['numpy_s']:>8.2f} "
              f"{r['numpy_s'] / r['compiled_s']:>14.2f}x {str(r['same']):>5}")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
