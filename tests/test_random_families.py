"""networkx's random graph families built as edge arrays (p2pmtl.graphs.random_families): edge
for edge the graphs networkx gives for the same seeds, so seeded results do not move."""
import random

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from p2pmtl.graphs import random_families as rf
from p2pmtl.graphs.edge_list import EdgeListGraph
from p2pmtl.graphs.families import build_graph

EXAMPLES = max(settings.default.max_examples, 100)  # cheap and exact: more than the profile's few (the slow profile's 400)
SEEDS = st.one_of(st.integers(0, 20), st.integers(0, 2**31 - 1), st.just(2**40 + 3))


def _edges(src, dst, directed: bool) -> set:
    pairs = zip(np.asarray(src).tolist(), np.asarray(dst).tolist())
    return set(pairs) if directed else {(min(a, b), max(a, b)) for a, b in pairs}


def _nx_edges(g: nx.Graph) -> set:
    return _edges(*np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2).T, g.is_directed())


def test_the_stream_is_pythons():
    """The words of :func:`python_random_bits` give ``random.Random(seed)``'s floats."""
    for seed in (0, 1, 12345, 2**40 + 3):
        r = random.Random(seed)
        words = rf.python_random_bits(seed).random_raw(2000)
        assert rf._uniforms(words).tolist() == [r.random() for _ in range(1000)]


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=st.integers(1, 120), p=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1e-17, 1e-3, 0.999, 1.0])),
       seed=SEEDS, directed=st.booleans())
def test_erdos_renyi_is_networkx_fast_gnp(n, p, seed, directed):
    want = set() if 0 < p < 1.1e-16 else _nx_edges(nx.fast_gnp_random_graph(n, p, seed=seed, directed=directed))
    assert _edges(*rf.erdos_renyi_arrays(n, p, seed, directed), directed) == want


def test_erdos_renyi_draws_in_chunks_as_networkx(monkeypatch):
    """Chunks smaller than one pass (the stream restarted from a saved state) change nothing,
    directed included (its second pass starts where the first stopped drawing)."""
    monkeypatch.setattr(rf, "CHUNK_DRAWS", 7)
    for seed in range(5):
        for directed in (False, True):
            want = _nx_edges(nx.fast_gnp_random_graph(60, 0.2, seed=seed, directed=directed))
            assert _edges(*rf.erdos_renyi_arrays(60, 0.2, seed, directed), directed) == want


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_watts_strogatz_is_networkx(data, seed):
    n = data.draw(st.integers(2, 60))
    k = data.draw(st.integers(1, n - 1))
    p = data.draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0])))
    want = _nx_edges(nx.watts_strogatz_graph(n, k, p, seed=seed))
    assert _edges(*rf.watts_strogatz_arrays(n, k, p, seed), False) == want


def test_watts_strogatz_saturated_nodes_skip_their_rewiring():
    """Dense rings rewired with p = 1: nodes linked to all others leave the rewiring loop
    (networkx's ``degree(u) >= n - 1`` break); many such cases, all as networkx."""
    for n, k in ((5, 4), (6, 5), (8, 7), (9, 6)):
        for seed in range(20):
            assert _edges(*rf.watts_strogatz_arrays(n, k, 1.0, seed), False) == _nx_edges(
                nx.watts_strogatz_graph(n, k, 1.0, seed=seed))


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_barabasi_albert_is_networkx(data, seed):
    n = data.draw(st.integers(2, 120))
    m = data.draw(st.integers(1, n - 1))
    src, dst = rf.barabasi_albert_arrays(n, m, seed)
    assert len(src) == m + (n - m - 1) * m
    assert _edges(src, dst, False) == _nx_edges(nx.barabasi_albert_graph(n, m, seed=seed))


@settings(max_examples=EXAMPLES, deadline=None)
@given(values=st.lists(st.one_of(st.integers(0, 64), st.integers(0, 10**7)), min_size=1, max_size=80, unique=True))
def test_set_order_is_cpythons(values):
    """Barabasi-Albert appends a new node's targets in the iteration order of a Python set:
    the compiled table (probes, perturbation, resizes) gives that order."""
    from p2pmtl.kernels.random_graphs import set_order

    table = np.empty(max(8, 64 * len(values)), dtype=np.int64)
    size = set_order(np.array(values, dtype=np.int64), len(values), table)
    got = table[:size]
    s = set()
    for v in values:
        s.add(v)
    assert got[got >= 0].tolist() == list(s)


