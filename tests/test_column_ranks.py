"""The compiled sorting network behind the coordinate-wise median and the Gram distances'
centre (p2pmtl.kernels.column_ranks): exact order statistics, NaN reported, and the
aggregators' results unchanged against numpy's sort and torch's medians."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from p2pmtl.kernels import column_ranks as cr
from p2pmtl.robust import aggregators as agg


def _values(rng: np.random.Generator, n: int, d: int, dtype=np.float32) -> np.ndarray:
    """Random columns with ties, signed zeros and infinities among ordinary values."""
    x = rng.standard_normal((n, d)).astype(dtype)
    x[rng.random((n, d)) < 0.2] = 1.5  # ties
    x[rng.random((n, d)) < 0.02] = np.inf
    x[rng.random((n, d)) < 0.02] = -np.inf
    return x


@pytest.mark.parametrize("n", range(1, 13))
def test_the_full_network_sorts_every_zero_one_input(n):
    """Knuth's 0-1 principle: a comparator network sorts every input iff it sorts every 0-1
    input; all 2^n of them, as the columns of one array."""
    steps, rows = cr.rank_network(n, tuple(range(n)))
    cols = np.array(list(itertools.product([0.0, 1.0], repeat=n)), dtype=np.float64).T.copy()
    out = cr.column_ranks(cols, list(range(n)))
    np.testing.assert_array_equal(out, np.sort(cols, axis=0))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 20, 21, 33, 64, 100, 127, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranks_equal_numpy_partition(n, dtype):
    rng = np.random.default_rng(n)
    x = _values(rng, n, 517, dtype)  # not a multiple of the block width
    ranks = sorted({0, (n - 1) // 2, n // 2, n - 1})
    out = cr.column_ranks(x, ranks)
    assert out.dtype == dtype and out.shape == (len(ranks), 517)
    np.testing.assert_array_equal(out, np.sort(x, axis=0)[ranks])
    # a column range of the same array, read in place
    np.testing.assert_array_equal(cr.column_ranks(x, ranks, 70, 300), np.sort(x[:, 70:300], axis=0)[ranks])


@pytest.mark.parametrize("n", [21, 100, 128])
def test_every_block_width_gives_the_same_ranks(n):
    """The block width is a speed choice only (:func:`block_columns`): 64, 128 and 256 columns
    at a time give numpy's values, on a column count with a partial last block."""
    rng = np.random.default_rng(n)
    x = _values(rng, n, 700, np.float32)
    steps, rows = cr.rank_network(n, ((n - 1) // 2, n // 2))
    want = np.sort(x, axis=0)[[(n - 1) // 2, n // 2]]
    for width in (64, 128, 256):
        out = np.empty((2, 700), dtype=np.float32)
        top = cr._select(x, 0, 700, steps, rows, out, width)
        np.testing.assert_array_equal(out, want)
        assert top == np.abs(x).max()
    assert cr.block_columns(n, 4) in (64, 128, 256) and cr.block_columns(n, 8) <= cr.block_columns(n, 4)


def test_the_pruned_network_is_smaller_than_the_sort():
    full, _ = cr.rank_network(100, tuple(range(100)))
    median, rows = cr.rank_network(100, (49, 50))
    assert len(median) < len(full) and len(rows) == 2
    assert len(cr.rank_network(21, (10,))[0]) == 91


def test_a_nan_is_reported_not_ordered():
    x = np.random.default_rng(0).standard_normal((9, 300)).astype(np.float32)
    x[4, 250] = np.nan
    assert cr.column_ranks(x, [4]) is None
    assert cr.column_ranks(x, [4], 0, 128) is not None  # that block has no NaN


def test_bad_arguments_are_named():
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"ranks must lie in \[0, 3\)"):
        cr.column_ranks(x, [3])
    with pytest.raises(ValueError, match="rows"):
        cr.column_ranks(np.zeros((cr.MAX_ROWS + 1, 2)), [0])
    with pytest.raises(ValueError, match="float32/float64"):
        cr.column_ranks(np.zeros((3, 4), dtype=np.int64), [0])
    with pytest.raises(ValueError, match="columns 2:9 outside 0:4"):
        cr.column_ranks(x, [0], 2, 9)


def _without_network(monkeypatch):
    monkeypatch.setattr(agg, "_network_rows", lambda n: False)


@pytest.mark.parametrize("n", [5, 20, 21, 100, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coordinate_median_is_unchanged_by_the_network(n, dtype, monkeypatch):
    """Bit-identical to numpy's sort and to torch's two medians, with ties, zeros
    (whose chunks take torch's medians), infinities, and a transposed (non-contiguous) stack."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn((n, 3000), generator=g, dtype=dtype)
    x[torch.rand((n, 3000), generator=g) < 0.3] = 0.25
    x[:, 7] = 0.0
    x[0, 11] = float("inf")
    with_network = agg.coordinatewise_median(x)
    transposed = agg.coordinatewise_median(x.T.contiguous().T)
    lower = x.median(dim=0).values
    upper = x.neg().median(dim=0).values.neg()
    expected = lower if n % 2 else 0.5 * lower + 0.5 * upper
    _without_network(monkeypatch)
    assert torch.equal(with_network, agg.coordinatewise_median(x))
    assert torch.equal(with_network, expected)
    assert torch.equal(transposed, expected)


def test_the_gram_distances_and_krum_are_unchanged_by_the_network(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn((40, 70_000), generator=g)  # two column chunks
    x[:5] += 1e4  # Byzantine rows first: inside the 2f + 1 the centre is taken over
    krum = agg.make_aggregator("krum", f=5)
    dist, chosen = agg._gram_sq_distances(x, finite=True, f=5), krum(x)
    _without_network(monkeypatch)
    assert torch.equal(dist, agg._gram_sq_distances(x, finite=True, f=5))
    assert torch.equal(chosen, krum(x))


def test_the_aggregators_row_limit_is_the_kernels():
    assert agg._NETWORK_MAX_ROWS == cr.MAX_ROWS


@pytest.mark.parametrize("n", [129, 200, 301])
def test_above_the_network_the_sort_gives_the_same_centre_and_median(n, monkeypatch):
    g = torch.Generator().manual_seed(n)
    x = torch.randn((n, 5000), generator=g)
    x[torch.rand(x.shape, generator=g) < 0.3] = -2.0
    assert torch.equal(agg._lower_median(x), x.median(dim=0).values)
    lower, upper = x.median(dim=0).values, x.neg().median(dim=0).values.neg()
    assert torch.equal(agg.coordinatewise_median(x), lower if n % 2 else 0.5 * lower + 0.5 * upper)


@pytest.mark.parametrize("n", [1, 2, 9, 21, 64, 100, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fixed_width_kernel_gives_the_runtime_width_ranks(n, dtype):
    """Whole blocks of NARROW columns go through the tiled kernel, the rest through the
    runtime-width kernel: the same values and max as the latter alone, at a column offset,
    over two whole tiles and a partial one; a NaN is reported wherever it is: in the first
    tile, in a later tile after tiles holding infinities, next to an infinity, in the rest."""
    rng = np.random.default_rng(n)
    span = cr.TILE_BLOCKS * cr.NARROW
    d = 3 + 2 * span + 3 * cr.NARROW + 13
    x = _values(rng, n, d, dtype)  # infinities in every tile
    ranks = sorted({0, (n - 1) // 2, n // 2, n - 1})
    steps, rows = cr.rank_network(n, tuple(ranks))
    want = np.empty((len(rows), d - 3), dtype=dtype)
    top = cr._select(x, 3, d, steps, rows, want, 64)
    got = np.full_like(want, 7.0)
    assert cr._select_columns(x, 3, d, steps, rows, got, 64, 3, True) == top == np.inf
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np.sort(x[:, 3:], axis=0)[ranks])
    finite = np.where(np.isinf(x), dtype(2.5), x)
    got = np.full_like(want, 7.0)
    assert cr._select_columns(finite, 3, d, steps, rows, got, 64, 3, True) == np.abs(finite).max()
    np.testing.assert_array_equal(got, np.sort(finite[:, 3:], axis=0)[ranks])
    for col in (3 + cr.NARROW + 1, 3 + span + 5, 3 + 2 * span + cr.NARROW, d - 2):
        y = x.copy()
        y[n - 1, col] = np.nan
        assert np.isnan(cr._select_columns(y, 3, d, steps, rows, got, 64, 3, True))
    y = x.copy()
    y[0, 3 + span + 7] = np.inf
    y[n - 1, 3 + span + 8] = np.nan
    assert np.isnan(cr._select_columns(y, 3, d, steps, rows, got, 64, 3, True))