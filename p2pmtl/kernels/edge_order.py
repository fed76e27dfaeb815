"""Compiled orderings of large edge lists, in time linear in the edges: the random geometric
family's pairs in ``(i, j)`` order and its random in-neighbour cap
(:mod:`p2pmtl.graphs.geometric`, :func:`p2pmtl.graphs.families.cap_in_neighbours`).

Both used to be comparison sorts of packed 64-bit keys over all candidate edges (35M at
1,000,000 agents). Here each is a counting sort on the node (a histogram, then one stable
scatter) followed by work inside each node's short run (about 17 pairs a node, 35 candidate
in-neighbours): an insertion sort of the partners, or a running selection of the ``cap``
smallest random keys. The results are the sorts' exactly (the same pairs in the same order;
the order of ``np.lexsort((keys, dst))`` with ties in the keys broken by edge index, cut to
``cap`` per receiver): ``tests/test_graphs.py`` compares them on inputs full of ties.

Measured on the 2-core machine of stop 30 (1,000,000 agents at the scale benchmark's density:
17.4M pairs, 34.8M candidate in-edges, cap 9; numpy took 2.5 s to sort 35M int64 there), two
rounds each, the same results: the pair order 1.67-2.78 s (numpy's sort of packed keys) ->
0.88-0.97 s, the cap 7.80-9.42 s -> 2.26-3.12 s (its 35M random keys drawn included); the
whole world's build in the scale benchmark 17.5 -> 8.7-9.5 s.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def _bucket_starts(node, n):
    """``[n + 1]`` int64: where each node's run starts once the entries are grouped by node."""
    starts = np.zeros(n + 1, dtype=np.int64)
    for e in range(node.size):
        starts[node[e] + 1] += 1
    for v in range(n):
        starts[v + 1] += starts[v]
    return starts


@njit(cache=True, nogil=True, boundscheck=False)
def sorted_pairs(a, b, n):
    """``[P, 2]`` int64: the pairs ``(min(a, b), max(a, b))`` of nodes in ``[0, n)`` sorted by
    first then second node (``P = a.size``), as a sort of the keys ``i * n + j`` gives them."""
    p = a.size
    first = np.empty(p, dtype=np.int64)
    for e in range(p):
        first[e] = min(a[e], b[e])
    starts = _bucket_starts(first, n)
    fill = starts[:n].copy()
    out = np.empty((p, 2), dtype=np.int64)
    for e in range(p):
        i = first[e]
        at = fill[i]
        fill[i] = at + 1
        out[at, 0] = i
        out[at, 1] = max(a[e], b[e])
    for i in range(n):  # insertion sort of each node's partners (short runs)
        lo, hi = starts[i], starts[i + 1]
        for k in range(lo + 1, hi):
            j = out[k, 1]
            m = k
            while m > lo and out[m - 1, 1] > j:
                out[m, 1] = out[m - 1, 1]
                m -= 1
            out[m, 1] = j
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def capped_in_edges(src, dst, keys, cap, n):
    """``(src, dst)`` of the kept edges: for each receiver ``v < n`` in turn, its in-edges with
    the ``cap`` smallest ``(keys[e], e)``, in that order; the edges ``np.lexsort((keys, dst))``
    puts first in each receiver's run, in its order."""
    e_total = dst.size
    if cap < 1:
        return src[:0].copy(), dst[:0].copy()
    starts = _bucket_starts(dst, n)
    fill = starts[:n].copy()
    by_receiver = np.empty(e_total, dtype=np.int64)  # edge indices, grouped by receiver, in index order
    for e in range(e_total):
        v = dst[e]
        at = fill[v]
        fill[v] = at + 1
        by_receiver[at] = e
    kept_starts = np.zeros(n + 1, dtype=np.int64)
    for v in range(n):
        kept_starts[v + 1] = kept_starts[v] + min(cap, starts[v + 1] - starts[v])
    total = kept_starts[n]
    out_src = np.empty(total, dtype=src.dtype)
    out_dst = np.empty(total, dtype=dst.dtype)
    best_key = np.empty(cap, dtype=keys.dtype)
    best_edge = np.empty(cap, dtype=np.int64)
    for v in range(n):
        size = 0
        for k in range(starts[v], starts[v + 1]):
            e = by_receiver[k]  # increasing within the run: a tie in the key goes after
            key = keys[e]
            if size == cap and not key < best_key[cap - 1]:
                continue
            m = size if size < cap else cap - 1
            while m > 0 and key < best_key[m - 1]:
                best_key[m] = best_key[m - 1]
                best_edge[m] = best_edge[m - 1]
                m -= 1
            best_key[m] = key
            best_edge[m] = e
            if size < cap:
                size += 1
        at = kept_starts[v]
        for m in range(size):
            out_src[at + m] = src[best_edge[m]]
            out_dst[at + m] = v
    return out_src, out_dst
