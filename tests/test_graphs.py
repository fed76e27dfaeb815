"""Graph families, named topologies and the edge-list layout."""
import networkx as nx
import numpy as np
import pytest
import torch

from p2pmtl.core.edges import EdgeIndex
from p2pmtl.graphs.edge_list import EdgeListGraph, is_connected, node_degrees
from p2pmtl.graphs.families import GRAPHS, build_graph, load_topology, named_topologies, positions


def test_paper_graph_caps_in_neighbours_and_keeps_positions():
    g = build_graph("random_geometric", {"n": 100, "radius": 1.0, "box": 3.0, "max_neighbors": 9}, seed=3)
    assert g.is_directed() and g.number_of_nodes() == 100
    assert np.bincount(g.dst, minlength=100).max() <= 9
    pos = positions(g)
    assert pos.shape == (100, 2) and (pos >= 0).all() and (pos <= 3).all()
    assert (np.linalg.norm(pos[g.src] - pos[g.dst], axis=1) <= 1.0 + 1e-12).all()
    full = build_graph("random_geometric", {"n": 100, "radius": 1.0, "box": 3.0}, seed=3)
    assert np.bincount(full.dst, minlength=100).max() > 9  # the cap is what bounds it
    # every pair within the radius is an edge of the uncapped graph (both ways: directed)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    near = {(int(a), int(b)) for a, b in zip(*np.nonzero((d <= 1.0) & ~np.eye(100, dtype=bool)))}
    assert set(zip(full.src.tolist(), full.dst.tolist())) == near


@pytest.mark.parametrize("family,params,n", [
    ("complete", {"n": 6}, 6), ("ring", {"n": 8}, 8), ("star", {"n": 5}, 5),
    ("grid_2d", {"rows": 3, "cols": 4}, 12), ("erdos_renyi", {"n": 30, "p": 0.3}, 30),
    ("watts_strogatz", {"n": 20, "k": 4, "p": 0.1}, 20), ("barabasi_albert", {"n": 20, "m": 2}, 20),
])
def test_families(family, params, n):
    g = build_graph(family, params, seed=0)
    assert g.number_of_nodes() == n and EdgeIndex.from_graph(g).num_nodes == n
    assert sorted(g.to_networkx().nodes if isinstance(g, EdgeListGraph) else g.nodes) == list(range(n))


def _edge_set(g) -> set:
    e = EdgeIndex.from_graph(g)
    return set(zip(e.src.tolist(), e.dst.tolist()))


@pytest.mark.parametrize("family,params,reference", [
    ("ring", {"n": 1}, lambda: nx.cycle_graph(1)), ("ring", {"n": 2}, lambda: nx.cycle_graph(2)),
    ("ring", {"n": 3}, lambda: nx.cycle_graph(3)), ("ring", {"n": 11}, lambda: nx.cycle_graph(11)),
    ("grid_2d", {"rows": 1, "cols": 5}, lambda: nx.grid_2d_graph(1, 5)),
    ("grid_2d", {"rows": 4, "cols": 6}, lambda: nx.grid_2d_graph(4, 6)),
    ("grid_2d", {"rows": 3, "cols": 3, "periodic": True}, lambda: nx.grid_2d_graph(3, 3, periodic=True)),
    ("grid_2d", {"rows": 5, "cols": 4, "periodic": True}, lambda: nx.grid_2d_graph(5, 4, periodic=True)),
])
def test_array_families_are_networkx_graphs(family, params, reference):
    """Ring and grid are built as edge arrays; their edges (and node numbering) are those of
    networkx's generators, so configs give the graphs they gave before."""
    ref = nx.convert_node_labels_to_integers(reference())
    assert _edge_set(build_graph(family, params, seed=0)) == _edge_set(ref)


def test_edge_list_graph_helpers_match_networkx():
    """Degrees, connectivity and the networkx view of an array graph."""
    rng = np.random.default_rng(0)
    for directed in (True, False):
        for m in (5, 40):  # sparse (disconnected) and dense
            src, dst = rng.integers(0, 30, m), rng.integers(0, 30, m)
            keep = src != dst
            g = EdgeListGraph(30, src[keep], dst[keep], directed=directed)
            ref = g.to_networkx()
            assert ref.is_directed() == directed and ref.number_of_nodes() == 30
            assert np.array_equal(node_degrees(g), node_degrees(ref))
            connected = nx.is_weakly_connected(ref) if directed else nx.is_connected(ref)
            assert is_connected(g) == connected
            assert _edge_set(g) == _edge_set(ref)
    with pytest.raises(ValueError, match="node ids 0..2"):
        EdgeListGraph(3, np.array([0]), np.array([3]))


