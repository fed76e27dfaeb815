"""Aggregators on several CPU threads (torch.set_num_threads): the sorting network splits its
columns over numba's threads, the sort-based rules take whole column chunks on Python threads.
Either way every column is computed by the same calls as on one thread, so the results must be
the same bits; and the Multi-Krum mean's cache-sized chunks must give the bits of one mean."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from p2pmtl.kernels import column_ranks as cr
from p2pmtl.kernels.threads import launch
from p2pmtl.robust import aggregator_family as fam
from p2pmtl.robust import aggregators as agg
from p2pmtl.robust.aggregators import make_aggregator


@pytest.fixture
def threads():
    """Run the body with torch set to ``k`` threads; the suite's single thread afterwards."""
    before = torch.get_num_threads()

    def use(k: int) -> None:
        torch.set_num_threads(k)

    yield use
    torch.set_num_threads(before)


def _values(rng: np.random.Generator, n: int, d: int, dtype) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(dtype)
    x[rng.random((n, d)) < 0.2] = 1.5  # ties
    x[rng.random((n, d)) < 0.01] = np.inf
    x[rng.random((n, d)) < 0.01] = -np.inf
    return x


@pytest.mark.parametrize("n", [5, 21, 100, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_striped_network_gives_the_one_thread_ranks(n, dtype):
    """Several stripes of blocks (2 and 3, the last one partial) give the serial kernel's
    values and max, whatever thread runs them; a NaN in the last stripe is still reported."""
    rng = np.random.default_rng(n)
    width = cr.block_columns(n, np.dtype(dtype).itemsize)
    d = 3 * cr.MIN_STRIPE_BLOCKS * width + 37
    x = _values(rng, n, d, dtype)
    ranks = (0, (n - 1) // 2, n // 2, n - 1)
    steps, rows = cr.rank_network(n, ranks)
    want = np.empty((len(rows), d - 11), dtype=dtype)
    top = cr._select(x, 11, d, steps, rows, want, width)
    np.testing.assert_array_equal(want, np.sort(x[:, 11:], axis=0)[list(ranks)])
    for stripes in (2, 3):
        out = np.empty_like(want)
        with launch(stripes):  # as column_ranks launches it: torch's thread count left alone
            assert cr._select_striped(x, 11, d, steps, rows, out, width, stripes) == top
        np.testing.assert_array_equal(out, want)
    x[n - 1, d - 1] = np.nan
    with launch(2):
        assert np.isnan(cr._select_striped(x, 11, d, steps, rows, np.empty_like(want), width, 2))


def test_column_ranks_split_over_the_threads_torch_is_set_to(threads):
    rng = np.random.default_rng(0)
    x = _values(rng, 100, 40 * 256 + 5, np.float32)
    threads(1)
    assert cr.stripes_for(x.shape[1], 256) == 1
    one, top1 = cr.column_ranks_and_max(x, [49, 50])
    threads(2)
    assert cr.stripes_for(x.shape[1], 256) == 2  # the split is taken, not skipped
    assert cr.stripes_for(cr.MIN_STRIPE_BLOCKS * 256, 256) == 1  # too few blocks to split
    two, top2 = cr.column_ranks_and_max(x, [49, 50])
    np.testing.assert_array_equal(one, two)
    assert top1 == top2 == np.inf


SORT_BASED = [
    ("trimmed_mean", {"f": 3}, 20),
    ("coordinate_median", {}, 20),  # the sorting network (chunks too small to stripe: see above)
    ("coordinate_median", {}, 150),  # numpy's sort, chunks on threads
    ("coordinate_median", {}, 151),
    ("meamed", {"f": 4}, 20),
    ("bulyan", {"f": 2}, 20),
    ("multi_krum", {"f": 3}, 20),
    ("centered_clipping", {"tau": 2.0}, 20),
]


@pytest.mark.parametrize("name, params, n", SORT_BASED)
def test_aggregators_give_the_same_bits_on_two_threads(name, params, n, threads, monkeypatch):
    """Small chunks (600 columns) so that a 5,000-column stack has nine: the chunks really go
    to the pool (seen by the thread names that run the sort) and come back in order."""
    monkeypatch.setattr(agg, "CHUNK_COLUMNS", 600)
    seen: set[str] = set()
    real_sort = agg._sorted_columns

    def sorting(c):
        seen.add(threading.current_thread().name)
        return real_sort(c)

    monkeypatch.setattr(agg, "_sorted_columns", sorting)
    monkeypatch.setattr(fam, "_sorted_columns", sorting)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5000, generator=g) * 3
    x[: n // 4] += 40.0  # a far group, as attackers
    x[1, 4321] = float("inf")  # a hostile row in a late chunk: dropped on every path
    a = make_aggregator(name, **params)
    threads(1)
    one = a(x)
    threads(2)
    two = a(x)
    assert torch.equal(one, two)
    if name in ("trimmed_mean", "meamed", "bulyan") or n > cr.MAX_ROWS:
        assert any(t.startswith("p2pmtl-chunks") for t in seen), seen
    rest = torch.cat([x[:1], x[2:]])
    assert torch.equal(two, make_aggregator(name, **params)(rest))  # the inf row is only dropped


def test_an_error_in_a_chunk_surfaces_from_the_pool(threads, monkeypatch):
    monkeypatch.setattr(agg, "CHUNK_COLUMNS", 100)
    threads(2)

    def compute(sl):
        if sl.start == 300:
            raise ArithmeticError("chunk 300")
        return sl.start

    with pytest.raises(ArithmeticError, match="chunk 300"):
        list(agg._chunk_results(compute, torch.zeros(2, 1000)))
    got = [v for _, v in agg._chunk_results(lambda sl: sl.start, torch.zeros(2, 1000))]
    assert got == list(range(0, 1000, 100))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("m, d", [(1, 3), (9, 700), (90, 70_000), (333, 66_000)])
def test_the_selected_mean_chunks_give_the_bits_of_one_mean(m, d, dtype):
    """Multi-Krum averages its kept rows in cache-sized chunks (multiples of 256 columns, see
    ``_selected_mean_columns``); across the 65,536-column boundary and with a partial last chunk
    they equal one ``index_select(...).mean(0)`` of the whole stack."""
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m + 7, d, generator=g) * 100).to(dtype)
    keep = torch.randperm(m + 7, generator=g)[:m]
    width = agg._selected_mean_columns(m, x.element_size(), x.device)
    assert width % 256 == 0 and width * m * x.element_size() <= max(384 << 10, 256 * m * x.element_size())
    assert agg._selected_mean_columns(m, x.element_size(), torch.device("meta")) == agg.CHUNK_COLUMNS
    out = torch.empty(d, dtype=dtype)
    for sl in agg._column_slices(d, width):
        out[sl] = x[:, sl].index_select(0, keep).mean(dim=0)
    assert torch.equal(out, x.index_select(0, keep).mean(dim=0))


def test_multi_krum_is_the_plain_mean_of_its_kept_rows():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 20_000, generator=g)
    x[:5] += 10.0
    mk = make_aggregator("multi_krum", f=5)
    scores = agg._krum_scores(mk._gram_distances(x, 5), 5)
    keep = torch.sort(scores, stable=True).indices[:25]
    assert not set(keep.tolist()) & set(range(5))
    assert torch.equal(mk(x), x.index_select(0, keep).mean(dim=0))


