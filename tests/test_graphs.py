"""Graph families, named topologies and the edge-list layout."""
import networkx as nx
import numpy as np
import pytest
import torch

from p2pmtl.core.edges import EdgeIndex
from p2pmtl.graphs.families import GRAPHS, build_graph, load_topology, named_topologies, positions


def test_paper_graph_caps_in_neighbours_and_keeps_positions():
    g = build_graph("random_geometric", {"n": 100, "radius": 1.0, "box": 3.0, "max_neighbors": 9}, seed=3)
    assert g.is_directed() and g.number_of_nodes() == 100
    assert max(d for _, d in g.in_degree()) <= 9
    pos = positions(g)
    assert pos.shape == (100, 2) and (pos >= 0).all() and (pos <= 3).all()
    for l, k in g.edges():
        assert np.linalg.norm(pos[l] - pos[k]) <= 1.0 + 1e-12
    full = build_graph("random_geometric", {"n": 100, "radius": 1.0, "box": 3.0}, seed=3)
    assert max(d for _, d in full.in_degree()) > 9  # the cap is what bounds it


@pytest.mark.parametrize("family,params,n", [
    ("complete", {"n": 6}, 6), ("ring", {"n": 8}, 8), ("star", {"n": 5}, 5),
    ("grid_2d", {"rows": 3, "cols": 4}, 12), ("erdos_renyi", {"n": 30, "p": 0.3}, 30),
    ("watts_strogatz", {"n": 20, "k": 4, "p": 0.1}, 20), ("barabasi_albert", {"n": 20, "m": 2}, 20),
])
def test_families(family, params, n):
    g = build_graph(family, params, seed=0)
    assert g.number_of_nodes() == n and sorted(g.nodes) == list(range(n))


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
    """The two stable argsorts give np.lexsort's permutation (ties in the keys included), so
    capped graphs are the ones earlier versions built."""
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
