"""networkx's random graph families, built as edge arrays: the same graphs for the same seeds.

``erdos_renyi``, ``watts_strogatz`` and ``barabasi_albert`` were built by networkx
(``fast_gnp_random_graph``, ``watts_strogatz_graph``, ``barabasi_albert_graph``), one Python
step and one dict entry per edge: minutes and gigabytes at a million agents. This module
replays the same algorithms on the same random stream and returns the edge arrays of an
:class:`~p2pmtl.graphs.edge_list.EdgeListGraph`, so every seeded graph (and every result built on
one) is the one networkx gives (tested edge for edge against networkx).

The stream: networkx turns an integer seed into ``random.Random(seed)``, a Mersenne Twister
(MT19937). :func:`python_random_bits` copies that generator's state into numpy's
``MT19937`` bit generator, whose raw 32-bit outputs are the same words; from them,
``random()`` is ``((a >> 5) * 2**26 + (b >> 6)) / 2**53`` of two words and
``getrandbits(k)`` (k <= 32) is one word ``>> (32 - k)``, as in CPython's ``_randommodule.c``.

- G(n, p) (Batagelj and Brandes' geometric skips): vectorized; each skip is
  ``int(log(1 - r) / log(1 - p))`` where numpy's ``log`` may differ from ``math.log`` in the last
  bit, so the few skips that lie within a few ulps of an integer are recomputed with
  ``math.log``.
- Watts-Strogatz and Barabasi-Albert: sequential by nature (a rewired edge must avoid the edges
  already there; a new node attaches in proportion to the degrees so far), so one compiled
  pass (numba, :mod:`p2pmtl.kernels.random_graphs`) over a buffer of raw words, from
  :data:`COMPILED_MIN_EDGES` edges (networkx below). Barabasi-Albert appends each new node's targets in
  the iteration order of the Python ``set`` that collected them, which the pass reproduces
  (CPython's open addressing of small integers: 9 linear probes, then perturbation; a resize
  when the table is 3/5 full).
"""
from __future__ import annotations

import math
import random

import numpy as np

COMPILED_MIN_EDGES = 50_000
"""Watts-Strogatz and Barabasi-Albert graphs from about this many edges are built by the
compiled passes; smaller ones by networkx itself (the same graph), sparing numba's import
(about 0.3 s) where networkx takes less (about 0.15 s at 50,000 edges)."""

CHUNK_DRAWS = 1 << 22
"""G(n, p) draws at most this many random numbers at a time (a few 32 MB arrays)."""


def python_random_bits(seed: int) -> np.random.MT19937:
    """numpy's MT19937 bit generator in the state of ``random.Random(seed)``: its raw outputs
    (``random_raw``) are the 32-bit words that generator draws from."""
    _, internal, _ = random.Random(seed).getstate()
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937",
                  "state": {"key": np.array(internal[:624], dtype=np.uint32), "pos": internal[624]}}
    return bits


def _uniforms(words: np.ndarray) -> np.ndarray:
    """``random.random()`` of consecutive word pairs."""
    a = (words[0::2] >> np.uint64(5)).astype(np.float64)
    b = (words[1::2] >> np.uint64(6)).astype(np.float64)
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


def _skip_steps(r: np.ndarray, lp: float, cap: int) -> np.ndarray:
    """``1 + int(math.log(1.0 - r) / lp)`` for each ``r``, capped at ``cap + 1`` (a skip that
    long leaves the pair range anyway)."""
    q = np.log(1.0 - r) / lp
    near = np.abs(q - np.rint(q)) <= 64 * np.finfo(np.float64).eps * np.maximum(q, 1.0)
    for i in np.flatnonzero(near).tolist():  # numpy's log may be one ulp off math.log: redo these
        q[i] = math.log(1.0 - float(r[i])) / lp
    return 1 + np.minimum(q, float(cap)).astype(np.int64)


