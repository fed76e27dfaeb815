"""Order statistics of every column of a row-major ``[n, d]`` array by a sorting network run
across the columns, compiled: the coordinate-wise median and the Gram distances' centre
(:mod:`p2pmtl.robust.aggregators`) take their middle values from here on the CPU.

numpy's ``partition`` selects one column at a time: the stack must first be transposed (a
strided copy) and each introselect branches on every value. A sorting network is a fixed list
of compare-exchange steps between rows; applied to a block of columns at once, each step is an
element-wise min and max of two contiguous row segments, which the compiler vectorizes, and the
rows are read in their own layout. The network is Batcher's odd-even merge sort (Knuth, TAOCP
vol. 3, 5.3.4, Algorithm M) on the next power of two, with the padding rows (+inf) folded away
and the steps that cannot reach the asked ranks dropped: 91 steps for the median of 21 rows, 898
for both middle values of 100 (1,471 for a full sort of 128).

A network only moves values, so the results are the exact order statistics numpy's
``partition`` and ``torch.median`` return: the same floats, bar the sign of a zero among equal
values (which row a tie comes from). NaN has no place in an order: a block holding one makes
:func:`column_ranks` return None, and the caller selects with torch instead.

Measured (float32, one thread, 1,000,000 columns, before the narrow blocks below): median of 21
rows 0.014 s against 0.065 s for the transpose and introselect; both middle values of 100 rows
0.17 s against 0.34 s.
The network's size grows as ``n log^2 n``, so it stops paying above :data:`MAX_ROWS` rows,
where numpy's vectorized sort catches up (the callers then sort; ns per column, float32:
network / numpy sort 16 / 60 at 21 rows, 169 / 228 at 100, 214 / 373 at 128, the network's
blocks as wide as :func:`block_columns` says).

float32 and float64 stacks go through blocks of exactly :data:`NARROW` columns
(:func:`_select_narrow`, the width a compile-time constant: 1.05-1.6x faster at 64-128 rows),
copied a tile of :data:`TILE_BLOCKS` blocks at a time so that each row is read in one run (one
block at a time, the copy waited on memory row by row: 516-536 ns per column of 100 float32
rows on the 2-core machine of stop 30, against 53 tiled); the last few columns go through the
runtime-width kernel. With torch set to several threads (:func:`stripes_for`), the
blocks are split into that many stripes run on numba's threads (:func:`_select_striped`); each
column takes the same steps on any thread, so the values are the one-thread ones. Both middle
values of 100 float32 rows of 1,000,000 columns, 2 cores: 0.189-0.196 s on one thread before
either change, 0.133-0.137 s with the narrow blocks, 0.080-0.082 s on two threads (stop 26's
machine); on stop 30's machine the same code took 0.63-0.69 s on one thread, the tiled copy
0.136-0.163 s.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
from numba import njit, prange

from .threads import kernel_threads, launch

MAX_ROWS = 128
"""Up to this many rows the network beats numpy's sort and introselect (see the module text)."""

def block_columns(n: int, itemsize: int) -> int:
    """Columns sorted together: 256 when the ``n x 256`` block holds at most 100 KiB, else 128
    when ``n x 128`` holds at most 64 KiB, else 64. Measured (one thread, ns per column; widths
    64 / 128 / 256): float32 median of 100 rows 242 / 209 / 169, of 128 rows 295 / 214 / 231, of
    21 rows 14.3 / 13.7 / 12.6; float64 median of 100 rows 288 / 319 / 313. Wider blocks spread
    each step's fixed cost (two row addresses, the loop set-up) over more columns until the
    block falls out of the faster caches."""
    if n * 256 * itemsize <= 100 * 1024:
        return 256
    if n * 128 * itemsize <= 64 * 1024:
        return 128
    return 64