def test_a_forked_child_does_not_inherit_dead_pool_threads(threads):
    """A pool made in the parent has no threads in a forked child: the child makes its own
    instead of waiting forever on the parent's. (The child runs no torch kernel: torch's own
    OpenMP threads hang in a child forked after they ran, which is torch's matter.)"""
    import multiprocessing as mp

    threads(2)
    assert _starts_on_pool_threads(0) == list(range(0, 4000, 1000))
    assert agg._POOLS
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_starts_on_pool_threads, (0,)).get(timeout=30) == list(range(0, 4000, 1000))


def _starts_on_pool_threads(_: int) -> list[int]:
    torch.set_num_threads(2)
    old, agg.CHUNK_COLUMNS = agg.CHUNK_COLUMNS, 1000
    try:
        got = []
        for sl, (start, name) in agg._chunk_results(lambda sl: (sl.start, threading.current_thread().name),
                                                    torch.zeros(1, 4000)):
            assert name.startswith("p2pmtl-chunks") and start == sl.start
            got.append(start)
        return got
    finally:
        agg.CHUNK_COLUMNS = old


def test_bench_times_the_aggregators_on_the_threads_asked(capsys):
    """`p2pmtl bench --only aggregators --agg-threads 2 --agg-repeats 2` (tiny sizes; figures are
    never asserted): the table says so."""
    from p2pmtl.cli import main

    main(["bench", "--only", "aggregators", "--agg-n", "12", "--agg-dim", "3000", "--agg-threads", "2",
          "--agg-repeats", "2"])
    out = capsys.readouterr().out
    assert "2 thread(s), best of 2" in out and "coordinate_median" in out and "ByzFL/ours" in out
    with pytest.raises(SystemExit):
        main(["bench", "--only", "aggregators", "--agg-threads", "0"])
    assert "--agg-threads: 0: allowed: an integer >= 1" in capsys.readouterr().err