def test_disconnected_array_graph_warns():
    from p2pmtl.graphs.families import check_graph

    with pytest.warns(UserWarning, match="not connected"):
        check_graph(EdgeListGraph(4, np.array([0]), np.array([1]), directed=False))


def test_from_arrays_drops_duplicates_and_sorts_by_receiver():
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, 20, 500), rng.integers(0, 20, 500)
    e = EdgeIndex.from_arrays(src, dst, 20)
    key = np.unique(np.concatenate([dst, np.arange(20)]) * 20 + np.concatenate([src, np.arange(20)]))
    assert np.array_equal(e.dst.numpy() * 20 + e.src.numpy(), key)


def test_star_hub_is_node_zero():
    g = build_graph("star", {"n": 5}, seed=0)
    assert g.degree[0] == 4


def test_file_loading(tmp_path):
    g = nx.path_graph(5)
    nx.write_graphml(g, tmp_path / "g.graphml")
    nx.write_edgelist(g, tmp_path / "g.edgelist", data=False)
    for name in ("g.graphml", "g.edgelist"):
        h = build_graph("file", {"path": str(tmp_path / name)}, seed=0)
        assert h.number_of_nodes() == 5 and h.number_of_edges() == 4
    with pytest.raises(ValueError, match="graph.path = .*missing.graphml.*no such file"):
        build_graph("file", {"path": str(tmp_path / "missing.graphml")}, seed=0)


def test_empty_graph_is_error_and_disconnected_warns(tmp_path):
    (tmp_path / "empty.edgelist").write_text("")
    with pytest.raises(ValueError, match="no nodes"):
        build_graph("file", {"path": str(tmp_path / "empty.edgelist")}, seed=0)
    with pytest.warns(UserWarning, match="not connected"):
        build_graph("erdos_renyi", {"n": 20, "p": 0.0}, seed=0)


def test_edge_index_adds_self_loops_and_sorts_by_receiver():
    e = EdgeIndex.from_graph(nx.path_graph(4))
    assert e.num_edges == 6 + 4
    assert torch.equal(e.dst, torch.sort(e.dst)[0])
    assert torch.equal(e.src[e.self_edge], torch.arange(4)) and torch.equal(e.dst[e.self_edge], torch.arange(4))
    assert torch.equal(e.in_degree(), torch.tensor([2, 3, 3, 2]))
    u = EdgeIndex.disjoint_union([e, e])
    assert u.num_nodes == 8 and torch.equal(u.src[u.self_edge], torch.arange(8))


def test_directed_edge_means_receiver_listens_to_sender():
    g = nx.DiGraph([(1, 0)])
    e = EdgeIndex.from_graph(g)
    pairs = set(zip(e.src.tolist(), e.dst.tolist()))
    assert pairs == {(0, 0), (1, 1), (1, 0)}


def test_named_topologies_are_valid():
    for name in named_topologies():
        spec = load_topology(name)
        g = build_graph(spec.pop("family"), spec, seed=0)
        assert g.number_of_nodes() > 0
    assert "li2020_target" in named_topologies()
    assert set(GRAPHS.names()) >= {"random_geometric", "complete", "ring", "star", "grid_2d",
                                   "erdos_renyi", "watts_strogatz", "barabasi_albert", "file"}


def test_byzantine_placement_on_highest_degree_nodes():
    import networkx as nx

    from p2pmtl.engine.world import choose_byzantine

    g = nx.star_graph(5)
    g.add_edge(1, 2)
    assert list(choose_byzantine(2, 6, 0, placement="degree", graph=g)) == [0, 1] or \
        list(choose_byzantine(2, 6, 0, placement="degree", graph=g)) == [0, 2]
    assert list(choose_byzantine(1, 6, 0, placement="degree", graph=g)) == [0]
    picks = {tuple(choose_byzantine(2, 6, s, placement="degree", graph=g)) for s in range(20)}
    assert picks == {(0, 1), (0, 2)}  # the tie between nodes 1 and 2 is broken at random


