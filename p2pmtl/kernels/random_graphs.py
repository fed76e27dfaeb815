"""Compiled passes behind :mod:`p2pmtl.graphs.random_families`: networkx's Watts-Strogatz and
Barabasi-Albert generators replayed on a buffer of Python's Mersenne Twister words (one
``random()`` = two words, one ``getrandbits(k)`` = one word ``>> (32 - k)``), sequential as the
algorithms are. See that module for what is reproduced and how it is tested."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def random_float(words, at):
    """``random.random()`` from ``words[at]`` and ``words[at + 1]``."""
    a = words[at] >> np.uint64(5)
    b = words[at + 1] >> np.uint64(6)
    return (float(a) * 67108864.0 + float(b)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True, boundscheck=False)
def below(words, at, size, k):
    """``random.Random._randbelow(size)`` (``k = size.bit_length() <= 32``) from
    ``words[at:]``: (value, words used), or (-1, -1) when the words run out."""
    used = 0
    while at + used < words.size:
        r = np.int64(words[at + used] >> np.uint64(32 - k))
        used += 1
        if r < size:
            return r, used
    return -1, -1


@njit(cache=True, nogil=True, boundscheck=False)
def slot(table, mask, key):
    """Open addressing on int64 keys (-1 empty, -2 removed): the slot holding ``key``, or
    the first free one on its probe sequence (negative: ``-1 - slot``)."""
    h = key * np.int64(-7046029254386353131)  # Fibonacci hashing (2**64 / golden ratio, wrapped)
    i = (h ^ (h >> 29)) & mask
    free = -1
    while True:
        t = table[i]
        if t == key:
            return i
        if t == -1:
            return -1 - (free if free >= 0 else i)
        if t == -2 and free < 0:
            free = i
        i = (i + 1) & mask


@njit(cache=True, nogil=True, boundscheck=False)
def watts_strogatz(n, k, p, words):
    """networkx's ``watts_strogatz_graph`` on the word stream: (edge keys ``u * n + w``
    with ``u < w`` of the final graph, words used); words used = -1 when ``words`` ran out."""
    half = k // 2
    size = 1
    while size < 4 * max(n * half, 1):
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    mask = size - 1
    degree = np.zeros(n, dtype=np.int64)
    for j in range(1, half + 1):
        for u in range(n):
            v = (u + j) % n
            key = min(u, v) * n + max(u, v)
            s = slot(table, mask, key)
            if s < 0:
                table[-1 - s] = key
                degree[u] += 1
                degree[v] += 1
    bits = 0
    m = n
    while m:
        bits += 1
        m >>= 1
    at = 0
    limit = words.size
    for j in range(1, half + 1):
        for u in range(n):
            v = (u + j) % n
            if at + 2 > limit:
                return table, -1
            r = random_float(words, at)
            at += 2
            if r < p:
                w, used = below(words, at, n, bits)
                if used < 0:
                    return table, -1
                at += used
                rewire = True
                while w == u or slot(table, mask, min(u, w) * n + max(u, w)) >= 0:
                    w, used = below(words, at, n, bits)
                    if used < 0:
                        return table, -1
                    at += used
                    if degree[u] >= n - 1:
                        rewire = False
                        break
                if rewire:
                    table[slot(table, mask, min(u, v) * n + max(u, v))] = -2
                    degree[v] -= 1
                    s = slot(table, mask, min(u, w) * n + max(u, w))
                    table[-1 - s] = min(u, w) * n + max(u, w)
                    degree[w] += 1
    return table, at


@njit(cache=True, nogil=True, boundscheck=False)
def _insert_clean(table, mask, x):
    """Put ``x`` (not in the table) in the first empty slot of its CPython probe sequence:
    ``x & mask``, then up to 9 slots after it when they exist (LINEAR_PROBES), then the
    perturbed jump ``i * 5 + 1 + (perturb >>= 5)`` (setobject.c, ``set_insert_clean``; for a
    new key ``set_add_entry`` takes the same slot)."""
    i = x & mask
    perturb = x
    while True:
        probes = 9 if i + 9 <= mask else 0
        j = i
        while True:
            if table[j] == -1:
                table[j] = x
                return
            if probes == 0:
                break
            probes -= 1
            j += 1
        perturb >>= 5
        i = (i * 5 + 1 + perturb) & mask


@njit(cache=True, nogil=True, boundscheck=False)
def set_order(values, count, table):
    """The iteration order of a CPython ``set`` of small non-negative ints after adding
    ``values[:count]`` in turn (duplicates already removed): ``table`` is scratch space of
    at least 8 slots, returned holding the values in slot order (-1 empty); returns the
    table's size. The table starts at 8 slots and, when an insertion leaves it 3/5 full,
    grows to the first power of two above 4 times the entries (2 times above 50,000), the
    entries re-inserted in slot order (``set_table_resize``)."""
    size = 8
    table[:size] = -1
    fill = 0
    for c in range(count):
        mask = size - 1
        _insert_clean(table, mask, values[c])
        fill += 1
        if fill * 5 >= mask * 3:
            minused = fill * 2 if fill > 50000 else fill * 4
            new = 8
            while new <= minused:
                new <<= 1
            old = table[:size].copy()
            size = new
            table[:size] = -1
            for y in old:
                if y >= 0:
                    _insert_clean(table, size - 1, y)
    return size


@njit(cache=True, nogil=True, boundscheck=False)
def barabasi_albert(n, m, words):
    """networkx's ``barabasi_albert_graph`` (star of m + 1 nodes to start) on the word
    stream: (sources, targets, words used); words used = -1 when ``words`` ran out."""
    edges = m + (n - m - 1) * m
    src = np.empty(edges, dtype=np.int64)
    dst = np.empty(edges, dtype=np.int64)
    repeated = np.empty(2 * edges, dtype=np.int64)
    for i in range(m):  # the star: node 0 to 1..m; repeated: 0 (m times), then 1..m
        src[i] = 0
        dst[i] = i + 1
        repeated[i] = 0
        repeated[m + i] = i + 1
    length = 2 * m
    e = m
    chosen = np.empty(m, dtype=np.int64)
    table = np.empty(max(8, 64 * m), dtype=np.int64)
    at = 0
    for source in range(m + 1, n):
        bits = 0
        size = length
        while size:
            bits += 1
            size >>= 1
        count = 0
        while count < m:
            r, used = below(words, at, length, bits)
            if used < 0:
                return src, dst, -1
            at += used
            x = repeated[r]
            new = True
            for c in range(count):
                if chosen[c] == x:
                    new = False
                    break
            if new:
                chosen[count] = x
                count += 1
        size = set_order(chosen, m, table)
        for s in range(size):
            x = table[s]
            if x >= 0:
                src[e] = source
                dst[e] = x
                e += 1
                repeated[length] = x
                length += 1
        for c in range(m):
            repeated[length] = source
            length += 1
    return src, dst, at
