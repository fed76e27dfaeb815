"""Pairs of points within a radius, in an order fixed by the points alone: the links of the
random geometric family (Li2020's target-localization network).

A pair is ``(i, j)``, ``i < j``, with ``(x_i - x_j)**2 + (y_i - y_j)**2 <= radius**2``
evaluated in float64 exactly as written, and the pairs come sorted by ``(i, j)``. So a seeded
graph depends only on its seed, whichever way the pairs are found and on whatever platform:
a KD-tree's own pair order follows the tree it built, whose median split is the C++ library's
``nth_element`` (implementation-defined), and the random in-neighbour cap draws one key per
pair in pair order.

Up to :data:`BRUTE_FORCE_MAX` points the pairs come from blocks of the distance matrix (numpy
only: the main job does not import scipy, whose ``scipy.spatial`` alone took about 0.23 s of
its start-up); above, from scipy's ``cKDTree.query_pairs``, whose test is the same sum of two
squares against ``radius * radius`` (the two ways agree on point sets full of exact ties at
the radius: ``tests/test_graphs.py``), then sorted (from :data:`LINEAR_ORDER_MIN_EDGES`
pairs by a compiled counting sort on ``i``: 1.7-2.8 -> 0.9-1.0 s for 17.4M pairs, see
:mod:`p2pmtl.kernels.edge_order`).
"""
from __future__ import annotations

import numpy as np

from ..kernels import numba_available

BRUTE_FORCE_MAX = 4096
"""Most points whose pairs are found from the distance matrix (about 8M entries)."""
_BLOCK_ENTRIES = 1 << 22  # distance-matrix entries per block (32 MiB of float64)

LINEAR_ORDER_MIN_EDGES = 1 << 20
"""From this many pairs (or candidate edges, :func:`p2pmtl.graphs.families.cap_in_neighbours`)
they are ordered by a compiled counting sort, in time linear in their number
(:mod:`p2pmtl.kernels.edge_order`), where numba is installed; below, by numpy's sort (the
same order; small graphs do not import numba)."""


def pairs_within(pos: np.ndarray, radius: float) -> np.ndarray:
    """``[P, 2]`` int64 pairs ``(i, j)``, ``i < j``, of the rows of ``pos`` (``[n, 2]`` float64)
    within ``radius`` of each other, sorted by ``i`` then ``j`` (see the module docstring)."""
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    n = pos.shape[0]
    if n <= BRUTE_FORCE_MAX:
        return _pairs_by_blocks(pos, radius)
    return _pairs_by_kd_tree(pos, radius)


def _pairs_by_blocks(pos: np.ndarray, radius: float) -> np.ndarray:
    n = pos.shape[0]
    x, y = pos[:, 0], pos[:, 1]
    r2 = radius * radius
    rows = max(1, _BLOCK_ENTRIES // max(n, 1))
    cols = np.arange(n)
    out = []
    for a in range(0, n, rows):  # a few blocks at most: n <= BRUTE_FORCE_MAX
        b = min(n, a + rows)
        dx = x[a:b, None] - x[None, :]
        dy = y[a:b, None] - y[None, :]
        d2 = dx * dx
        d2 += dy * dy
        near = d2 <= r2
        near &= cols[None, :] > cols[a:b, None]  # j > i
        i, j = np.nonzero(near)  # row-major: sorted by (i, j)
        out.append(np.stack([i + a, j], axis=1))
    return np.concatenate(out).astype(np.int64, copy=False) if out else np.empty((0, 2), dtype=np.int64)


def _pairs_by_kd_tree(pos: np.ndarray, radius: float) -> np.ndarray:
    from scipy.spatial import cKDTree  # only for large graphs: scipy.spatial is slow to import

    n = pos.shape[0]
    cand = cKDTree(pos).query_pairs(radius, output_type="ndarray")
    if cand.shape[0] >= LINEAR_ORDER_MIN_EDGES and numba_available():
        from ..kernels.edge_order import sorted_pairs  # numba: large graphs only

        return sorted_pairs(np.asarray(cand[:, 0], dtype=np.int64), np.asarray(cand[:, 1], dtype=np.int64), n)
    key = np.minimum(cand[:, 0], cand[:, 1]).astype(np.int64)
    key *= n
    key += np.maximum(cand[:, 0], cand[:, 1])
    del cand
    key.sort()  # (i, j) order: 0.18 s for 17M pairs, against 1.4 s for the tree's query
    i, j = np.divmod(key, n)
    return np.stack([i, j], axis=1)