def test_cap_in_neighbours_keeps_lexsort_order():
    """The sorts give np.lexsort's permutation, so capped graphs are the ones earlier versions
    built."""
    import numpy as np
    from p2pmtl.graphs.families import cap_in_neighbours

    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, 50, 2000), rng.integers(0, 50, 2000)
    keys = np.random.default_rng(7).random(2000)
    order = np.lexsort((keys, dst))
    s, d = src[order], dst[order]
    rank = np.arange(d.size) - np.searchsorted(d, d, side="left")
    got = cap_in_neighbours(src, dst, 9, np.random.default_rng(7))
    assert np.array_equal(got[0], s[rank < 9]) and np.array_equal(got[1], d[rank < 9])


def test_cap_in_neighbours_breaks_key_ties_by_edge_order():
    """Tied keys (forced here: 4 distinct values) keep np.lexsort's order, ties by edge index."""
    from p2pmtl.graphs.families import cap_in_neighbours

    class CoarseKeys:
        def random(self, size):
            return np.random.default_rng(2).integers(0, 4, size) / 4.0

    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, 30, 3000), rng.integers(0, 30, 3000)
    keys = CoarseKeys().random(3000)
    order = np.lexsort((keys, dst))
    s, d = src[order], dst[order]
    rank = np.arange(d.size) - np.searchsorted(d, d, side="left")
    got = cap_in_neighbours(src, dst, 5, CoarseKeys())
    assert np.array_equal(got[0], s[rank < 5]) and np.array_equal(got[1], d[rank < 5])


@pytest.mark.parametrize("levels", [4, 2 ** 20, 2 ** 40])
def test_packed_key_argsort_is_the_stable_argsort(levels):
    """Keys sharing their top bits (forced: only 23 key bits kept beside 40 position bits) are
    put back in (key, position) order: the result is numpy's stable argsort."""
    from p2pmtl.graphs.families import _argsort_keys

    keys = np.random.default_rng(0).integers(0, levels, 20000) / levels
    assert np.array_equal(_argsort_keys(keys, 40, np.arange(keys.size)), np.argsort(keys, kind="stable"))
    assert np.array_equal(_argsort_keys(keys, 15, np.arange(keys.size)), np.argsort(keys, kind="stable"))


def _tied_points(rng, n: int, step: float) -> np.ndarray:
    """Points on a grid of spacing ``step``: many pairs exactly at the radius."""
    return np.round(rng.uniform(0, 3.0, (n, 2)) / step) * step


@pytest.mark.parametrize("seed", range(6))
def test_pairs_within_blocks_and_kd_tree_agree_on_ties(seed):
    from p2pmtl.graphs import geometric

    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 800))
    step = float(rng.choice([0.1, 0.25, 1 / 3]))
    pos = _tied_points(rng, n, step)
    for radius in (step, 2 * step, float(np.sqrt(2) * step), float(np.sqrt(5) * step)):
        blocks = geometric._pairs_by_blocks(pos, radius)
        assert np.array_equal(blocks, geometric._pairs_by_kd_tree(pos, radius))
        # the definition, by hand: i < j, sum of two squares <= r * r, sorted by (i, j)
        d2 = (pos[:, None, 0] - pos[None, :, 0]) ** 2 + (pos[:, None, 1] - pos[None, :, 1]) ** 2
        i, j = np.nonzero(np.triu(d2 <= radius * radius, k=1))
        assert np.array_equal(blocks, np.stack([i, j], axis=1))


def test_random_geometric_graph_is_the_same_whichever_way_pairs_are_found(monkeypatch):
    from p2pmtl.graphs import geometric

    params = {"n": 300, "radius": 0.5, "box": 3.0, "max_neighbors": 4}
    small = build_graph("random_geometric", params, seed=7)
    monkeypatch.setattr(geometric, "BRUTE_FORCE_MAX", 0)  # the KD-tree for every size
    large = build_graph("random_geometric", params, seed=7)
    assert np.array_equal(small.src, large.src) and np.array_equal(small.dst, large.dst)
    assert np.array_equal(small.pos, large.pos)