def _odd_even_merge_sort(m: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort on ``2**m`` wires as compare-exchange pairs ``(i, j)``,
    ``i < j``: afterwards wire ``i`` holds the smaller value (Knuth's Algorithm M)."""
    wires = 1 << m
    steps: list[tuple[int, int]] = []
    p = 1
    while p < wires:
        k = p
        while k >= 1:
            for j in range(k % p, wires - k, 2 * k):
                for i in range(min(k, wires - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        steps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return steps


@functools.lru_cache(maxsize=64)
def rank_network(n: int, ranks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, rows)`` for ``n`` rows: ``steps`` ``[s, 2]`` int64 compare-exchanges on physical
    rows (min to the first, max to the second) after which row ``rows[r]`` holds the
    ``ranks[r]``-th smallest value of every column (0-based).

    Built from :func:`_odd_even_merge_sort` on ``2**ceil(log2 n)`` wires: the wires past ``n``
    hold +inf, so a step whose upper wire is padding does nothing and one whose lower wire is
    padding only swaps the wires' names (both are folded away); then, from the last step back,
    only the steps that write a row the asked ranks still depend on are kept."""
    if n < 1 or any(not 0 <= r < n for r in ranks):
        raise ValueError(f"rank_network(n={n}, ranks={ranks}): ranks must lie in [0, {n})")
    m = max(0, (n - 1).bit_length())
    pad = -1
    row_of = list(range(n)) + [pad] * ((1 << m) - n)  # wire -> physical row, or padding
    steps = []
    for i, j in _odd_even_merge_sort(m):
        lo, hi = row_of[i], row_of[j]
        if hi == pad:
            continue
        if lo == pad:
            row_of[i], row_of[j] = hi, pad
            continue
        steps.append((lo, hi))
    rows = [row_of[r] for r in ranks]
    needed = set(rows)
    kept = []
    for lo, hi in reversed(steps):
        if lo in needed or hi in needed:
            kept.append((lo, hi))
            needed.update((lo, hi))
    kept.reverse()
    return np.array(kept, dtype=np.int64).reshape(-1, 2), np.array(rows, dtype=np.int64)


@njit(cache=True, boundscheck=False, nogil=True, inline="always")
def _run_network(block, steps, width):
    """The compare-exchange ``steps`` on the first ``width`` columns of the ``[n, >= width]``
    ``block``: the smaller value to the first row of each step, the larger to the second.
    Inlined where it is called, so a constant ``width`` (:data:`NARROW`) compiles to
    whole-register min/max pairs."""
    for s in range(steps.shape[0]):
        lo = block[steps[s, 0]]
        hi = block[steps[s, 1]]
        for j in range(width):
            u = lo[j]
            v = hi[j]
            smaller = u < v
            hi[j] = v if smaller else u
            lo[j] = u if smaller else v


@njit(cache=True, boundscheck=False, nogil=True)
def _select(x, start, stop, steps, rows, out, width, origin=-1):
    """Columns ``start:stop`` of the C-contiguous ``x`` through the network, ``width`` columns
    at a time: ``out[r, j - origin]`` = row ``rows[r]`` after the steps (``origin``: ``start``
    when negative). Returns ``max |x|`` over those columns (inf when one is infinite), or NaN as
    soon as a block holds a NaN (then ``out`` is incomplete). The max is kept per column of the
    block, so the copy loop stays vectorized."""
    if origin < 0:
        origin = start
    n = x.shape[0]
    buf = np.empty((n, width), dtype=x.dtype)
    top = np.zeros(width, dtype=x.dtype)  # max |value| so far, per column of the block
    for j0 in range(start, stop, width):
        w = min(width, stop - j0)
        nan = False
        for i in range(n):
            src = x[i]
            dst = buf[i]
            for j in range(w):
                v = src[j0 + j]
                nan |= v != v
                a = abs(v)
                top[j] = a if a > top[j] else top[j]
                dst[j] = v
        if nan:
            return np.nan
        _run_network(buf, steps, w)
        for r in range(rows.shape[0]):
            src = buf[rows[r]]
            for j in range(w):
                out[r, j0 - origin + j] = src[j]
    return float(top.max()) if stop > start else 0.0


NARROW = 32
"""Columns of the fixed-width blocks the network runs on (:func:`_select_narrow`)."""

TILE_BLOCKS = 8
"""Blocks of :data:`NARROW` columns :func:`_select_narrow` copies in one tile: each row is read
as one run of ``TILE_BLOCKS * NARROW`` values (1 KiB of float32)."""


@njit(cache=True, boundscheck=False, nogil=True)
def _select_narrow(x, start, stop, steps, rows, out, origin):
    """:func:`_select` on the whole blocks of exactly :data:`NARROW` columns in
    ``start:stop`` (the caller passes a multiple of it), float32 or float64.

    The width is a compile-time constant, so each step compiles to a few whole-register
    min/max pairs; the blocks are copied a tile of :data:`TILE_BLOCKS` at a time, each row of
    the stack read as one run of the tile's columns into the tile's blocks (row views, no
    per-element index arithmetic), the max and a NaN flag kept per column of a block. Copying
    one block at a time read 100 rows' 128 bytes each between steps: on the 2-core Zen 4
    machine (one thread, 1,000,000 columns, both middle values of 100 float32 rows) that copy
    alone took 516-536 ns per column, the tiled one 53 (the whole kernel 633-694 -> 136-149
    ns per column; 21 rows 39 -> 20; float64, 100 rows, against the runtime-width kernel:
    662 -> 234). The NaN flag is the running sum of ``v - v`` per column, NaN as soon as a
    value is NaN or infinite; only then is the tile looked at for a NaN proper. Same values:
    the same steps on the same columns."""
    n = x.shape[0]
    buf = np.empty((TILE_BLOCKS, n, NARROW), dtype=x.dtype)
    top = np.zeros(NARROW, dtype=x.dtype)  # max |value| so far, per column of a block
    flag = np.zeros(NARROW, dtype=x.dtype)  # sum of v - v: NaN once a value is NaN or +-inf
    span = TILE_BLOCKS * NARROW
    for t0 in range(start, stop, span):
        blocks = min(TILE_BLOCKS, (stop - t0) // NARROW)
        for i in range(n):
            src = x[i, t0:t0 + blocks * NARROW]
            for b in range(blocks):
                dst = buf[b, i]
                for j in range(NARROW):
                    v = src[b * NARROW + j]
                    dst[j] = v
                    flag[j] += v - v
                    a = abs(v)
                    top[j] = a if a > top[j] else top[j]
        if flag.sum() != flag.sum():
            for b in range(blocks):
                for i in range(n):
                    for j in range(NARROW):
                        if buf[b, i, j] != buf[b, i, j]:
                            return np.nan
            flag[:] = 0.0  # infinities only
        for b in range(blocks):
            block = buf[b]
            _run_network(block, steps, NARROW)
            c0 = t0 - origin + b * NARROW
            for r in range(rows.shape[0]):
                src = block[rows[r]]
                dst = out[r, c0:c0 + NARROW]
                for j in range(NARROW):
                    dst[j] = src[j]
    return float(top.max()) if stop > start else 0.0


@njit(cache=True, boundscheck=False, nogil=True)
def _select_columns(x, start, stop, steps, rows, out, width, origin, narrow):
    """:func:`_select`, or with ``narrow`` :func:`_select_narrow` on the whole
    :data:`NARROW`-column blocks and :func:`_select` on the rest: the max of both, NaN when
    either met a NaN."""
    if not narrow:
        return _select(x, start, stop, steps, rows, out, width, origin)
    full = start + (stop - start) // NARROW * NARROW
    top = _select_narrow(x, start, full, steps, rows, out, origin)
    if top != top or full == stop:
        return top
    rest = _select(x, full, stop, steps, rows, out, width, origin)
    return rest if rest != rest else max(top, rest)


@njit(cache=True, boundscheck=False, nogil=True, parallel=True)
def _select_striped(x, start, stop, steps, rows, out, width, stripes, narrow=False):
    """:func:`_select_columns` on ``stripes`` runs of whole ``width``-column blocks at once
    (numba threads; ``width`` a multiple of :data:`NARROW`, so only the last run has a partial
    narrow block): each column goes through the same steps whichever thread takes it, so
    ``out`` is the serial result bit for bit; the max is the stripes' max, NaN when one met a
    NaN."""
    blocks = (stop - start + width - 1) // width
    tops = np.zeros(stripes)
    for p in prange(stripes):
        lo = start + (blocks * p // stripes) * width
        hi = min(stop, start + (blocks * (p + 1) // stripes) * width)
        tops[p] = _select_columns(x, lo, hi, steps, rows, out, width, start, narrow) if hi > lo else 0.0
    top = 0.0
    for p in range(stripes):
        if tops[p] != tops[p]:
            return np.nan
        top = max(top, tops[p])
    return top


MIN_STRIPE_BLOCKS = 8
"""Blocks each thread takes at least before the work is split (below, one thread: starting
the threads costs more than the few blocks save)."""


def stripes_for(columns: int, width: int) -> int:
    """Threads to split ``columns`` over: ``torch.get_num_threads()`` (the thread count the
    rest of the run uses), at most numba's and at most one per :data:`MIN_STRIPE_BLOCKS`
    blocks of ``width`` columns."""
    blocks = -(-columns // width)
    return max(1, min(kernel_threads(), blocks // MIN_STRIPE_BLOCKS))


def column_ranks(x: np.ndarray, ranks: Sequence[int], start: int = 0, stop: Optional[int] = None) -> Optional[np.ndarray]:
    """``[len(ranks), stop - start]``: the ``ranks``-th smallest values (0-based) of columns
    ``start:stop`` of the float32/float64 ``[n, d]`` array ``x`` (made C-contiguous if it is
    not), or None when those columns hold a NaN. ``n`` at most :data:`MAX_ROWS`."""
    return column_ranks_and_max(x, ranks, start, stop)[0]


def column_ranks_and_max(x: np.ndarray, ranks: Sequence[int], start: int = 0,
                         stop: Optional[int] = None) -> tuple[Optional[np.ndarray], float]:
    """:func:`column_ranks` and ``max |x|`` over the same columns, taken on the way (NaN when
    they hold a NaN, inf when they hold an infinity, 0.0 for no column)."""
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"column_ranks: x must be a 2-D float32/float64 array, got {x.dtype} {x.shape}")
    n, d = x.shape
    if not 1 <= n <= MAX_ROWS:
        raise ValueError(f"column_ranks: n = {n} rows; the network is built for 1..{MAX_ROWS}")
    stop = d if stop is None else stop
    if not 0 <= start <= stop <= d:
        raise ValueError(f"column_ranks: columns {start}:{stop} outside 0:{d}")
    steps, rows = rank_network(n, tuple(int(r) for r in ranks))
    out = np.empty((len(rows), stop - start), dtype=x.dtype)
    width = block_columns(n, x.itemsize)
    stripes = stripes_for(stop - start, width)
    x = np.ascontiguousarray(x)
    # whole NARROW-column blocks through the tiled kernel (float32 and float64), the rest at `width`
    if stripes > 1:
        with launch(stripes):
            top = _select_striped(x, start, stop, steps, rows, out, width, stripes, True)
    else:
        top = _select_columns(x, start, stop, steps, rows, out, width, start, True)
    return (None if math.isnan(top) else out), top
