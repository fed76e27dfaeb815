"""The rest of the resilient-averaging family (RESAM, issue "RESAM" item 2): aggregators
``mda``, ``meamed``, ``monna``, ``bulyan``, ``smea``, ``caf`` and pre-aggregation steps
``bucketing``, ``arc``, registered in :data:`~p2pmtl.robust.aggregators.AGGREGATORS` and
:data:`~p2pmtl.robust.aggregators.PRE_AGGREGATORS` when :mod:`p2pmtl.robust` is imported.

They share the machinery of :mod:`p2pmtl.robust.aggregators` (keyword-only validated
hyper-parameters, call-time ``_check_n``, non-finite rows dropped and huge finite rows handled
on a scaled stack, ``f`` lowered only when dropped rows require it; see that module's
docstring) and its kernels: pairwise distances from one Gram matrix, column chunks of
:data:`~p2pmtl.robust.aggregators.CHUNK_COLUMNS` columns, results in the input dtype.

Sources (definitions followed; where a public implementation differs, the class says how):

- MDA: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
  Byzantium", ICML 2018; used in Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Byzantine
  Machine Learning Made Easy by Resilient Averaging of Momentums" (RESAM), ICML 2022;
- MeaMed: Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", 2018 (mean around median);
- MoNNA: Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning
  with Linear Gradient Overhead", ICML 2023;
- Bulyan: El Mhamdi, Guerraoui, Rouault, ICML 2018 (as MDA);
- SMEA: Allouah, Guerraoui, Gupta, Pinot, Stephan, "On the Privacy-Robustness-Utility
  Trilemma in Distributed Learning", ICML 2023;
- CAF: Allouah, Guerraoui, Stephan, "Towards Trustworthy Federated Learning with Untrusted
  Participants", ICML 2025 (covariance-bound agnostic filter, a weighted spectral filter in the
  line of Diakonikolas, Kamath, Kane, Li, Moitra, Stewart, "Robust Estimators in High
  Dimensions without the Computational Intractability", FOCS 2016);
- bucketing: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
  Bucketing", ICLR 2022;
- ARC: Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting Robustness by Clipping
  Gradients in Distributed Learning" (arXiv:2405.14432, 2024: adaptive robust clipping).

The public reference implementations are those of the ByzFL library (EPFL), read for the
definitions (``k = floor(2 f (n - f) / n)`` in ARC, the CAF loop); nothing is copied.

MDA and SMEA enumerate every subset of ``n - f`` inputs (``C(n, f)`` of them): exact, but only
for small ``n`` or ``f``. Above ``max_subsets`` (default :data:`MAX_SUBSETS` for MDA,
:data:`SMEA_MAX_SUBSETS` for SMEA) they raise ``ValueError`` instead of running for hours.
"""
from __future__ import annotations

import itertools
import math
from array import array
from typing import ClassVar, Iterator, Optional

import torch

from .aggregators import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    Aggregator,
    HonestMajority,
    HonestMinority,
    PreAggregator,
    _check_stack,
    _clip_scales,
    _chunk_results,
    _column_slices,
    _compute_dtype,
    _distances_to,
    _int_param,
    _register,
    _selected_mean_columns,
    _sorted_columns,
    _weighted_sum,
    coordinatewise_median,
)

MAX_SUBSETS = 2_000_000
"""Default limit on ``C(n, f)``, the number of subsets MDA enumerates (seconds of CPU at the
limit)."""

SMEA_MAX_SUBSETS = 200_000
"""Default limit on ``C(n, f)`` for SMEA (one ``(n - f) x (n - f)`` eigenvalue problem per
subset: about 20 s of CPU at the limit for ``n - f ~ 20``)."""

_SMEA_RTOL = 1e-10
"""SMEA: top eigenvalues within this relative distance of the smallest one count as tied (the
eigenvalue solver's rounding differs between permutations of the same points)."""


# --------------------------------------------------------------------------- shared kernels