@pytest.mark.parametrize("seed", range(4))
def test_linear_time_orders_are_the_sorts(seed):
    """The compiled counting sorts (p2pmtl.kernels.edge_order) give the sorts' results exactly:
    the pairs in (i, j) order from either end of each pair; the capped in-edges in
    np.lexsort((keys, dst)) order, ties in the keys (forced: 3 levels) by edge index, with
    receivers that have no in-edge, fewer than cap, exactly cap and many more."""
    pytest.importorskip("numba")
    from p2pmtl.kernels.edge_order import capped_in_edges, sorted_pairs

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    a, b = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    keep = a != b
    a, b = a[keep], b[keep]
    i, j = np.minimum(a, b), np.maximum(a, b)
    order = np.argsort(i * n + j, kind="stable")
    assert np.array_equal(sorted_pairs(a, b, n), np.stack([i[order], j[order]], axis=1))
    assert sorted_pairs(a[:0], b[:0], n).shape == (0, 2)

    src, dst = rng.integers(0, 1000, 4000), rng.integers(0, n - 2, 4000) ** 2 % (n - 1)  # skewed, node n-1 none
    for keys in (rng.random(4000), rng.integers(0, 3, 4000) / 3.0):
        lex = np.lexsort((keys, dst))
        rank = np.arange(dst.size) - np.searchsorted(dst[lex], dst[lex], side="left")
        for cap in (1, 5, 9, 400):
            got_src, got_dst = capped_in_edges(src, dst, keys, cap, n)
            assert np.array_equal(got_src, src[lex][rank < cap]) and np.array_equal(got_dst, dst[lex][rank < cap])


def test_large_random_geometric_graphs_are_the_same_with_the_linear_orders(monkeypatch):
    """Above LINEAR_ORDER_MIN_EDGES the pairs and the cap run compiled: the same graph as
    numpy's sorts (threshold lowered so that a small graph takes either way)."""
    pytest.importorskip("numba")
    from p2pmtl.graphs import families, geometric

    params = {"n": 5000, "radius": 0.08, "box": 3.0, "max_neighbors": 3}
    monkeypatch.setattr(geometric, "BRUTE_FORCE_MAX", 0)
    sorted_way = build_graph("random_geometric", params, seed=11)
    monkeypatch.setattr(geometric, "LINEAR_ORDER_MIN_EDGES", 1)
    monkeypatch.setattr(families, "LINEAR_ORDER_MIN_EDGES", 1)
    linear_way = build_graph("random_geometric", params, seed=11)
    assert sorted_way.number_of_edges() > 5000
    assert np.array_equal(sorted_way.src, linear_way.src) and np.array_equal(sorted_way.dst, linear_way.dst)


def test_main_topology_builds_without_scipy():
    """scipy.spatial took about 0.23 s of the main job's start-up: the 100-agent graph and its
    connectivity check are numpy only."""
    import subprocess
    import sys

    code = ("import sys\nfrom p2pmtl.graphs.families import build_graph, load_topology\n"
            "spec = load_topology('li2020_target'); family = spec.pop('family'); spec.pop('description', None)\n"
            "g = build_graph(family, spec, seed=0)\n"
            "assert g.number_of_edges() > 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("seed", range(5))
def test_component_labels_match_networkx(seed):
    from p2pmtl.graphs.edge_list import component_labels

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    e = int(rng.integers(0, 2 * n))
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    labels = component_labels(n, src, dst)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    expected = np.empty(n, dtype=np.int64)
    for comp in nx.connected_components(g):
        expected[list(comp)] = min(comp)
    assert np.array_equal(labels, expected)
    assert is_connected(EdgeListGraph(n, src, dst)) == nx.is_connected(g)


def test_is_connected_hands_a_slow_spread_to_scipy():
    """A path with scattered ids needs many spreading rounds: past the cap, scipy decides."""
    from p2pmtl.graphs.edge_list import SPREAD_ROUNDS, component_labels

    perm = np.random.default_rng(0).permutation(5000)
    assert component_labels(5000, perm[:-1], perm[1:], SPREAD_ROUNDS) is None
    assert is_connected(EdgeListGraph(5000, perm[:-1], perm[1:]))
    assert not is_connected(EdgeListGraph(5000, perm[:-2], perm[1:-1]))  # the last node cut off