FIRST_LAUNCH = r"""
import sys, numpy as np, torch
import numba
from p2pmtl.kernels import column_ranks as cr
from p2pmtl.kernels.threads import launch
torch.get_num_threads()  # torch's default read first (then numba's start resets the count)
torch.set_num_threads(1)
x = np.random.default_rng(0).standard_normal((9, 40 * 256)).astype(np.float32)
steps, rows = cr.rank_network(9, (4,))
out = np.empty((1, x.shape[1]), np.float32)
if sys.argv[1] == "launch":
    with launch(2):
        cr._select_striped(x, 0, x.shape[1], steps, rows, out, 256, 2, True)
    first = torch.get_num_threads()
    torch.set_num_threads(2)
    cr.column_ranks(x, [4])  # striped, through launch
    assert torch.get_num_threads() == 2
else:
    cr._select_striped(x, 0, x.shape[1], steps, rows, out, 256, 2, True)
    first = torch.get_num_threads()
print(first, numba.threading_layer())
"""


def test_the_kernels_keep_torchs_thread_count():
    """numba's OpenMP layer, started by a bare first parallel call, sets the OpenMP runtime it
    shares with torch to numba's thread count (a fresh process each): torch at 1 thread then
    reads 2 (the control, where numba runs that layer on 2 or more threads); through
    ``p2pmtl.kernels.threads.launch`` it stays at 1, and a striped selection on 2 threads leaves
    2. (Fails when ``launch`` does not put torch's count back: checked.)"""
    import subprocess
    import sys

    import numba

    def first_launch(how: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", FIRST_LAUNCH, how], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        count, layer = done.stdout.split()
        return int(count), layer

    assert first_launch("launch")[0] == 1
    bare, layer = first_launch("bare")
    if layer == "omp" and numba.config.NUMBA_NUM_THREADS >= 2:
        assert bare == 2


CONCURRENT = r"""
import threading, numpy as np, torch
torch.set_num_threads(2)
from p2pmtl.kernels import column_ranks as cr
x = np.random.default_rng(0).standard_normal((100, 64 * 256)).astype(np.float32)
want = np.sort(x, axis=0)[[49, 50]]
bad = []
def work():
    for _ in range(40):
        got = cr.column_ranks(x, [49, 50])
        if not np.array_equal(got, want):
            bad.append(1)
ts = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in ts]
[t.join() for t in ts]
print("bad", len(bad))
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_parallel_selections_from_several_python_threads_take_turns(layer):
    """numba's own ``workqueue`` pool takes one parallel call at a time (two at once abort the
    process, so this runs in a child): the launches take turns behind a lock, with the right
    values; and on the layer numba picks by default."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    done = subprocess.run([sys.executable, "-c", CONCURRENT], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "bad 0"