def _mean_closest_to_median(c: torch.Tensor, k: int) -> torch.Tensor:
    """Per column of ``c`` (``[m, chunk]``), the mean of the ``k`` values closest to the column's
    median (midpoint of the two middle values for even ``m``). Ties in distance to the median
    go to the lower value (a stable sort of the ascending values by distance)."""
    m = c.shape[0]
    s = _sorted_columns(c)  # [chunk, m], ascending
    if m % 2:
        med = s[:, m // 2]
    else:  # as coordinatewise_median: 0.5 * lower + 0.5 * upper middle value
        med = 0.5 * s[:, m // 2 - 1] + 0.5 * s[:, m // 2]
    if k == m:
        return s.mean(dim=1)
    order = (s - med[:, None]).abs_().sort(dim=1, stable=True).indices[:, :k]
    return s.gather(1, order).mean(dim=1)


def _mean_of_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``mean_{i in rows} x_i`` as ``[d]`` in the compute dtype, column chunk by chunk."""
    d = x.shape[1]
    cdt = _compute_dtype(x.dtype)
    out = torch.empty(d, dtype=cdt, device=x.device)
    for sl in _column_slices(d, _selected_mean_columns(rows.numel(), out.element_size(), x.device)):
        out[sl] = x[:, sl].index_select(0, rows).to(cdt).mean(dim=0)
    return out


def _excluded_sets(n: int, f: int, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The ``f``-subsets of ``range(n)`` as ``[B, f]`` index tensors (ascending rows), in
    ``itertools.combinations`` (lexicographic) order, ``batch`` at a time. The kept sets (the
    complements) then come in *reverse* lexicographic order: for two sets of equal size, the
    smallest index in their symmetric difference is in the lexicographically first one, and is
    excluded by the other one's complement."""
    if f == 0:
        yield torch.zeros((1, 0), dtype=torch.int64, device=device)
        return
    combos = itertools.combinations(range(n), f)
    while True:
        flat = array("q", itertools.chain.from_iterable(itertools.islice(combos, batch)))
        if not flat:
            return
        yield torch.frombuffer(flat, dtype=torch.int64).view(-1, f).to(device, copy=True)


def _kept_sets(excluded: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n - f]`` ascending indices of the complements of ``excluded`` (``[B, f]``)."""
    b = excluded.shape[0]
    mask = torch.zeros((b, n), dtype=torch.bool, device=excluded.device).scatter_(1, excluded, True)
    return torch.arange(n, device=excluded.device).expand(b, n)[~mask].view(b, -1)


def _unrank_combination(n: int, r: int, index: int) -> list[int]:
    """The ``index``-th (from 0) ``r``-subset of ``range(n)`` in ``itertools.combinations`` order."""
    out: list[int] = []
    start = 0
    for left in range(r, 0, -1):
        for v in range(start, n):
            count = math.comb(n - v - 1, left - 1)  # subsets that start with v at this position
            if index < count:
                out.append(v)
                start = v + 1
                break
            index -= count
    return out


def _lex_first_best(scores: torch.Tensor, rtol: float) -> int:
    """Position, in the enumeration of :func:`_excluded_sets`, of the best kept set: the smallest
    score (within ``rtol`` relative), ties to the lexicographically first kept set, i.e. the
    *last* excluded set in enumeration order."""
    best = float(scores.min())
    tied = scores <= best + rtol * abs(best)
    return int(tied.nonzero()[-1, 0])


# --------------------------------------------------------------------------- subset enumeration


class _SubsetAverage(Aggregator):
    """Mean of the ``n - f`` inputs whose subset minimises a score, by exact enumeration of the
    ``C(n, f)`` subsets (shared by :class:`MinimumDiameterAveraging` and
    :class:`SmallestMaxEigenvalueAveraging`)."""

    MAX_SUBSETS: ClassVar[int] = MAX_SUBSETS
    _rtol: ClassVar[float] = 0.0

    guarded = True
    certifies = True

    def _init(self, f: int, max_subsets: int) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.max_subsets = _int_param("max_subsets", max_subsets, minimum=1)
        self.last_subset: list[int] = []

    def _max_f(self, n: int) -> int:
        return (n - 1) // 2

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)
        if n <= 2 * f:
            raise ValueError(f"{self.name}: needs n > 2f, got n = {n} and f = {f}")
        count = math.comb(n, f)
        if count > self.max_subsets:
            raise ValueError(
                f"{self.name}: exact enumeration of the C(n, f) = C({n}, {f}) = {count} subsets of n - f = "
                f"{n - f} inputs exceeds max_subsets = {self.max_subsets}; raise max_subsets (time grows with "
                f"the count) or use a cheaper rule (e.g. multi_krum, meamed)"
            )

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        f = self._fit_f(n)
        scores = self._subset_scores(self._gram_distances(x, f), f)
        excluded = set(_unrank_combination(n, f, _lex_first_best(scores, self._rtol)))
        self.last_subset = [i for i in range(n) if i not in excluded]
        return _mean_of_rows(x, torch.tensor(self.last_subset, dtype=torch.long, device=x.device))

    def _subset_scores(self, d2: torch.Tensor, f: int) -> torch.Tensor:
        """``[C(n, f)]`` float64 scores of the kept sets, in :func:`_excluded_sets` order."""
        raise NotImplementedError


@_register(
    AGGREGATORS, "mda", "minimum diameter averaging: mean of the n-f inputs whose subset has the smallest diameter"
)
class MinimumDiameterAveraging(_SubsetAverage):
    """Minimum diameter averaging (El Mhamdi, Guerraoui, Rouault, ICML 2018; one of the
    resilient averaging rules of RESAM, Farhadkhani et al., ICML 2022):

        S* = argmin_{S subset of [n], |S| = n - f} max_{i, j in S} ||x_i - x_j||,
        MDA(x_1..x_n) = mean_{i in S*} x_i.

    Ties in diameter go to the lexicographically first ``S`` (``itertools.combinations`` order
    of the sorted indices; ``last_subset`` holds the chosen one, as indices of the finite rows).
    Requires ``n > 2f``. The
    minimum is found exactly by enumerating the ``C(n, f)`` excluded sets: each subset's
    diameter is the largest pairwise distance that touches none of its excluded inputs, read
    from the pairs sorted by distance (only the first ``f (n - 1) - f (f - 1) / 2 + 1`` can be
    needed). RESAM shows ``(f, kappa)``-resilient averaging with ``kappa <= 2f / (n - f)``.

    Parameters (keyword-only): ``f`` (required) assumed Byzantine inputs;
    ``max_subsets = MAX_SUBSETS`` (2,000,000) largest ``C(n, f)`` enumerated, above which the
    call raises ``ValueError`` naming ``n``, ``f``, the count and the limit (``C(26, 5)`` is
    65,780; ``C(1000, 2)`` is 499,500).

    Example (f = 1): ``[0], [1], [2], [10]``: dropping 10 leaves diameter 2 (dropping 0: 9) ->
    ``[1]``. With ties, ``[0], [1], [2], [3]`` (f = 1): ``{0, 1, 2}`` and ``{1, 2, 3}`` both have
    diameter 2, the first wins -> ``[1]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it). Distances and the mean run on the scaled stack, so the result is finite. When
    at most ``f`` of the remaining rows are corrupted (1e308 included), the chosen subset's
    diameter is at most the honest rows' diameter ``delta`` and it holds an honest row
    (``n > 2f``), so the result lies within ``delta`` of an honest row.
    """

    def __init__(self, *, f: int, max_subsets: int = MAX_SUBSETS) -> None:
        self._init(f, max_subsets)

    def _subset_scores(self, d2: torch.Tensor, f: int) -> torch.Tensor:
        n = d2.shape[0]
        if n < 2:
            return torch.zeros(1, dtype=torch.float64, device=d2.device)  # n = 1, f = 0: no pair
        iu = torch.triu_indices(n, n, offset=1, device=d2.device)
        pair_d2 = d2[iu[0], iu[1]]
        # f excluded inputs touch at most f (n - 1) - f (f - 1) / 2 pairs, and n - f >= 2 kept
        # inputs leave a pair: the first untouched pair, from the largest, is among these
        need = min(pair_d2.numel(), f * (n - 1) - f * (f - 1) // 2 + 1)
        order = torch.sort(pair_d2, descending=True, stable=True).indices[:need]
        a, b, vals = iu[0, order], iu[1, order], pair_d2[order]
        out = []
        for ex in _excluded_sets(n, f, 1 << 16, d2.device):
            diam = torch.empty(ex.shape[0], dtype=torch.float64, device=d2.device)
            todo = torch.arange(ex.shape[0], device=d2.device)
            start, width = 0, 8
            while todo.numel():  # scan the pairs from the largest, a few at a time: the first
                seg = slice(start, min(start + width, need))  # pair is usually kept already
                e = ex.index_select(0, todo)[:, :, None]  # [b, f, 1]
                free = ~((e == a[seg]).any(dim=1) | (e == b[seg]).any(dim=1))  # both ends kept
                found = free.any(dim=1)
                diam[todo[found]] = vals[seg][free[found].to(torch.uint8).argmax(dim=1)]
                todo = todo[~found]
                start, width = start + width, width * 4
            out.append(diam)
        return torch.cat(out)


@_register(
    AGGREGATORS, "smea",
    "smallest maximum eigenvalue averaging: mean of the n-f inputs whose covariance has the smallest top eigenvalue",
)
class SmallestMaxEigenvalueAveraging(_SubsetAverage):
    """Smallest maximum eigenvalue averaging (Allouah, Guerraoui, Gupta, Pinot, Stephan,
    "On the Privacy-Robustness-Utility Trilemma in Distributed Learning", ICML 2023):

        S* = argmin_{|S| = n - f} lambda_max(Sigma_S),
        Sigma_S = 1/|S| sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T,  mu_S = mean_{i in S} x_i,
        SMEA(x_1..x_n) = mu_{S*}.

    ``lambda_max(Sigma_S)`` is computed exactly, as the largest eigenvalue of the
    ``(n - f) x (n - f)`` Gram matrix of the centred subset divided by ``n - f``
    (``-1/2 J D_S J``, ``D_S`` its squared distances, ``J`` the centring matrix), not by the one
    random power-iteration step of ByzFL's implementation. Ties (top eigenvalues within a
    relative 1e-10 of the smallest, the eigen-solver's rounding) go to the lexicographically
    first ``S``, as in :class:`MinimumDiameterAveraging` (``last_subset`` holds it). Requires
    ``n > 2f``. Parameters (keyword-only): ``f`` (required); ``max_subsets``, default
    ``SMEA_MAX_SUBSETS`` (200,000): as for MDA, a larger ``C(n, f)`` raises ``ValueError``.
    Cost: one batched ``eigvalsh`` of size ``n - f`` per subset.

    Example (f = 1): ``[0], [1], [2], [10]``: variances of the 3-subsets are 2/3 for
    ``{0, 1, 2}`` and at least 14 for the others -> ``[1]``. In 1-D the top eigenvalue is the
    variance.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it); distances, eigenvalues and the mean run on the scaled stack, so the result is
    finite. When at most ``f`` remaining rows are corrupted (1e308 included), the chosen
    subset's top eigenvalue is at most ``lambda_H``, that of the honest rows' best
    ``(n - f)``-subset; a row at distance ``r`` from its subset's mean forces
    ``lambda_max >= r^2 / (n - f)``, and the subset holds an honest row (``n > 2f``), so the
    result lies within ``sqrt((n - f) lambda_H)`` of an honest row.
    """

    MAX_SUBSETS = SMEA_MAX_SUBSETS
    _rtol = _SMEA_RTOL

    def __init__(self, *, f: int, max_subsets: int = SMEA_MAX_SUBSETS) -> None:
        self._init(f, max_subsets)

    def _subset_scores(self, d2: torch.Tensor, f: int) -> torch.Tensor:
        n = d2.shape[0]
        k = n - f
        batch = max(1, (1 << 20) // (k * k))
        out = []
        for ex in _excluded_sets(n, f, batch, d2.device):
            idx = _kept_sets(ex, n)  # [B, k], ascending
            ds = d2[idx[:, :, None], idx[:, None, :]]  # [B, k, k]
            row = ds.mean(dim=2)
            gram = (ds - row[:, :, None] - row[:, None, :] + row.mean(dim=1)[:, None, None]).mul_(-0.5)
            out.append(torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0) / k)
        return torch.cat(out)


# --------------------------------------------------------------------------- coordinate-wise


@_register(
    AGGREGATORS, "meamed", "mean around the median: per coordinate, mean of the n-f values closest to the median"
)
class MeanAroundMedian(HonestMajority, Aggregator):
    """Mean around the median, MeaMed (Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant
    SGD", 2018): per coordinate ``j``,

        z_j = mean of the n - f values x_ij closest to median_i x_ij,

    the median being the midpoint of the two middle values for even ``n`` (as
    :class:`~p2pmtl.robust.aggregators.CoordinateMedian`). Ties in distance to the median go to
    the lower value (values sorted ascending, then stably by distance), so the rule is
    deterministic. Requires ``n > 2f``; ``f`` (keyword-only, required) assumed Byzantine inputs.

    Example (f = 1): ``[1, 1], [2, 2], [3, 3], [100, 4]``: first column: median 2.5, distances
    1.5, 0.5, 0.5, 97.5 -> mean of 1, 2, 3 = 2; second column ``1, 2, 3, 4``: median 2.5, and
    the tie between 1 and 4 (both 1.5 away) goes to 1 -> mean of 1, 2, 3 = 2. Result ``[2, 2]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it). Values are compared and averaged on the scaled stack, so the result is finite.
    When at most ``f`` remaining rows are corrupted (however far, 1e308 included), the median
    lies within the honest values' range ``[lo, hi]`` and at least ``n - f`` honest values are
    within ``hi - lo`` of it, so every coordinate lies within ``[2 lo - hi, 2 hi - lo]``.
    """

    guarded = True


    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        k = n - self._fit_f(n)
        cdt = _compute_dtype(x.dtype)
        out = torch.empty(d, dtype=cdt, device=x.device)
        for sl, mean in _chunk_results(lambda sl: _mean_closest_to_median(x[:, sl].to(cdt), k), x):
            out[sl] = mean
        return out


# --------------------------------------------------------------------------- trusted input


@_register(AGGREGATORS, "monna", "MoNNA: mean of the n-f inputs nearest to a trusted input (itself included)")
class MoNNA(Aggregator):
    """MoNNA, mean of the nearest neighbours of a trusted input (Farhadkhani, Guerraoui, Gupta,
    Hoang, Pinot, Stephan, "Robust Collaborative Learning with Linear Gradient Overhead",
    ICML 2023):

        MoNNA(x_1..x_n) = mean of the n - f inputs nearest to x_t (x_t itself included),

    ``t = trusted`` being an input known to be honest (in peer-to-peer learning, the node's own
    vector). Euclidean distances, computed directly; distance ties go to the lower index.

    Parameters (keyword-only): ``f`` (required) assumed Byzantine inputs, ``n > 2f``;
    ``trusted = 0`` the index of the trusted input in the stack, ``0 <= trusted < n`` (checked
    at call time).

    Example (trusted = 0): ``[0], [1], [-1], [10], [20]`` with f = 2: the 3 nearest to
    ``x_0 = 0`` are 0, 1, -1 -> ``[0]``; with f = 1: 0, 1, -1, 10 -> ``[2.5]``. Ties:
    ``[0], [1], [-1]`` with f = 1: after ``x_0`` itself, 1 and -1 are both at distance 1 and
    the lower index wins -> mean of 0 and 1 = ``[0.5]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it); ``trusted`` keeps pointing at the same input. If the trusted input itself is
    non-finite, the coordinate-wise median of the finite rows takes its place as the anchor (the
    mean of the ``n - f`` rows nearest to it) rather than failing. Distances and the mean run on
    the scaled stack, so the result is finite. When the trusted input is honest and at most
    ``f`` rows are corrupted (1e308 included), the result lies within ``delta`` of it, ``delta``
    its largest distance to an honest row.
    """

    guarded = True
    _anchor: Optional[int] = None  # position of the trusted row among the finite rows, per call

    def __init__(self, *, f: int, trusted: int = 0) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.trusted = _int_param("trusted", trusted, minimum=0)

    def _max_f(self, n: int) -> int:
        return (n - 1) // 2

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)
        if n <= 2 * f:
            raise ValueError(f"monna: needs n > 2f, got n = {n} and f = {f}")

    def _call(self, x: torch.Tensor, known_bad: int) -> torch.Tensor:
        n, _ = _check_stack(x, f"aggregator {self.name!r}")
        t = self.trusted
        if t >= n:
            raise ValueError(f"monna: trusted = {t} is not an input index: needs 0 <= trusted < n = {n}")
        head = x[: t + 1]
        if head.shape[1]:  # the same test as the row filter of the base class
            finite = torch.isfinite(torch.maximum(head.amax(dim=1), head.amin(dim=1).neg()))
        else:
            finite = torch.ones(t + 1, dtype=torch.bool)
        self._anchor = int(finite[:t].sum()) if bool(finite[t]) else None
        try:
            return super()._call(x, known_bad)
        finally:
            self._anchor = None

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k = n - self._fit_f(n)
        a = self._anchor
        if a is not None:
            dist = _distances_to(x, x[a])
            dist[a] = -1.0  # itself first, even among duplicates
        else:
            dist = _distances_to(x, coordinatewise_median(x))
        nearest = torch.sort(dist, stable=True).indices[:k]
        return _mean_of_rows(x, nearest)


# --------------------------------------------------------------------------- Bulyan


def _bulyan_selection(d2: torch.Tensor, f: int, theta: int) -> list[int]:
    """Indices of the ``theta`` inputs picked one at a time by Krum on the remaining set: with
    ``r`` inputs left, ``score_i = sum of the max(r - f - 2, 0) smallest ||x_i - x_j||^2`` over
    the remaining ``j != i``; the lowest score (ties: lowest index) is picked and removed."""
    n = d2.shape[0]
    d2 = d2.clone().fill_diagonal_(math.inf)
    vals, cols = torch.sort(d2, dim=1)  # row i: distances to the others, ascending (itself last)
    alive = torch.ones(n, dtype=torch.bool, device=d2.device)
    picked: list[int] = []
    for step in range(theta):
        k = max(n - step - f - 2, 0)
        alive_cols = alive[cols]  # [n, n]
        use = alive_cols & (alive_cols.cumsum(dim=1) <= k)  # the k nearest that are still there
        scores = torch.where(use, vals, 0.0).sum(dim=1)
        scores[~alive] = math.inf
        i = int(torch.argmin(scores))  # first minimum: lowest index
        picked.append(i)
        alive[i] = False
    return picked


@_register(
    AGGREGATORS, "bulyan",
    "Bulyan: n-2f inputs picked by repeated Krum, then per coordinate the mean of the n-4f closest to their median",
)
class Bulyan(Aggregator):
    """Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning
    in Byzantium", ICML 2018), following the paper's definition with Krum as the selection rule:

    1. selection: ``theta = n - 2f`` inputs, one at a time, each by Krum on the inputs not yet
       selected (scores recomputed on that remaining set: with ``r`` inputs left, the sum of the
       ``r - f - 2`` smallest squared distances to the others, floored at 0 neighbours; lowest
       score wins, ties to the lowest index); ``last_selection`` holds them in order (indices
       of the finite rows);
    2. aggregation: per coordinate, the mean of the ``beta = theta - 2f`` selected values
       closest to the selected values' median (midpoint for even ``theta``; distance ties to the
       lower value, as :class:`MeanAroundMedian`).

    Requires ``n >= 4f + 3`` (so ``beta >= 3``). ``f`` (keyword-only, required) assumed
    Byzantine inputs. Cost: ``theta`` passes over the ``n x n`` distance matrix.

    Example (f = 1, n = 7): ``[0], [1], [2], [3], [4], [5], [100]``: ``theta = 5`` picks
    (Krum with 4, 3, 2, 1, 0 neighbours) 2, 3, then 1 (tie with 4, lower index), 4, 0;
    ``beta = 3`` values closest to their median 2: 1, 2, 3 -> ``[2]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it). Scores, medians and means run on the scaled stack, so the result is finite.
    When at most ``f`` selected rows are corrupted (1e308 included), every coordinate lies
    within ``[2 lo - hi, 2 hi - lo]``, ``[lo, hi]`` the range of the selected honest rows'
    values (as for :class:`MeanAroundMedian`, with ``theta - f >= beta + f`` honest values).
    """

    guarded = True
    certifies = True

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.last_selection: list[int] = []

    def _max_f(self, n: int) -> int:
        return (n - 3) // 4

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)
        if n < 4 * f + 3:
            raise ValueError(f"bulyan: needs n >= 4f + 3, got n = {n} and f = {f} (4f + 3 = {4 * f + 3})")

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        f = self._fit_f(n)
        theta = n - 2 * f
        beta = theta - 2 * f
        self.last_selection = _bulyan_selection(self._gram_distances(x, f), f, theta)
        rows = torch.tensor(self.last_selection, dtype=torch.long, device=x.device)
        cdt = _compute_dtype(x.dtype)
        out = torch.empty(d, dtype=cdt, device=x.device)
        for sl, mean in _chunk_results(
            lambda sl: _mean_closest_to_median(x[:, sl].index_select(0, rows).to(cdt), beta), x
        ):
            out[sl] = mean
        return out


# --------------------------------------------------------------------------- spectral filter


@_register(
    AGGREGATORS, "caf",
    "covariance-bound agnostic filter: weighted mean, weights cut along the top covariance direction",
)
class CovarianceBoundAgnosticFilter(Aggregator):
    """Covariance-bound agnostic filter, CAF (Allouah, Guerraoui, Stephan, "Towards Trustworthy
    Federated Learning with Untrusted Participants", ICML 2025; a soft spectral filter after
    Diakonikolas et al. 2016). With weights ``c_i`` starting at 1, repeat (at least once, then
    while ``sum_i c_i > n - 2f``):

        mu_c    = sum_i c_i x_i / sum_i c_i,
        Sigma_c = sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum_i c_i,
        (lambda, v) = top eigenpair of Sigma_c,
        tau_i   = ((x_i - mu_c)^T v)^2,
        c_i    <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j),

    and return the ``mu_c`` of the smallest ``lambda`` met (first one on ties). Each step sets
    at least one weight to 0 (the farthest along ``v``), so there are at most ``n`` steps; it
    stops early when ``lambda = 0`` (all weighted inputs equal). Requires ``n > 2f``; ``f``
    (keyword-only, required) assumed Byzantine inputs.

    Computed exactly from the ``n x n`` distance matrix: ``lambda`` and ``v`` come from the
    eigendecomposition of ``W^1/2 K W^1/2 / sum c``, ``K`` the Gram matrix of the ``x_i - mu_c``
    (no ``d x d`` matrix). Differences from ByzFL's ``CAF``: the exact top eigenpair instead of
    one power-iteration step from a random vector (deterministic), and ``max tau`` over inputs
    that still have weight (as in the filtering literature; ByzFL takes it over all inputs,
    which can stall the loop once a far input has weight 0). When the top eigenvalue is
    repeated, the eigenvector the solver returns (deterministic for a given input) is used.

    Example (f = 1): ``[0], [1], [2], [10]``: step 1: ``mu = 3.25``, ``lambda = 15.6875``;
    ``tau = 10.5625, 5.0625, 1.5625, 45.5625`` -> ``c = 560, 648, 704, 0`` (/729), sum 2.62 > 2;
    step 2: ``mu = (648 + 2 * 704) / 1912 = 257/239 = 1.0753``, ``lambda = 0.4707``; then the
    weight of 0 drops to 0 and the sum below 2 -> ``[257/239]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it). Distances, eigenpairs and the weighted mean run on the scaled stack, so the
    result (a weighted mean of the rows) is finite. Far rows (1e308 included) dominate the top
    direction of the covariance and lose their weight in the first steps; the returned mean is
    the one of smallest spread met, so with at most ``f`` such rows it is a weighted mean of
    (mostly) honest rows.
    """

    guarded = True
    certifies = True

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.last_steps = 0

    def _max_f(self, n: int) -> int:
        return (n - 1) // 2

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)
        if n <= 2 * f:
            raise ValueError(f"caf: needs n > 2f, got n = {n} and f = {f}")

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        f = self._fit_f(n)
        stop = n - 2 * f
        d2 = self._gram_distances(x, f)
        c = torch.ones(n, dtype=torch.float64, device=x.device)
        best_c, best_total, best_lam, steps = c, float(n), math.inf, 0
        total = float(n)
        while steps == 0 or total > stop:
            steps += 1
            w = c / total
            a = d2 @ w  # K = -1/2 (D - a 1^T - 1 a^T + w^T D w): Gram matrix of x_i - mu_c
            gram = (d2 - a[:, None] - a[None, :] + (w @ a)).mul_(-0.5)
            root = c.sqrt()
            evals, evecs = torch.linalg.eigh(root[:, None] * gram * root[None, :] / total)
            lam = float(evals[-1])
            if lam < best_lam:
                best_lam, best_c, best_total = lam, c, total
            if lam <= 0.0:
                break  # every weighted input at mu_c: nothing to filter
            proj = gram @ (root * evecs[:, -1])  # proportional to (x_i - mu_c)^T v
            top = float(proj[c > 0].abs().max())
            if not top > 0.0:
                break
            c = (c * (1.0 - (proj / top).square_())).clamp_min_(0.0)  # tau_i / max tau, no overflow
            total = float(c.sum())
        self.last_steps = steps
        return _weighted_sum(best_c, x) / best_total  # sum_i c_i x_i / sum_i c_i


# --------------------------------------------------------------------------- pre-aggregation


@_register(PRE_AGGREGATORS, "bucketing", "bucketing: means of buckets of s inputs after a seeded random shuffle")
class Bucketing(PreAggregator):
    """Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
    via Bucketing", ICLR 2022): shuffle the ``n`` inputs with a random permutation ``pi`` and
    return the means of consecutive buckets of ``s``:

        y_b = mean(x_pi(b s + 1), ..., x_pi(min((b + 1) s, n))),   b = 0 .. ceil(n / s) - 1,

    the last bucket holding the ``n mod s`` leftovers when ``s`` does not divide ``n`` (as in
    ByzFL). The output has ``ceil(n / s)`` rows (:meth:`output_rows`), not ``n``: the next
    aggregator sees fewer inputs, of which at most ``f`` are spoiled by ``f`` Byzantine ones.

    Parameters (keyword-only): ``s = 2`` >= 1 bucket size (1: a shuffle only); ``seed = 0``
    >= 0. The permutations come from a ``torch.Generator`` seeded once in ``__init__`` and kept
    on the instance: the ``k``-th call of an instance draws the same permutation for the same
    seed (and number of rows), whatever else runs; a fresh instance starts again.

    Example (s = 2): ``[1], [2], [4], [8], [16]`` shuffled by the permutation 4, 0, 1, 3, 2 (the
    first one seed 0 draws for n = 5 with this torch) -> buckets ``{16, 1}, {2, 8}, {4}`` ->
    ``[8.5], [5], [4]``.

    Hostile inputs: non-finite rows are dropped before the shuffle and do not come back (the
    output has ``ceil((n - dropped) / s)`` rows). Means run on the scaled stack, so every output
    row is finite. Not an aggregator on its own: a far row spoils its bucket.
    """

    guarded = True

    def __init__(self, *, s: int = 2, seed: int = 0) -> None:
        self.s = _int_param("s", s, minimum=1)
        self.seed = _int_param("seed", seed, minimum=0)
        self._generator = torch.Generator().manual_seed(self.seed)

    def output_rows(self, n: int) -> int:
        """Rows of the output for ``n`` (finite) input rows: ``ceil(n / s)``."""
        return -(-n // self.s)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        s = self.s
        perm = torch.randperm(n, generator=self._generator).to(x.device)
        full, rows = n // s, self.output_rows(n)
        cdt = _compute_dtype(x.dtype)
        out = torch.empty((rows, d), dtype=cdt, device=x.device)
        for sl in _column_slices(d):
            c = x[:, sl].index_select(0, perm).to(cdt)
            if full:
                out[:full, sl] = c[: full * s].reshape(full, s, -1).mean(dim=1)
            if rows > full:
                out[full, sl] = c[full * s:].mean(dim=0)
        return out


@_register(
    PRE_AGGREGATORS, "arc",
    "adaptive robust clipping: the floor(2f(n-f)/n) largest-norm inputs clipped to the next largest norm",
)
class AdaptiveRobustClipping(HonestMinority, PreAggregator):
    """Adaptive robust clipping, ARC (Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan,
    "Boosting Robustness by Clipping Gradients in Distributed Learning", arXiv:2405.14432,
    2024):

        k = floor(2 (f / n) (n - f)),   C = the (k + 1)-th largest ||x_i||,
        x_i <- x_i * min(1, C / ||x_i||),

    i.e. the ``k`` inputs of largest norm are scaled down to norm ``C`` and the others are left
    unchanged (ties in norm are harmless: an input of norm ``C`` keeps its scale 1). ``k`` is
    computed in integers, ``(2 f (n - f)) // n`` (``k = 0`` for ``f = 0``: nothing clipped).
    ``f`` (keyword-only, required) assumed Byzantine inputs; needs ``n > f``.

    Example (f = 1): ``[3, 4], [0, 1], [6, 8], [0, 2], [0, 0]``: ``k = floor(8 / 5) = 1``,
    ``C = 5`` -> ``[6, 8]`` becomes ``[3, 4]``. With f = 2: ``k = floor(12 / 5) = 2``, ``C = 2``
    -> ``[3, 4]`` and ``[6, 8]`` both become ``[1.2, 1.6]``.

    Hostile inputs: non-finite rows are dropped and do not come back (one output row per finite
    input; ``f`` lowered only if the rest no longer allows it). Norms and scales are computed on
    the scaled stack, so every output row is finite. When at most ``f`` rows are corrupted and
    ``n >= 2f`` (then ``k >= f``), ``C`` is at most the largest honest norm, so every output row
    is no longer than the longest honest input (1e308 included); directions are unchanged.
    """

    guarded = True


    def clipped_count(self, n: int) -> int:
        """``k = floor(2 f (n - f) / n)``, the number of inputs clipped among ``n``."""
        f = min(self.f, n)
        return (2 * f * (n - f)) // n

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        f = self._fit_f(n)
        k = (2 * f * (n - f)) // n
        if k == 0:
            return x.clone()
        cdt = _compute_dtype(x.dtype)
        norms = _distances_to(x, torch.zeros(d, dtype=x.dtype, device=x.device))
        threshold = float(torch.sort(norms, descending=True).values[k])
        scale = _clip_scales(norms, threshold).to(cdt)[:, None]
        out = torch.empty(x.shape, dtype=cdt, device=x.device)
        for sl in _column_slices(d):
            out[:, sl] = x[:, sl].to(cdt) * scale
        return out