def _gnp_positions(bits: np.random.MT19937, p: float, lp: float, total: int) -> np.ndarray:
    """One pass of networkx's ``fast_gnp_random_graph`` loop over the ``total`` pairs
    ``w < v`` numbered ``v (v - 1) / 2 + w``: the numbers of the pairs it links, drawing
    exactly the random numbers that loop draws (the last one steps past the end)."""
    found, at = [], -1
    while True:
        saved = bits.state
        count = int(min(CHUNK_DRAWS, 1.1 * p * (total - at) + 64))  # about all that is left, at most a chunk
        steps = _skip_steps(_uniforms(bits.random_raw(2 * count)), lp, total)
        pos = at + np.cumsum(steps)
        end = int(np.searchsorted(pos, total))  # first position past the last pair
        if end < count:
            found.append(pos[:end])
            bits.state = saved
            bits.random_raw(2 * (end + 1))  # the loop drew exactly end + 1 numbers
            return np.concatenate(found)
        found.append(pos)
        at = int(pos[-1])


def _pairs(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair number ``k = v (v - 1) / 2 + w`` (``w < v``) -> ``(v, w)``."""
    v = np.floor((1.0 + np.sqrt(1.0 + 8.0 * k.astype(np.float64))) / 2.0).astype(np.int64)
    v -= v * (v - 1) // 2 > k  # float rounding, either way
    v += (v + 1) * v // 2 <= k
    return v, k - v * (v - 1) // 2


def erdos_renyi_arrays(n: int, p: float, seed: int, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The edges ``(src, dst)`` of ``networkx.fast_gnp_random_graph(n, p, seed, directed)``
    (``p <= 0``: none; ``p >= 1``: every pair): undirected, each pair once as ``(v, w)``,
    ``w < v``; directed, first the pass over ``w -> v``, then (on the same stream) over
    ``v -> w``. When ``1 - p`` rounds to 1 (p below about 1.1e-16) there is no edge (networkx
    divides by ``log(1 - p) = 0`` there and fails)."""
    total = n * (n - 1) // 2
    if p >= 1.0:  # networkx: the complete graph
        v, w = _pairs(np.arange(total, dtype=np.int64))
        return (np.concatenate([w, v]), np.concatenate([v, w])) if directed else (v, w)
    lp = math.log(1.0 - p) if p > 0.0 else 0.0
    if total == 0 or lp == 0.0:  # p = 0 (networkx: no edge), or 1 - p rounds to 1
        return np.empty(0, np.int64), np.empty(0, np.int64)
    bits = python_random_bits(seed)
    v, w = _pairs(_gnp_positions(bits, p, lp, total))
    if not directed:
        return v, w
    v2, w2 = _pairs(_gnp_positions(bits, p, lp, total))
    return np.concatenate([w, v2]), np.concatenate([v, w2])


def _with_words(seed: int, need: int, run):
    """Run a compiled pass on a buffer of the seed's raw words, doubling the buffer until the
    pass does not run out (each attempt from the stream's start; at most 2**10 times the first
    guess, which the passes' expected draws never come near)."""
    for _ in range(11):
        out = run(python_random_bits(seed).random_raw(need))
        if out[-1] >= 0:
            return out
        need *= 2
    raise RuntimeError(f"random graph: the pass still wanted more than {need // 2:,} random words")


def watts_strogatz_arrays(n: int, k: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges ``(u, w)``, ``u < w``, of ``networkx.watts_strogatz_graph(n, k, p, seed)``
    for ``k < n``: the ring of ``k // 2`` neighbours on each side, each edge ``u - u + j``
    (j = 1 .. k // 2, then u = 0 .. n - 1) rewired with probability p to ``u - w``, ``w``
    uniform over the nodes that are neither ``u`` nor already linked to it."""
    from ..kernels.random_graphs import watts_strogatz as ws

    half = k // 2
    need = 2 * n * half + 8 * int(p * n * half) + 4096
    table, _ = _with_words(seed, need, lambda words: ws(n, k, float(p), words))
    keys = table[table >= 0]
    keys.sort()
    return keys // n, keys % n


def barabasi_albert_arrays(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges ``(source, target)`` of ``networkx.barabasi_albert_graph(n, m, seed)`` for
    ``1 <= m < n``: a star on nodes 0..m, then each new node linked to m distinct earlier nodes
    drawn in proportion to their degrees."""
    if (2 * m * n).bit_length() > 32:
        raise ValueError(f"barabasi_albert: n = {n}, m = {m} is beyond the 2**32 draws of one random word")
    from ..kernels.random_graphs import barabasi_albert as ba

    need = 4 * m * n + 4096
    src, dst, _ = _with_words(seed, need, lambda words: ba(n, m, words))
    return src, dst