def test_a_short_word_buffer_is_doubled_until_the_pass_completes():
    """The compiled passes report running out of words; the buffer doubles and the pass starts
    again from the stream's start, with the same graph."""
    from p2pmtl.kernels.random_graphs import barabasi_albert, watts_strogatz

    want = rf.barabasi_albert_arrays(300, 4, 9)
    src, dst, used = rf._with_words(9, 3, lambda w: barabasi_albert(300, 4, w))
    assert used > 3 and np.array_equal(src, want[0]) and np.array_equal(dst, want[1])
    table, used = rf._with_words(9, 5, lambda w: watts_strogatz(300, 6, 0.3, w))
    keys = np.sort(table[table >= 0])
    assert used > 5 and _edges(keys // 300, keys % 300, False) == _nx_edges(nx.watts_strogatz_graph(300, 6, 0.3, seed=9))


@pytest.mark.parametrize("family,params", [("erdos_renyi", {"n": 80, "p": 0.1}),
                                           ("erdos_renyi", {"n": 80, "p": 0.1, "directed": True}),
                                           ("watts_strogatz", {"n": 80, "k": 6, "p": 0.2}),
                                           ("barabasi_albert", {"n": 80, "m": 3})])
def test_the_families_build_networkx_graphs_as_arrays(family, params, monkeypatch):
    """Through the registry (as a config builds them), with the compiled passes forced on a
    small graph: an :class:`EdgeListGraph` with networkx's edges for the same seed."""
    monkeypatch.setattr(rf, "COMPILED_MIN_EDGES", 0)
    g = build_graph(family, params, seed=0)
    ref = {"erdos_renyi": lambda: nx.fast_gnp_random_graph(80, 0.1, seed=3, directed=params.get("directed", False)),
           "watts_strogatz": lambda: nx.watts_strogatz_graph(80, 6, 0.2, seed=3),
           "barabasi_albert": lambda: nx.barabasi_albert_graph(80, 3, seed=3)}[family]()
    g3 = build_graph(family, {**params, "seed": 3}, seed=0)
    assert isinstance(g, EdgeListGraph) and isinstance(g3, EdgeListGraph)
    assert g3.number_of_nodes() == 80 and g3.is_directed() == ref.is_directed()
    assert _edges(g3.src, g3.dst, g3.directed) == _nx_edges(ref)


def test_bench_graphs_times_both_builders_on_the_same_graph(capsys):
    """`p2pmtl bench --only graphs`: each family's row from ours and from networkx, on graphs
    with the same edge index (ours are networkx's graphs)."""
    from p2pmtl.bench import graphs
    from p2pmtl.cli import main

    rows = graphs.graph_build_times([3000], networkx_max=3000)
    assert {r["family"].split()[0] for r in rows} == {"erdos_renyi", "watts_strogatz", "barabasi_albert"}
    assert all(r["ours_s"] > 0 and r["networkx_s"] > 0 and r["edges"] > 3000 for r in rows)
    assert main(["bench", "--only", "graphs", "--graph-sizes", "2000", "1", "6", "--graph-networkx-max", "6"]) == 0
    out = capsys.readouterr().out
    assert "watts_strogatz k=10 p=0.1" in out and "nan" in out  # networkx not timed above its maximum
    assert "watts_strogatz k=5 p=0.1" in out and "barabasi_albert m=5" in out  # 6 agents: smaller degrees
    assert "random geometric (scale benchmark density, cap 9)" in out and "2,000" in out


def test_bench_times_the_geometric_orders_both_ways_on_the_same_graph(monkeypatch):
    """The random geometric rows: the compiled counting sorts (threshold lowered so that a small
    graph takes them) against numpy's sorts, the same edges; the thresholds are put back."""
    pytest.importorskip("numba")
    from p2pmtl.bench import graphs
    from p2pmtl.graphs import families, geometric

    monkeypatch.setattr(geometric, "LINEAR_ORDER_MIN_EDGES", 1)
    monkeypatch.setattr(families, "LINEAR_ORDER_MIN_EDGES", 1)
    monkeypatch.setattr(geometric, "BRUTE_FORCE_MAX", 0)  # the KD-tree path at this size
    (row,) = graphs.geometric_order_times([3000])
    assert row["same"] and row["edges"] > 3000 and row["compiled_s"] > 0 and row["numpy_s"] > 0
    assert geometric.LINEAR_ORDER_MIN_EDGES == families.LINEAR_ORDER_MIN_EDGES == 1
