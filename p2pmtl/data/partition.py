"""Split a labelled dataset among clients: consecutive slices, iid, S classes per client
(pathological non-iid, McMahan et al. 2017) and Dirichlet label skew (Hsu et al. 2019).

Every partitioner is deterministic for its ``seed`` and returns one sorted int64 index array
per client; the arrays are pairwise disjoint.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .arrays import ArrayDataset


# --------------------------------------------------------------------------- validation


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return int(value)


def _labels(labels: object) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_total(n_clients: int, size_per_client: int, available: int) -> None:
    asked = n_clients * size_per_client
    if asked > available:
        raise ValueError(
            f"size_per_client={size_per_client} for n_clients={n_clients} asks for {asked} samples "
            f"but only {available} are available; size_per_client must be <= {available // n_clients}"
        )


def _sorted(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------- partitioners


def partition_slices(n_items: int, sizes: Sequence[int], *, offset: int = 0) -> list[np.ndarray]:
    """Consecutive slices: client ``i`` gets the next ``sizes[i]`` items after ``offset``
    (the fixed per-client slices of the reference code)."""
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 0:
        raise ValueError(f"n_items must be a non-negative integer, got {n_items!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    if len(sizes) == 0:
        raise ValueError("sizes must list at least one client size (positive integers)")
    sizes = [_positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
    total = sum(sizes)
    if offset + total > n_items:
        raise ValueError(
            f"sizes ask for {total} items starting at offset={offset} but only "
            f"{n_items - offset} are available (n_items={n_items}); sum(sizes) must be <= {n_items - offset}"
        )
    bounds = offset + np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(len(sizes))]


def partition_iid(
    labels: object, n_clients: int, size_per_client: Optional[int], seed: int
) -> list[np.ndarray]:
    """Uniformly random disjoint shards. ``size_per_client=None`` deals out every item
    (sizes differ by at most one); otherwise each client gets exactly that many."""
    y = _labels(labels)
    n_clients = _positive_int("n_clients", n_clients)
    perm = np.random.default_rng(seed).permutation(len(y))
    if size_per_client is None:
        if n_clients > len(y):
            raise ValueError(f"n_clients={n_clients} exceeds the {len(y)} available samples")
        return _sorted(np.array_split(perm, n_clients))
    size = _positive_int("size_per_client", size_per_client)
    _check_total(n_clients, size, len(y))
    return _sorted(perm[: n_clients * size].reshape(n_clients, size))


def _class_sets(classes: np.ndarray, n_clients: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_clients, s]`` distinct classes per client; each class used floor/ceil(n*s/K) times.

    Clients take consecutive windows of a shuffled class cycle, so the ``s`` classes of a
    client are distinct (s <= K) and usage is as even as possible.
    """
    order = rng.permutation(classes)
    slots = (np.arange(n_clients)[:, None] * s + np.arange(s)[None, :]) % len(classes)
    return order[slots]


def partition_classes(
    labels: object,
    n_clients: int,
    classes_per_client: int,
    size_per_client: Optional[int],
    seed: int,
) -> list[np.ndarray]:
    """Pathological non-iid: each client holds exactly ``classes_per_client`` distinct classes.

    Class sets are assigned so every class is used about equally often; each class's items
    are shuffled and split among the clients holding it. With ``size_per_client=None`` all
    items of every used class are dealt out; otherwise each client gets exactly that many,
    spread as evenly as possible over its classes.
    """
    y = _labels(labels)
    n_clients = _positive_int("n_clients", n_clients)
    s = _positive_int("classes_per_client", classes_per_client)
    classes = np.unique(y)
    if s > len(classes):
        raise ValueError(
            f"classes_per_client={s} but the data has only {len(classes)} classes; "
            f"classes_per_client must be in 1..{len(classes)}"
        )
    size = None if size_per_client is None else _positive_int("size_per_client", size_per_client)
    if size is not None:
        _check_total(n_clients, size, len(y))
        if size < s:
            raise ValueError(
                f"size_per_client={size} cannot cover classes_per_client={s} distinct classes; "
                f"size_per_client must be >= {s}"
            )
    rng = np.random.default_rng(seed)
    sets = _class_sets(classes, n_clients, s, rng)

    # how many items of each class each client takes: demand[client, j] for class sets[client, j]
    if size is None:
        demand = np.zeros((n_clients, s), dtype=np.int64)
        for c in classes:
            holders = np.argwhere(sets == c)
            if len(holders) == 0:
                continue
            count = int(np.sum(y == c))
            if count < len(holders):
                raise ValueError(
                    f"class {c} has {count} samples but {len(holders)} clients hold it; lower "
                    f"n_clients or classes_per_client (now {n_clients}, {s})"
                )
            shares = [len(a) for a in np.array_split(np.arange(count), len(holders))]
            demand[holders[:, 0], holders[:, 1]] = rng.permutation(shares)
    else:
        base, extra = divmod(size, s)
        demand = np.full((n_clients, s), base, dtype=np.int64)
        for i in range(n_clients):  # the remainder goes to randomly chosen classes of the client
            demand[i, rng.choice(s, size=extra, replace=False)] += 1
        for c in classes:
            need = int(demand[sets == c].sum())
            count = int(np.sum(y == c))
            if need > count:
                raise ValueError(
                    f"class {c} has only {count} samples but the clients holding it ask for {need} "
                    f"(size_per_client={size}, classes_per_client={s}, n_clients={n_clients}); "
                    f"lower size_per_client or n_clients"
                )

    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in classes:
        holders = np.argwhere(sets == c)
        if len(holders) == 0:
            continue
        items = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for client, j in holders:
            take = int(demand[client, j])
            parts[client].append(items[start : start + take])
            start += take
    return _sorted([np.concatenate(p) for p in parts])


def partition_dirichlet(
    labels: object, n_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split (Hsu et al. 2019): for every class, client shares ~ Dirichlet(alpha).

    Every item goes to some client. Draws are repeated until each client has at least
    ``min_size`` items (clients already above the mean size get no more of a class, as in
    the common reference implementation); small ``alpha`` means strong skew.
    """
    y = _labels(labels)
    n_clients = _positive_int("n_clients", n_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if n_clients * min_size > len(y):
        raise ValueError(
            f"min_size={min_size} for n_clients={n_clients} needs {n_clients * min_size} samples "
            f"but only {len(y)} are available; min_size must be <= {len(y) // n_clients}"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    mean_size = len(y) / n_clients
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_clients, float(alpha)))
            p = np.where(sizes < mean_size, p, 0.0)
            p = p / p.sum() if p.sum() > 0 else np.full(n_clients, 1.0 / n_clients)
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_size:
            return _sorted([np.concatenate(p) for p in parts])
    raise ValueError(
        f"could not give every client min_size={min_size} items with alpha={alpha} after 1000 "
        f"draws; lower min_size or raise alpha"
    )


def split_dataset(ds: ArrayDataset, index_lists: Sequence[np.ndarray]) -> list[ArrayDataset]:
    """One :class:`ArrayDataset` per index array (e.g. a partitioner's output)."""
    return [ds.subset(idx) for idx in index_lists]
