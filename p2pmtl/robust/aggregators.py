"""Robust aggregators: ``[n, d]`` stack of client (or neighbour) vectors -> one ``[d]`` vector.

Every aggregator is a small class registered in :data:`AGGREGATORS`; its hyper-parameters are
keyword-only and validated in ``__init__``, and ``agg(x)`` maps a floating ``[n, d]`` tensor to
a ``[d]`` tensor of the same dtype. Conditions that involve the number of inputs ``n`` (e.g.
Krum's ``n >= 2f + 3``) are checked at call time. The ``f`` an aggregator *assumes* is always a
constructor parameter: it is never inferred from, and need not equal, the actual number of
Byzantine inputs.

Pre-aggregation steps (``[n, d] -> [n, d]``, registry :data:`PRE_AGGREGATORS`) run before an
aggregator inside a :class:`Pipeline`; :func:`make_aggregator` builds either from names and
flat keyword parameters (as found in a config file).

Hostile inputs. Every registered aggregator and pre-aggregation step (called directly, or in a
:class:`Pipeline`) accepts stacks in which some rows are NaN, +/-inf or finite but huge:

- non-finite rows (any NaN or inf entry) are treated as absent: they are dropped before the
  call-time checks and the computation, and ``last_dropped`` on the instance (and on a
  :class:`Pipeline`) counts them. A pre-aggregation step returns only the finite rows (dropped
  rows do not come back, so its output may have fewer rows than its input). If no finite row
  remains, ``ValueError("... all N inputs are non-finite ...")`` is raised. When rows were
  dropped, an assumed ``f`` that no longer fits the remaining count (e.g. Krum's
  ``n >= 2f + 3``) is lowered just enough to fit, never below ``f`` minus the number of dropped
  rows (dropped rows are counted as Byzantine); with no dropped row ``f`` is used as given and
  the checks raise as before. In a :class:`Pipeline`, rows dropped by an earlier step count too;
- finite rows with entries so large that squares, sums or differences could overflow (above
  about ``sqrt(max / (32 n d))`` of the compute dtype, e.g. 1e308 in float64 or 3e38 in
  float32) switch the call to a guarded path: float32 (and half) stacks are computed in
  float64, float64 stacks are divided by a power of two first (exact) and the result is
  multiplied back and clamped to the dtype's finite range. The outputs are then finite; the
  "Hostile inputs" paragraph of each component says what more it guarantees. Ordinary inputs
  (all finite, below that bound) take the unguarded path and give bit-for-bit the same results
  as before; the fast-path cost is one ``aminmax`` pass over ``x``, or none for the components
  that prove the stack ordinary during their own first pass (``certifies``: the Gram-distance
  rules, the coordinate median, the trimmed mean, centered clipping, the geometric median,
  NNM), which start again on the usual path when they cannot.

The public kernels (:func:`pairwise_sq_distances`, :func:`distances_to`, :func:`weiszfeld`)
scale before squaring as well; a distance that involves a non-finite input counts as +inf, and a
float64 distance beyond the float64 range is +inf (only possible for inputs near 1e308).

Implementation notes (memory and speed for n ~ 1000, d ~ 1e6):

- pairwise distances come from one Gram matrix ``G = Xc Xc^T`` accumulated in float64 over
  column chunks, ``D_ij = G_ii + G_jj - 2 G_ij`` clamped at 0. Each chunk is first centred on
  its coordinate-wise (lower) median: distances are unchanged, but the cancellation error of
  the Gram formula then scales with the spread of the honest majority rather than with the
  norms of the vectors (or of far outliers). The aggregators, which know ``f``, take that
  median over the first ``2f + 1`` rows only (at least 9): a strict honest majority, so the
  centre still lies between honest values in every coordinate, for a smaller selection;
- the geometric median iterates in the span of the rows where a cost model says it pays
  (:func:`_gram_weiszfeld`): one centred Gram pass, ``O(n^2)`` Weiszfeld steps, one weighted
  sum, the same iterates as the direct loop up to rounding; nearest-neighbour mixing followed
  by a row-combination rule never forms the mixed rows (:class:`Pipeline`);
- coordinate-wise rules (median, trimmed mean) and the distance-to-a-point passes of the
  iterative rules work on column chunks of :data:`CHUNK_COLUMNS` columns, so temporaries stay
  at ``n x CHUNK_COLUMNS`` instead of ``n x d``;
- on the CPU they use the threads torch is set to: the sorting network of the order statistics
  splits its columns over numba's threads, and the sort-based rules compute whole chunks on a
  pool of Python threads (:func:`_chunk_results`), each column as on one thread (same bits).
"""
from __future__ import annotations

import inspect
import math
import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from typing import Any, Callable, ClassVar, Iterator, NamedTuple, Optional, Sequence, TypeVar

import numpy as np
import torch

from ..registry import Registry

AGGREGATORS: Registry[type["Aggregator"]] = Registry("aggregator")
PRE_AGGREGATORS: Registry[type["PreAggregator"]] = Registry("pre-aggregation step")

CHUNK_COLUMNS = 2**16
"""Columns processed at once by the coordinate-wise and distance passes."""

_TINY = torch.finfo(torch.float64).tiny


# --------------------------------------------------------------------------- validation helpers


def _int_param(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} = {value!r}: must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name} = {value}: must be an integer >= {minimum}")
    return int(value)


def _positive_param(name: str, value: Any, *, allow_inf: bool = False, allow_zero: bool = False) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    what = f"a real number {bound}" + (" (inf allowed)" if allow_inf else " and finite")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} = {value!r}: must be {what}")
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} = {value!r}: must be {what}")
    return v


def _check_stack(x: torch.Tensor, who: str) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{who}: expected a [n, d] stack of vectors, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a floating tensor, got dtype {x.dtype}")
    n, d = x.shape
    if n < 1:
        raise ValueError(f"{who}: needs at least one input vector, got n = 0")
    return n, d


def _column_slices(d: int, chunk: Optional[int] = None) -> Iterator[slice]:
    step = CHUNK_COLUMNS if chunk is None else chunk
    for start in range(0, d, step):
        yield slice(start, min(start + step, d))


_T = TypeVar("_T")
_POOLS: dict[int, ThreadPoolExecutor] = {}
"""Thread pools of :func:`_chunk_results`, by size; a forked child starts without them (their
threads do not exist there)."""
os.register_at_fork(after_in_child=_POOLS.clear)


def _chunk_results(compute: Callable[[slice], _T], x: torch.Tensor) -> Iterator[tuple[slice, _T]]:
    """``(sl, compute(sl))`` for the column chunks of ``x`` (:func:`_column_slices`), in order.

    On the CPU, with torch set to several threads (``torch.get_num_threads()``, the thread count
    of the whole run) and at least two chunks, the chunks are computed on that many Python
    threads at once: numpy's sorts and copies release the GIL, so the sort-based rules (trimmed
    mean, MeaMed, Bulyan, the median above 128 rows) scale with the cores. Each chunk is
    computed alone, by the same calls, so the results are the serial ones bit for bit; an
    exception is raised at its chunk's turn, as in a plain loop. ``compute`` must not start
    numba's threads (the sorting network splits its own columns over them)."""
    slices = list(_column_slices(x.shape[1]))
    threads = torch.get_num_threads()
    if threads < 2 or len(slices) < 2 or x.device.type != "cpu":
        for sl in slices:
            yield sl, compute(sl)
        return
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="p2pmtl-chunks")
    yield from zip(slices, pool.map(compute, slices))


# --------------------------------------------------------------------------- hostile-input guards


def _overflow_limit(dtype: torch.dtype, n: int, d: int) -> float:
    """Largest ``max |x|`` for which the kernels cannot overflow in ``dtype`` on an ``[n, d]``
    stack: squared distances stay below ``16 d max|x|^2`` and Krum scores below ``n`` times that."""
    return math.sqrt(torch.finfo(dtype).max / (32.0 * max(n, 1) * max(d, 1)))


def _finite_abs_max(t: torch.Tensor) -> float:
    """``max |t|`` over the finite entries (0 when there are none)."""
    if t.numel() == 0:
        return 0.0
    lo, hi = t.aminmax()  # NaN/inf propagate; one pass, faster than a norm or abs()
    m = max(float(hi), -float(lo))
    if math.isfinite(m):
        return m
    fin = t[torch.isfinite(t)]
    return float(fin.abs().max()) if fin.numel() else 0.0


def _finite_rows(x: torch.Tensor, who: str) -> tuple[torch.Tensor, int, float]:
    """``(rows of x without a NaN/inf entry, how many were dropped, max |entry| of those kept)``.

    Fast path: one ``aminmax`` pass over ``x`` (NaN/inf propagate into it; no temporary, far
    cheaper than ``isfinite(x).all(1)``); when it is finite, ``x`` itself is returned (no copy).
    Otherwise rows are sorted out by their own max and min. Raises ``ValueError`` when no finite
    row remains."""
    n, d = x.shape
    if d == 0:
        return x, 0, 0.0
    lo, hi = x.aminmax()
    amax = max(float(hi), -float(lo))
    if math.isfinite(amax):
        return x, 0, amax
    rowmax = torch.maximum(x.amax(dim=1), x.amin(dim=1).neg_())
    keep = torch.isfinite(rowmax)
    kept = int(keep.sum())
    if kept == 0:
        raise ValueError(f"{who}: all {n} inputs are non-finite (NaN or inf); nothing to aggregate")
    return x[keep], n - kept, float(rowmax[keep].max())


def _safe_view(x: torch.Tensor, amax: float) -> tuple[torch.Tensor, float]:
    """``(y, s)`` with ``x = s * y`` (``s`` a power of two) such that the kernels cannot overflow
    on ``y``. Ordinary inputs: ``(x, 1.0)``, the very same tensor. Otherwise ``y`` is float64:
    float32/half stacks are only converted (their range is far inside float64's), float64
    stacks are also divided by ``s`` (exact, bar values that become subnormal)."""
    n, d = x.shape
    if amax <= _overflow_limit(_compute_dtype(x.dtype), n, d):
        return x, 1.0
    y = x.to(torch.float64)
    limit = _overflow_limit(torch.float64, n, d)
    if amax <= limit:
        return y, 1.0
    s = 2.0 ** math.ceil(math.log2(amax / limit))
    return y * (1.0 / s), s


def _unscale(out: torch.Tensor, s: float, dtype: torch.dtype) -> torch.Tensor:
    """``s * out`` cast to ``dtype``, clamped to its finite range (the true results lie inside the
    inputs' range; the clamp absorbs a last-bit overshoot at the very top of the range)."""
    out = out.to(torch.float64)
    if s != 1.0:
        out = out * s
    big = torch.finfo(dtype).max
    return out.clamp_(-big, big).to(dtype)


# --------------------------------------------------------------------------- shared kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 computed as is; half precisions are computed in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def coordinatewise_median(x: torch.Tensor, certify: bool = False) -> torch.Tensor:
    """Per-coordinate median of ``[n, d]``; for even ``n`` the midpoint of the two middle
    values (``torch.median`` alone returns the lower one). Column-chunked.

    ``certify``: raise :class:`_Uncertified` unless ``x`` is proven finite and below the
    overflow bound (a certified call, :attr:`_Component.certifies`), from the ``max |x|`` the
    selection takes on the way (an ``aminmax`` of the chunks it does not select itself)."""
    n, d = _check_stack(x, "coordinatewise_median")
    out = torch.empty(d, dtype=x.dtype, device=x.device)

    def median(sl: slice) -> torch.Tensor:
        c = x[:, sl]
        mid, top = _middle_values(x, sl) if _selects_on_cpu(c) else (None, None)
        if certify:
            _check_certified(_abs_max(c) if top is None else top, x)
        if mid is not None:  # one selection per column for both middle values
            return mid[0] if n % 2 else 0.5 * mid[0] + 0.5 * mid[1]
        if n % 2:
            return c.median(dim=0).values
        if n <= _ONE_SELECTION_MAX_N and not bool(((c == 0) | c.isnan()).any()):
            # one selection gives both middle values (faster up to a few hundred rows). Among
            # equal values it may pick another element than two medians would, which shows only
            # in the sign of a zero or a NaN's payload: chunks holding either take two medians
            mid = c.topk(n // 2 + 1, dim=0, largest=False).values[-2:]
            return 0.5 * mid[0] + 0.5 * mid[1]
        # the upper middle value is minus the lower median of -c
        lower = c.median(dim=0).values
        upper = c.neg().median(dim=0).values.neg_()
        return 0.5 * lower + 0.5 * upper

    # the sorting network splits each chunk's columns over the threads itself; numpy's sort
    # (above its rows) takes whole chunks on several threads
    chunks = ((sl, median(sl)) for sl in _column_slices(d)) if _network_rows(n) else _chunk_results(median, x)
    for sl, values in chunks:
        out[sl] = values
    return out


_ONE_SELECTION_MAX_N = 256


def _middle_values(x: torch.Tensor, sl: slice) -> tuple[Optional[torch.Tensor], float]:
    """``([2, k], max |x|)``: the lower and upper middle values of every column ``sl`` of a CPU
    float32/float64 ``[n, d]`` stack (equal for odd ``n``), and the largest magnitude in those
    columns (NaN when they hold a NaN). The values are None when the columns hold a NaN (the
    caller's torch medians then give ``torch.median``'s exact answer). A zero middle value
    gets the sign ``torch.median`` gives it (:func:`_torch_signs_of_zero`).

    Up to :data:`p2pmtl.kernels.column_ranks.MAX_ROWS` rows (with numba), a sorting network
    across the columns (:func:`~p2pmtl.kernels.column_ranks.column_ranks`); above, numpy's
    vectorized sort of each column (:func:`_sorted_columns`, NaN last). Both beat numpy's
    introselect with its transposed copy, float32, one thread, in ns per column: 16 / 60 / 119
    at 21 rows, 169 / 228 / 392 at 100, 3,010 (sort) / 4,053 at 1,000."""
    n = x.shape[0]
    k = n // 2
    if _network_rows(n):
        mid, top = _network_ranks(x, sl, [k] if n % 2 else [k - 1, k])
        if mid is None:
            return None, top
        lower, upper = mid[0], mid[-1]
    else:
        s = _sorted_columns(x[:, sl])
        top = _sorted_abs_max(s)
        s = s.numpy()
        if np.isnan(s[:, -1]).any():
            return None, top
        upper = s[:, k]
        lower = upper if n % 2 else s[:, k - 1]
    mid = torch.from_numpy(np.stack([lower, upper]))
    if not (upper.all() and lower.all()):
        _torch_signs_of_zero(x, sl, mid)
    return mid, top


def _torch_signs_of_zero(x: torch.Tensor, sl: slice, mid: torch.Tensor) -> None:
    """Give the zero middle values in ``mid`` (``[2, k]``, columns ``sl`` of ``x``) the sign
    ``torch.median`` gives them, in place.

    A selection returns the exact order statistic, so where it is zero torch's is a zero too,
    and only the sign can differ, and only in a column holding both -0.0 and +0.0 (which
    equal element is picked). Columns whose middle values are zero and that hold a -0.0 get
    torch's medians (lower: ``median``; upper: minus the median of the negated column), the
    other zeros are +0.0 in both. Momentum or gradient stacks with dead units have exact zeros
    in many coordinates: one such column used to send its whole chunk to torch's medians
    (5x slower at 26 rows)."""
    zero = torch.nonzero((mid[0] == 0) | (mid[1] == 0)).flatten()
    cols = x[:, sl].index_select(1, zero)
    signed = ((cols == 0) & cols.signbit()).any(dim=0)
    if bool(signed.any()):
        at = zero[signed]
        c = cols[:, signed]
        lower = c.median(dim=0).values
        mid[0, at] = lower
        mid[1, at] = lower if x.shape[0] % 2 else c.neg().median(dim=0).values.neg_()


def _network_rows(n: int) -> bool:
    """Whether the compiled sorting network takes the order statistics of ``n`` rows (numba
    installed, ``n`` up to its :data:`~p2pmtl.kernels.column_ranks.MAX_ROWS`)."""
    from ..kernels import numba_available

    return n <= _NETWORK_MAX_ROWS and numba_available()


_NETWORK_MAX_ROWS = 128  # p2pmtl.kernels.column_ranks.MAX_ROWS, without importing numba here


def _network_ranks(x: torch.Tensor, sl: slice, ranks: list[int]) -> tuple[Optional[np.ndarray], float]:
    """``([len(ranks), k], max |x|)``: the ``ranks``-th smallest values of columns ``sl`` of a
    CPU float32/float64 stack by the sorting network, read in place when the stack is
    contiguous (a chunk copy otherwise), and the largest magnitude met; (None, NaN) when the
    columns hold a NaN."""
    from ..kernels.column_ranks import column_ranks_and_max  # numba: imported on first use

    if x.is_contiguous():
        return column_ranks_and_max(x.detach().numpy(), ranks, sl.start, sl.stop)
    return column_ranks_and_max(x[:, sl].detach().contiguous().numpy(), ranks)


def _selects_on_cpu(c: torch.Tensor) -> bool:
    """True when :func:`_middle_values`, :func:`_lower_median` and :func:`_sorted_columns`
    select on ``c`` with the sorting network or numpy's sort (CPU float32/64)."""
    return c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64)


def _sorted_columns(c: torch.Tensor) -> torch.Tensor:
    """``[k, n]`` contiguous: the columns of a ``[n, k]`` chunk, each sorted ascending. On CPU
    float32/float64 by numpy's sort (vectorized: 10x ``torch.sort`` at 100 rows, float32, one
    thread, transposing included), elsewhere by ``torch.sort``: the same rows (NaN last in both;
    among equal values only a zero's sign can tell them apart, which no sum sees)."""
    if not _selects_on_cpu(c):
        return c.T.contiguous().sort(dim=1).values
    s = c.detach().numpy().T.copy(order="C")  # a copy even where the transpose is contiguous
    s.sort(axis=1)
    return torch.from_numpy(s)


def _sorted_abs_max(s: torch.Tensor) -> float:
    """``max |value|`` of a ``[k, n]`` tensor whose rows are sorted (NaN last): from its first
    and last columns (NaN when a row holds a NaN)."""
    if s.numel() == 0:
        return 0.0
    return _max_or_nan(_abs_max(s[:, :1]), _abs_max(s[:, -1:]))


def _max_or_nan(a: float, b: float) -> float:
    """``max(a, b)``, NaN when either is (Python's ``max`` keeps its first argument then)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _abs_max(t: torch.Tensor) -> float:
    """``max |t|`` in one ``aminmax`` pass: NaN when ``t`` holds a NaN, inf for an infinity."""
    if t.numel() == 0:
        return 0.0
    lo, hi = t.aminmax()
    lo, hi = float(lo), float(hi)
    return math.nan if math.isnan(lo) or math.isnan(hi) else max(hi, -lo)


def _check_certified(bound: float, x: torch.Tensor) -> None:
    """Raise :class:`_Uncertified` unless ``bound`` (a known upper bound of ``max |x|``, NaN
    when unknown) lies within the overflow limit of :func:`_safe_view` for ``x``: then the
    usual path would have run the same computation on ``x`` itself."""
    n, d = x.shape
    if not bound <= _overflow_limit(_compute_dtype(x.dtype), n, d):  # also when NaN
        raise _Uncertified


def _lower_median(x: torch.Tensor, sl: Optional[slice] = None) -> torch.Tensor:
    """Per-column lower median (the value ``torch.median`` returns) of columns ``sl`` (all by
    default) of a ``[n, d]`` stack without NaN: the sorting network up to its row limit and
    numpy's sort above it on CPU float32/float64 (equal values may come from another row than
    ``torch.median`` picks: only a zero's sign can differ), ``torch.median`` elsewhere."""
    sl = slice(0, x.shape[1]) if sl is None else sl
    if not _selects_on_cpu(x):
        return x[:, sl].median(dim=0).values
    k = (x.shape[0] - 1) // 2
    if _network_rows(x.shape[0]):
        mid, _ = _network_ranks(x, sl, [k])
        if mid is not None:
            return torch.from_numpy(mid[0])
    return _sorted_columns(x[:, sl])[:, k].contiguous()


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` float64 squared Euclidean distances by the Gram identity
    ``||a - b||^2 = <a, a> + <b, b> - 2 <a, b>``.

    Column chunks are centred on their lower coordinate median (NaN ignored; an input value,
    so integer data stay exact), multiplied in the input precision (float32 for half types)
    and summed in float64; the Gram matrix is symmetrised, negatives from rounding are clamped to 0 and
    the diagonal is exactly 0. Distances involving a non-finite input are +inf.

    Hostile inputs: huge finite entries are scaled before squaring (float32 stacks are computed
    in float64), so the result is finite for float32/half inputs; for float64 inputs a squared
    distance beyond the float64 range (inputs near 1e308) is +inf."""
    n, d = _check_stack(x, "pairwise_sq_distances")
    y, s = _safe_view(x, _finite_abs_max(x))
    dist = _gram_sq_distances(y)
    return dist if s == 1.0 else dist.mul_(s).mul_(s)


def _gram_sq_distances(x: torch.Tensor, finite: Optional[bool] = None, f: Optional[int] = None,
                       certify: bool = False) -> torch.Tensor:
    """The kernel of :func:`pairwise_sq_distances`, without the overflow guard. ``finite``:
    whether every entry is known finite (the aggregators pass True: they dropped non-finite
    rows already); None checks it once (one ``aminmax`` pass, no temporary).

    ``certify``: the stack was not checked (a certified call, :attr:`_Component.certifies`):
    raise :class:`_Uncertified` unless the Gram matrix proves every entry finite and below the
    overflow bound of :func:`_safe_view`, that is unless the usual path would have run this very
    computation. Each entry obeys ``|x_ij| <= |x_ij - c_j| + |c_j| <= sqrt(G_ii) + max |c|``
    for the centre ``c``; a NaN or inf anywhere makes ``G_ii`` or the centre non-finite. The
    bound is taken with a factor 2 on ``sqrt(G_ii)`` for the Gram product's rounding.

    ``f``: at most ``f`` rows are Byzantine (the aggregators pass theirs). Chunks are then
    centred on the lower median of the first ``2f + 1`` rows only (:func:`_centre_rows`): with
    at most ``f`` of them Byzantine, each coordinate of that centre lies between two honest
    values, which is all the centring is for (the cancellation error then scales with the honest
    rows' spread), at a fraction of the selection's cost (21 rows instead of 100 at f = 10)."""
    n, d = x.shape
    if finite is None:
        lo, hi = x.aminmax() if d else (x.new_zeros(()), x.new_zeros(()))
        finite = math.isfinite(float(lo)) and math.isfinite(float(hi))
    gram = _proven_gram(x, x[:_centre_rows(n, f)], finite=finite, certify_for=x if certify else None)
    return _sq_distances_from_gram(0.5 * (gram + gram.T))


def _proven_gram(x: torch.Tensor, head: torch.Tensor, *, finite: bool, certify_for: Optional[torch.Tensor],
                 with_centre: bool = False) -> torch.Tensor:
    """:func:`_centred_gram`'s matrix; in a certified call (``certify_for``: the whole stack of
    the attempt) it also proves that stack finite and below the overflow bound, or raises
    :class:`_Uncertified`: each entry obeys ``|x_ij| <= |x_ij - c_j| + |c_j| <= sqrt(G_ii) +
    max |c|`` (a NaN or inf anywhere makes ``G_ii`` or the centre non-finite), taken with a
    factor 2 on ``sqrt(G_ii)`` for the product's rounding."""
    n, d = x.shape
    full, centre_max = _centred_gram(x, head, finite=finite, with_centre=with_centre)
    if certify_for is not None:
        _check_certified(2.0 * math.sqrt(float(full.diagonal()[:n].max())) + centre_max if n and d else 0.0,
                         certify_for)
    return full


def _sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """``D_ij = G_ii + G_jj - 2 G_ij`` of a symmetric float64 Gram matrix, clamped at 0, NaN
    (a non-finite input) as +inf, the diagonal exactly 0."""
    sq = gram.diagonal().clone()
    dist = (sq[:, None] + sq[None, :]).sub_(gram, alpha=2.0).clamp_min_(0.0)
    dist.nan_to_num_(nan=math.inf)  # a non-finite input is infinitely far from everything
    dist.fill_diagonal_(0.0)
    return dist


class _RowGram(NamedTuple):
    """What the row-combination rules need of a stack ``[n, d]``: the symmetric float64 Gram
    matrix ``G = Y Y^T`` of its rows centred on a point ``c`` (``y_i = x_i - c``), and, when
    built with the centre (:func:`_centred_gram`'s ``with_centre``), ``Y c`` and ``||c||^2``.
    A combination ``z = sum_i a_i x_i`` with ``sum_i a_i = 1`` then has
    ``||x_i - z||^2 = G_ii - 2 (G a)_i + a^T G a`` and ``||z||^2 = ||c||^2 + 2 a^T Y c + a^T G a``."""

    gram: torch.Tensor
    yc: Optional[torch.Tensor] = None
    cc: float = 0.0

    @staticmethod
    def of(full: torch.Tensor, with_centre: bool) -> "_RowGram":
        """From :func:`_centred_gram`'s matrix (symmetrised here)."""
        n = full.shape[0] - 1 if with_centre else full.shape[0]
        g = full[:n, :n]
        g = 0.5 * (g + g.T)
        return _RowGram(g, full[:n, n].clone(), float(full[n, n])) if with_centre else _RowGram(g)

    def mixed(self, mix: torch.Tensor) -> "_RowGram":
        """The same for the rows ``mix @ x`` (each row of ``mix`` summing to 1, so that they keep
        the centre: ``mix @ x - c = mix @ Y``)."""
        m = mix.to(torch.float64)
        g = m @ self.gram @ m.T
        return _RowGram(0.5 * (g + g.T), None if self.yc is None else m @ self.yc, self.cc)


def _centred_gram(x: torch.Tensor, head: torch.Tensor, *, finite: bool,
                  with_centre: bool = False) -> tuple[torch.Tensor, float]:
    """``(G, max |c|)``: the float64 Gram matrix ``G = Y Y^T`` of the rows ``y_i = x_i - c``,
    ``c`` the per-column lower median of ``head`` (rows of ``x``: a view, NaN ignored when
    ``finite`` is False), accumulated over column chunks, each multiplied in the input precision
    (float32 for half types); ``max |c|`` is NaN when a centre is. ``with_centre``: ``G`` is
    ``[n + 1, n + 1]``, the centre ``c`` itself its last row, so that ``G[:n, n] = Y c`` and
    ``G[n, n] = ||c||^2`` come out of the same products (one more row in each)."""
    n, d = x.shape
    cdt = _compute_dtype(x.dtype)
    size = n + 1 if with_centre else n
    gram = torch.zeros((size, size), dtype=torch.float64, device=x.device)
    k = min(d, CHUNK_COLUMNS)
    buf = torch.empty((size, k + _GRAM_ROW_PAD), dtype=cdt, device=x.device)[:, :k]  # centred chunk, reused
    centre_max = 0.0
    for sl in _column_slices(d):
        c = x[:, sl]
        if finite:  # the usual case: one selection per column
            center = _lower_median(head, sl) if head.dtype == cdt else _lower_median(head[:, sl].to(cdt))
        else:
            center = head[:, sl].to(cdt).nanmedian(dim=0).values.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        centre_max = _max_or_nan(centre_max, float(center.abs().max()))
        chunk = buf[:, : sl.stop - sl.start]
        centred = torch.sub(c, center, out=chunk[:n])
        if with_centre:
            chunk[n] = center
            centred = chunk
        gram += (centred @ centred.T).to(torch.float64)
    return gram, centre_max


def _centre_rows(n: int, f: Optional[int]) -> int:
    """How many leading rows the Gram chunks are centred on: all ``n`` without ``f``, else
    ``2f + 1`` (a strict honest majority when at most ``f`` rows are Byzantine), but at least
    :data:`_CENTRE_MIN_ROWS` (a median of a handful of rows would be a poor centre for the
    honest ones when ``f`` is 0 or 1)."""
    if f is None:
        return n
    return min(n, max(2 * f + 1, _CENTRE_MIN_ROWS))


_CENTRE_MIN_ROWS = 9

_GRAM_ROW_PAD = 128
"""Spare columns at the end of each row of :func:`_centred_gram`'s chunk buffer, so that its
row stride is not a power of two: with rows exactly 2**16 floats apart the product's packing
meets cache-set conflicts (measured, 100 x 65,536 float32, one thread: 14.6 ms a chunk against
11.7 ms with 128 spare columns; the whole 100 x 1,000,000 Gram matrix 0.29-0.30 s -> 0.255 s,
the same bits)."""


def distances_to(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[n]`` float64 Euclidean distances ``||x_i - z||``, computed directly (no Gram
    cancellation) chunk by chunk.

    Hostile inputs: huge finite entries are scaled before squaring (float32 stacks in float64),
    so the result is finite for float32/half inputs; for float64 inputs a distance beyond the
    float64 range is +inf."""
    amax = max(_finite_abs_max(x), _finite_abs_max(z))
    y, s = _safe_view(x, amax)
    if y is x:
        return _distances_to(x, z)
    dist = _distances_to(y, z.to(torch.float64) * (1.0 / s))
    return dist if s == 1.0 else dist.mul_(s)


def _distances_to(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The kernel of :func:`distances_to`, without the overflow guard."""
    n, d = x.shape
    cdt = _compute_dtype(x.dtype)
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    zc = z.to(cdt)
    k = max(1, min(d, _cache_columns(n, cdt)))
    buf = torch.empty((n, k), dtype=cdt, device=x.device)  # x_i - z of one chunk, reused
    for sl in _column_slices(d, k):
        diff = buf[:, : sl.stop - sl.start]
        torch.sub(x[:, sl], zc[sl], out=diff)
        sq += torch.linalg.vector_norm(diff, dim=1).to(torch.float64).square_()
    return sq.sqrt_()


def _cache_columns(n: int, dtype: torch.dtype) -> int:
    """Columns per chunk so that an ``[n, k]`` chunk is about 4 MiB (cache-sized: measured on
    this CPU at n = 13, 100 and 1000, the distance pass costs 1.1-1.8 reads of the stack against
    1.6-2.3 reads at 256 KiB or 16 MiB chunks and 3.6 reads with ``torch.cdist``)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1024, (4 << 20) // (max(n, 1) * itemsize))


def _selected_mean_columns(rows: int, itemsize: int, device: torch.device) -> int:
    """Columns per chunk for the mean of selected rows (``index_select`` then ``mean``). Off
    the CPU :data:`CHUNK_COLUMNS` (few, large kernel launches). On the CPU the
    copy of about 384 KiB, so it is read back from the core's cache, in a multiple of 256
    columns (torch's column mean then adds each column's values in the same order as in a
    64Ki-column chunk: the same bits, checked for widths that are multiples of 256; other widths
    change the vector alignment and the last bit). Measured for 90 of 100 float32 rows of 1e6
    columns, one thread: 0.057 s at 65,536 columns, 0.047-0.050 s at 2,048, 0.045-0.047 s at
    1,024, 0.054 s at 512 (a read of the whole stack: 0.049 s)."""
    if device.type != "cpu":
        return CHUNK_COLUMNS
    fit = (384 << 10) // max(1, rows * itemsize)
    return max(256, fit - fit % 256)


def _weighted_sum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i x_i`` as ``[d]`` in the compute dtype of ``x``."""
    cdt = _compute_dtype(x.dtype)
    return w.to(cdt) @ x.to(cdt)


def _clip_scales(norms: torch.Tensor, tau: float) -> torch.Tensor:
    """``min(1, tau / ||z||)`` per row (a zero row keeps scale 1)."""
    return (tau / norms.clamp_min(_TINY)).clamp_max_(1.0)


# --------------------------------------------------------------------------- base classes


def _register(registry: Registry, name: str, description: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        return registry.register(name, description)(cls)

    return deco


class _Uncertified(Exception):
    """A certified call's input could not be proven ordinary (see :attr:`_Component.certifies`)."""


class _Component:
    name: ClassVar[str] = "?"

    certifies: ClassVar[bool] = False
    """True for components whose computation starts with a pass that can prove their whole
    input ordinary on the way: the Gram distances (:meth:`_gram_distances`: every entry obeys
    ``|x_ij| <= sqrt(G_ii) + max |c|``), the coordinate median's selection or the trimmed
    mean's sort (the largest magnitude met). A call then skips the finiteness pass over the
    stack (one ``aminmax``, a fifth of Krum's time at 100 x 1,000,000): that pass proves the
    stack finite and below the overflow bound, or the call starts again on the usual path
    (dropping non-finite rows, guarding huge ones). Either way the result is the usual path's.
    A subclass that computes something else first should set it False."""

    _certifying: Optional[torch.Tensor] = None  # the stack of a certified attempt in progress
    _certified: bool = False  # a kernel of the attempt was asked to prove that stack ordinary (and did not raise)

    guarded: ClassVar[bool] = False
    """True for components whose ``_aggregate``/``_apply`` handle the guarded path (huge finite
    inputs: a scaled or float64 stack, lengths divided by ``_unit``). Components that leave it
    False (e.g. plugins) still get non-finite rows dropped, but see their inputs unchanged."""

    last_dropped: int = 0
    """Non-finite input rows dropped by the last call."""

    # per call, set by _run: non-finite rows removed so far (this call and earlier pipeline
    # steps), the unit of the stack handed to _aggregate/_apply, whether it is the guarded path
    _known_bad: int = 0
    _unit: float = 1.0
    _guarded_call: bool = False

    def params(self) -> dict[str, Any]:
        """The constructor parameters of this instance (for logs and reprs)."""
        return {k: getattr(self, k) for k in accepted_params(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _check_n(self, n: int) -> None:
        """Raise ``ValueError`` (naming the condition, e.g. Krum's n >= 2f + 3) when ``n`` finite
        inputs are too few; called before every computation and by :func:`check_inputs`."""

    def _max_f(self, n: int) -> int:
        """The largest assumed ``f`` valid for ``n`` inputs (components with an ``f``)."""
        raise NotImplementedError

    def _fit_f(self, n: int) -> int:
        """The ``f`` to use with ``n`` remaining inputs: ``self.f``, or, when non-finite rows were
        dropped, the largest value <= ``self.f`` that ``n`` allows (at least ``f - dropped``)."""
        f = self.f  # type: ignore[attr-defined]
        if self._known_bad:
            f = max(0, min(f, self._max_f(n)))
        return f

    def _run(self, x: torch.Tensor, who: str, compute: Callable[[torch.Tensor], torch.Tensor],
             known_bad: int = 0) -> torch.Tensor:
        n, _ = _check_stack(x, who)
        if self.certifies and self.guarded and not known_bad:
            out = self._attempt_certified(x, compute)
            if out is not None:
                self.last_dropped = 0
                return out
        x, dropped, amax = _finite_rows(x, who)
        self.last_dropped = dropped
        self._known_bad = known_bad + dropped
        try:
            try:
                self._check_n(x.shape[0])
            except ValueError as e:
                if not dropped:
                    raise
                raise ValueError(f"{e} (after dropping {dropped} non-finite of {n} inputs)") from None
            y, s = _safe_view(x, amax) if self.guarded else (x, 1.0)
            if y is x:
                return compute(x).to(x.dtype)
            self._unit, self._guarded_call = s, True
            return _unscale(compute(y), s, x.dtype)
        finally:
            self._known_bad, self._unit, self._guarded_call = 0, 1.0, False

    def _attempt_certified(self, x: torch.Tensor,
                           compute: Callable[[torch.Tensor], torch.Tensor]) -> Optional[torch.Tensor]:
        """``compute(x)`` without the finiteness pass, or None when its first pass did not prove
        ``x`` ordinary (or it raised a ``ValueError``: the usual path then raises its own,
        naming dropped rows where there were some)."""
        self._certifying, self._certified = x, False
        try:
            self._check_n(x.shape[0])
            out = compute(x)
        except (_Uncertified, ValueError):
            return None
        finally:
            self._certifying = None
        return out.to(x.dtype) if self._certified else None

    def _certifying_on(self, x: torch.Tensor) -> bool:
        """Whether this call is a certified attempt (:attr:`certifies`) on ``x``, its whole
        stack: the caller then passes ``certify=True`` to the kernel, which proves ``x``
        ordinary or raises :class:`_Uncertified` (abandoning the attempt)."""
        whole = x is self._certifying
        self._certified = self._certified or whole
        return whole

    def _gram_distances(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """``[n, n]`` float64 squared distances of the rows of ``x`` (finite, as every component
        sees them) centred on the first ``2f + 1`` rows (:func:`_gram_sq_distances`); in a
        certified attempt on the attempt's whole stack they also prove it ordinary, or raise."""
        return _gram_sq_distances(x, finite=True, f=f, certify=self._certifying_on(x))


class Aggregator(_Component):
    """``[n, d] -> [d]``. Subclasses implement ``_aggregate`` and, if they need one, ``_check_n``.

    ``__call__`` first drops non-finite rows (``last_dropped`` counts them; ``ValueError`` if
    none is left), then checks ``n`` and aggregates (see the module docstring, Hostile inputs)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x, 0)

    def _call(self, x: torch.Tensor, known_bad: int) -> torch.Tensor:
        return self._run(x, f"aggregator {self.name!r}", self._aggregate, known_bad)

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """``[m, d]`` finite rows (``m`` already checked by ``_check_n``) -> ``[d]``: the
        subclass's computation."""
        raise NotImplementedError

    _row_centre: ClassVar[bool] = False
    """Whether :meth:`_row_coefficients` needs the centre terms of its :class:`_RowGram`."""

    def _row_coefficients(self, rg: _RowGram) -> Optional[torch.Tensor]:
        """This rule's result on ordinary rows (finite, none dropped, ``f`` as given) whose
        centred Gram matrix is ``rg``, as float64 coefficients ``a`` over those rows (the result
        being ``sum_i a_i x_i``), or None when it cannot be had that way. Rules whose result is
        such a combination (the mean, Krum, Multi-Krum, the geometric median) define it in
        their own class, and a :class:`Pipeline` ending with nearest-neighbour mixing then
        never forms the mixed rows (:meth:`NearestNeighborMixing._call_then`)."""
        return None

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """This rule on each of ``G`` ordinary stacks at once: ``[G, n, d]`` (every entry finite
        and below the overflow bound, :func:`ordinary_stacks`; ``n`` already checked by
        ``_check_n``) -> ``[G, d]`` in the compute dtype, each row what ``_aggregate`` gives
        that stack up to rounding; None (the default) when the rule has no such form. Defined
        by the mean, the coordinate median, the trimmed mean, Krum, Multi-Krum and the geometric
        median in their own class:
        the robust-gossip step ``node_aggregator`` then aggregates every receiver's
        neighbourhood of one size in one call instead of one call per receiver."""
        return None


class PreAggregator(_Component):
    """``[n, d] -> [m, d]``, applied before an aggregator (see :class:`Pipeline`).

    ``__call__`` first drops non-finite rows (``last_dropped`` counts them; ``ValueError`` if
    none is left): they do not come back, the output has one row per finite input row
    (``m = n - last_dropped``), in input order."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x, 0)

    def _call(self, x: torch.Tensor, known_bad: int) -> torch.Tensor:
        return self._run(x, f"pre-aggregation step {self.name!r}", self._apply, known_bad)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """``[m, d]`` finite rows -> the step's output rows (the subclass's computation)."""
        raise NotImplementedError

    def output_rows(self, n: int) -> int:
        """Rows this step outputs for ``n`` finite input rows (``n`` unless it regroups them, as
        bucketing does): what the next step or aggregator of a :class:`Pipeline` receives."""
        return n


def check_inputs(aggregator: Any, n: int) -> None:
    """Raise ``ValueError`` (the first failing part's message) when ``n`` finite inputs are too
    few for ``aggregator``: an aggregator, a :class:`Pipeline` (each step checked on the rows it
    receives, :meth:`PreAggregator.output_rows` of the steps before it) or a plain callable
    (needs one input)."""
    if n < 1:
        raise ValueError("no input to aggregate")
    for part in [*getattr(aggregator, "pre", ()), getattr(aggregator, "aggregator", aggregator)]:
        check = getattr(part, "_check_n", None)
        if check is not None:
            check(n)
        rows = getattr(part, "output_rows", None)
        if rows is not None and part is not getattr(aggregator, "aggregator", aggregator):
            n = rows(n)


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """``[G, n, d] -> [n, G d]`` (contiguous): the ``G`` stacks as column blocks of one stack,
    so that one coordinate-wise selection (the sorting network) serves them all."""
    g, n, d = x.shape
    return x.permute(1, 0, 2).reshape(n, g * d)


def ordinary_stacks(x: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool for a ``[G, n, d]`` batch of stacks: every entry finite and below the
    overflow bound of the guarded path (:func:`_safe_view`), so that an aggregator takes its
    ordinary path on that stack (no row dropped, no scaling)."""
    g, n, d = x.shape
    if not n * d:
        return torch.ones(g, dtype=torch.bool, device=x.device)
    limit = _overflow_limit(_compute_dtype(x.dtype), n, d)  # NaN fails both tests, inf the one of its sign
    return (x.amax(dim=(1, 2)) <= limit) & (x.amin(dim=(1, 2)) >= -limit)


def _check_f_below_n(who: str, n: int, f: int) -> None:
    if f >= n:
        raise ValueError(f"{who}: f = {f} assumed Byzantine inputs but only n = {n} inputs; needs n > f")


# --------------------------------------------------------------------------- aggregators


@_register(AGGREGATORS, "mean", "plain average (not robust)")
class Mean(Aggregator):
    """``mean_i x_i``.

    Example: ``[[0, 0], [2, 4]] -> [1, 2]``.

    Hostile inputs: non-finite rows are dropped (the mean of the finite ones); huge finite rows
    give a finite result (the mean of the scaled stack, scaled back), but the mean is not
    robust: one input moves it arbitrarily far (up to the largest input's size).
    """

    guarded = True

    def _call(self, x: torch.Tensor, known_bad: int) -> torch.Tensor:
        """One read when every entry is finite: a NaN or inf entry makes its column's mean
        non-finite (NaN absorbs, inf + -inf is NaN), so a finite mean proves the stack finite
        and the guard's own pass is skipped (the guarded path runs otherwise, and when the sum
        overflows). Same values as the guarded call on ordinary stacks."""
        if x.dim() == 2 and x.shape[0] >= 1 and x.shape[1] >= 1 and x.dtype in (torch.float32, torch.float64):
            m = x.mean(dim=0)
            # a finite float64 sum of m proves m finite (NaN and inf propagate) without a [d]
            # boolean temporary; a sum that overflows (float64 means near 1e308) asks m itself
            if math.isfinite(float(m.sum(dtype=torch.float64))) or bool(torch.isfinite(m).all()):
                self.last_dropped = 0
                return m
        return super()._call(x, known_bad)

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=0)

    def _row_coefficients(self, rg: _RowGram) -> Optional[torch.Tensor]:
        n = rg.gram.shape[0]
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=rg.gram.device)

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return x.mean(dim=1)


_STARTS = ("mean", "median")
_SOLVERS = ("auto", "direct", "gram")


def weiszfeld(
    x: torch.Tensor, *, nu: float = 1e-6, tol: float = 1e-7, max_iter: int = 100, start: str = "mean",
    solver: str = "auto",
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld iteration for ``argmin_z sum_i ||x_i - z||`` (Pillutla et al. 2022).

    Returns ``(z, iterations)``. ``z`` starts at the mean (``start = "median"``: at the
    coordinate-wise median); each step sets ``z <- sum_i b_i x_i / sum_i b_i`` with
    ``b_i = 1 / max(nu, ||x_i - z||)`` and the loop stops when
    ``||z_new - z|| <= tol * max(||z||, tiny)`` or after ``max_iter`` steps. Weights and norms are
    float64; the weighted sums run in the input precision (float32 for half types).
    ``solver``: as :class:`GeometricMedian`'s.

    Hostile inputs: the rows must be finite (the aggregators drop non-finite rows first). With
    huge finite entries the stack is scaled first (float32 computed in float64) and the
    iteration starts at the coordinate-wise median whatever ``start`` says: from a mean dragged
    far away by a few huge rows, each step only recovers a factor of about
    ``far / (n - far)`` of the distance."""
    if start not in _STARTS:
        raise ValueError(f"start = {start!r}: must be one of {', '.join(_STARTS)}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver = {solver!r}: must be one of {', '.join(_SOLVERS)}")
    _check_stack(x, "weiszfeld")
    y, s = _safe_view(x, _finite_abs_max(x))
    if y is x:
        return _weiszfeld(x, nu=nu, tol=tol, max_iter=max_iter, start=start, solver=solver)
    z, it = _weiszfeld(y, nu=nu / s, tol=tol, max_iter=max_iter, start="median")
    return _unscale(z, s, _compute_dtype(x.dtype)), it


def _weiszfeld(x: torch.Tensor, *, nu: float, tol: float, max_iter: int, start: str,
               certify_for: Optional[torch.Tensor] = None, solver: str = "auto") -> tuple[torch.Tensor, int]:
    """The kernel of :func:`weiszfeld`, without the overflow guard. ``solver``: as
    :class:`GeometricMedian`'s (the Gram iteration starts from the mean only).

    ``certify_for``: the whole stack of a certified call (``x`` is its columns or all of it):
    the first distances prove ``x`` finite and below that stack's overflow bound, since
    ``|x_ij| <= ||x_i - z|| + |z_j|`` (a factor 2 for rounding), or :class:`_Uncertified` is
    raised."""
    if start == "mean" and (solver == "gram" or solver == "auto" and _gram_weiszfeld_pays(*x.shape, max_iter, tol)):
        out = _gram_weiszfeld(x, nu=nu, tol=tol, max_iter=max_iter, certify_for=certify_for)
        if out is not None:
            return out
    cdt = _compute_dtype(x.dtype)
    z = x.to(cdt).mean(dim=0) if start == "mean" else coordinatewise_median(x).to(cdt)
    it = 0
    while it < max_iter:
        it += 1
        dist = _distances_to(x, z)
        if certify_for is not None and it == 1:
            _check_certified(2.0 * _max_or_nan(_abs_max(dist), _abs_max(z)), certify_for)
        b = 1.0 / dist.clamp_min(nu)
        z_new = _weighted_sum(b / b.sum(), x)
        step = torch.linalg.vector_norm(z_new.to(torch.float64) - z.to(torch.float64)).item()
        scale = max(torch.linalg.vector_norm(z.to(torch.float64)).item(), _TINY)
        z = z_new
        if step <= tol * scale:
            break
    return z, it


def _gram_weiszfeld_pays(n: int, d: int, max_iter: int, tol: float) -> bool:
    """Whether :func:`_gram_weiszfeld` is expected to beat the direct iteration on ``[n, d]``,
    by a cost model in reads of the stack measured on this project's 2-core CPU (float32, one
    thread, 100 x 1,000,000 and 300 x 300,000; docs/results/speed.md): the direct loop costs
    the mean (1 read) and :data:`DIRECT_READS_PER_ITERATION` a step (a distance pass and a
    weighted sum), the Gram path :data:`GRAM_FIXED_READS` (the centre's selection, the centred
    copy, the final weighted sum) plus :data:`GRAM_READS_PER_ROW` per row for the product, then
    ``O(n^2)`` per step. Steps counted: ``max_iter`` with ``tol = 0``, else at most
    :data:`EXPECTED_ITERATIONS` (the default tolerance stops after about 12 on such stacks).
    Stacks below :data:`GRAM_WEISZFELD_MIN_ENTRIES` entries or narrower than ``4 n`` columns stay
    direct (cheap either way)."""
    if n * d < GRAM_WEISZFELD_MIN_ENTRIES or d < 4 * n:
        return False
    steps = max_iter if tol == 0 else min(max_iter, EXPECTED_ITERATIONS)
    return GRAM_FIXED_READS + GRAM_READS_PER_ROW * n < 1.0 + DIRECT_READS_PER_ITERATION * steps


DIRECT_READS_PER_ITERATION = 2.3
"""A direct Weiszfeld step in reads of the stack (measured: 0.12 s at 100 x 1,000,000)."""

GRAM_FIXED_READS = 2.1
"""The Gram path's cost besides the product, in reads (selection 0.4, centred copy 1.1, final sum 0.6)."""

GRAM_READS_PER_ROW = 0.04
"""The centred Gram product's cost per row, in reads (0.2 s for 100 x 1,000,000: 4 reads)."""

EXPECTED_ITERATIONS = 10
"""Steps the cost model expects from a positive tolerance."""

GRAM_WEISZFELD_MIN_ENTRIES = 1 << 16
"""Smallest stack (``n * d``) for which the geometric median may iterate in the span of the rows."""

_GM_CENTRE_ROWS = 21
"""Rows (spread evenly over the stack) whose coordinate median centres :func:`_gram_weiszfeld`'s
Gram matrix."""

_GRAM_TRUST = 1e-2
""":func:`_gram_weiszfeld` hands over to the direct iteration when a squared distance falls
below this fraction of the centred norms it is computed from (see there)."""


def _gram_weiszfeld(x: torch.Tensor, *, nu: float, tol: float, max_iter: int,
                    certify_for: Optional[torch.Tensor] = None) -> Optional[tuple[torch.Tensor, int]]:
    """The smoothed Weiszfeld iteration of :func:`weiszfeld` from the mean, run in the span of
    the rows: every iterate is ``z = sum_j a_j x_j`` with ``sum_j a_j = 1`` (the mean has
    ``a = 1/n``, and each step's ``b / sum b`` keeps that form), so with the rows centred,
    ``y_j = x_j - c``, and their Gram matrix ``G = Y Y^T``,

        ||x_i - z||^2 = G_ii - 2 (G a)_i + a^T G a,
        ||z_new - z||^2 = (a' - a)^T G (a' - a),   ||z||^2 = ||c||^2 + 2 a^T Y c + a^T G a.

    One pass over ``x`` builds ``G`` (:func:`_centred_gram`, centred on the median of
    :data:`_GM_CENTRE_ROWS` rows spread over the stack, the centre appended as a row for ``Y c``
    and ``||c||^2``); the iterations cost ``O(n^2)`` each, in float64; one weighted sum
    (:func:`_weighted_sum`, as a direct step computes it) gives ``z``. The same iterates as the
    direct loop up to rounding, and the same stopping rule.

    The Gram formula loses relative accuracy when ``||x_i - z||^2`` is small beside
    ``G_ii + a^T G a`` (a row close to the iterate, e.g. a cluster of equal rows at the
    median): below :data:`_GRAM_TRUST` of it this returns None and the caller runs the direct
    iteration. In a certified call (``certify_for``, the whole stack) the Gram matrix proves the
    stack finite and below the overflow bound, as for the Gram distances, or
    :class:`_Uncertified` is raised."""
    n, _ = x.shape
    head = x[:: max(1, n // _GM_CENTRE_ROWS)][:_GM_CENTRE_ROWS]
    full = _proven_gram(x, head, finite=True, certify_for=certify_for, with_centre=True)
    found = _weiszfeld_coefficients(_RowGram.of(full, with_centre=True), nu=nu, tol=tol, max_iter=max_iter)
    if found is None:
        return None
    a, it = found
    return _weighted_sum(a, x), it


def _weiszfeld_coefficients(rg: _RowGram, *, nu: float, tol: float,
                            max_iter: int) -> Optional[tuple[torch.Tensor, int]]:
    """The iteration of :func:`_gram_weiszfeld` on a :class:`_RowGram` (with its centre terms):
    ``(a, steps)``, the median being ``sum_i a_i x_i``, or None when a squared distance falls
    below :data:`_GRAM_TRUST` of the centred norms it is computed from."""
    g, yc, cc = rg.gram, rg.yc, rg.cc
    n = g.shape[0]
    diag = g.diagonal()
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=g.device)
    ga = g @ a
    it = 0
    while it < max_iter:
        it += 1
        aga = float(a @ ga)
        d2 = (diag - 2.0 * ga + aga).clamp_min_(0.0)
        if bool((d2 < _GRAM_TRUST * (diag + aga)).any()):
            return None
        b = 1.0 / d2.sqrt_().clamp_min_(nu)
        a_new = b / b.sum()
        ga_new = g @ a_new
        step = math.sqrt(max(float((a_new - a) @ (ga_new - ga)), 0.0))
        scale = max(math.sqrt(max(cc + 2.0 * float(a @ yc) + aga, 0.0)), _TINY)
        a, ga = a_new, ga_new
        if step <= tol * scale:
            break
    return a, it


@_register(
    AGGREGATORS, "geometric_median", "geometric median by smoothed Weiszfeld (RFA), optionally per segment (layer)"
)
class GeometricMedian(Aggregator):
    """Geometric median ``argmin_z sum_i ||x_i - z||`` by the smoothed Weiszfeld algorithm of
    Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning" (IEEE TSP 2022):

        z_0 = mean_i x_i,
        z <- sum_i b_i x_i / sum_i b_i,   b_i = 1 / max(nu, ||x_i - z||),

    stopping when ``||z_new - z|| <= tol * max(||z||, tiny)`` or after ``max_iter`` steps.

    Parameters (keyword-only):
      - ``nu = 1e-6``: smoothing floor on distances (avoids division by 0 when ``z`` hits an
        input; the smoothed objective differs from the true one by at most ``n * nu / 2``);
      - ``tol = 1e-7``: relative step size at which to stop (0: run ``max_iter`` steps or to an
        exact fixed point);
      - ``max_iter = 100``: iteration cap;
      - ``segments = None``: sizes summing to ``d``: run the median independently on each
        segment (layer by layer, Frobenius norm per layer, as in BR-MTRL) and concatenate;
      - ``solver = "auto"``: how the iterates are computed. ``"direct"``: each step reads the
        stack twice (the distances ``||x_i - z||``, then the weighted sum). ``"gram"``: every
        iterate is a combination ``z = sum_j a_j x_j`` of the rows, so one pass builds their
        (centred) Gram matrix, the steps run on it in ``O(n^2)`` each and one weighted sum gives
        ``z`` (Weiszfeld's iteration is unchanged: the same iterates up to rounding; see
        :func:`_gram_weiszfeld`, which hands over to the direct loop where the Gram formula would
        lose accuracy, and always on the guarded path). ``"auto"`` (default): the Gram
        iteration where a cost model says its one product costs less than the steps it saves
        (:func:`_gram_weiszfeld_pays`: e.g. 100 x 1,000,000 float32 with the default tolerance,
        0.36 s against 1.3-1.5 s on this project's CPU), else direct.

    The breakdown point is 1/2: fewer than half of the inputs, however far, move ``z`` a
    bounded amount. ``last_iterations`` holds the step count(s) of the last call.

    Example: ``[[0, 0], [1, 0], [0, 1], [100, 100]]`` -> ``[0.5, 0.5]``, where the unit vectors
    towards the four inputs sum to zero (the far point pulls no harder than a near one),
    whereas the mean is ``[25.25, 25.25]``.

    Hostile inputs: non-finite rows are dropped. With huge finite rows (the guarded path) the
    stack is scaled, ``nu`` with it, and the iteration starts from the coordinate-wise median
    instead of the mean (which such rows drag arbitrarily far). The result is finite and, when
    at most a fraction ``a < 1/2`` of the remaining rows lie farther than ``r`` from a point
    ``y`` (e.g. the honest rows' mean), ``||z - y|| <= (1 - a) / sqrt(1 - 2a) * r`` for the exact
    geometric median (Minsker 2015, Lemma 2.1), up to the Weiszfeld tolerance: per segment when
    ``segments`` is set. On ordinary inputs the start is the mean, so far (but not huge)
    outliers such as 1e100 may need more than ``max_iter`` steps to be discounted.
    """

    guarded = True
    certifies = True

    def __init__(
        self,
        *,
        nu: float = 1e-6,
        tol: float = 1e-7,
        max_iter: int = 100,
        segments: Optional[Sequence[int]] = None,
        solver: str = "auto",
    ) -> None:
        if solver not in _SOLVERS:
            raise ValueError(f"solver = {solver!r}: must be one of {', '.join(map(repr, _SOLVERS))}")
        self.solver = solver
        self.nu = _positive_param("nu", nu)
        self.tol = _positive_param("tol", tol, allow_zero=True)
        self.max_iter = _int_param("max_iter", max_iter, minimum=1)
        if segments is not None:
            if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence) or len(segments) == 0:
                raise ValueError(
                    f"segments = {segments!r}: must be None or a non-empty sequence of positive integers"
                )
            segments = tuple(_int_param(f"segments[{i}]", s, minimum=1) for i, s in enumerate(segments))
        self.segments: Optional[tuple[int, ...]] = segments
        self.last_iterations: list[int] = []

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[1]
        segments = (d,) if self.segments is None else self.segments
        if sum(segments) != d:
            raise ValueError(
                f"geometric_median: segments {list(segments)} sum to {sum(segments)}, but vectors have d = {d}"
            )
        nu = self.nu / self._unit
        begin = "median" if self._guarded_call else "mean"
        whole = x if self._certifying_on(x) else None
        parts, self.last_iterations, start = [], [], 0
        for size in segments:
            z, it = _weiszfeld(x[:, start:start + size], nu=nu, tol=self.tol, max_iter=self.max_iter, start=begin,
                               certify_for=whole, solver=self.solver)
            parts.append(z)
            self.last_iterations.append(it)
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    _row_centre = True

    def _row_coefficients(self, rg: _RowGram) -> Optional[torch.Tensor]:
        """The Gram iteration on ``rg`` (whole vectors only: None with ``segments`` or
        ``solver = "direct"``, or where the Gram formula cannot be trusted)."""
        if self.segments is not None or self.solver == "direct":
            return None
        found = _weiszfeld_coefficients(rg, nu=self.nu, tol=self.tol, max_iter=self.max_iter)
        if found is None:
            return None
        self.last_iterations = [found[1]]
        return found[0]

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The direct iteration on every stack at once (whole vectors only: None with
        ``segments``); a stack leaves the loop when its own step meets the tolerance, so each
        takes the steps it would take alone. ``last_iterations`` lists them."""
        if self.segments is not None:
            return None
        g = x.shape[0]
        cdt = _compute_dtype(x.dtype)
        x = x.to(cdt)
        z = x.mean(dim=1)
        steps = torch.zeros(g, dtype=torch.long, device=x.device)
        active = torch.arange(g, device=x.device)
        xa, za = x, z.clone()  # the stacks still iterating (gathered again only when some stop)
        for it in range(1, self.max_iter + 1):
            dist = torch.linalg.vector_norm(xa - za[:, None, :], dim=2).to(torch.float64)
            b = 1.0 / dist.clamp_min_(self.nu)
            w = (b / b.sum(dim=1, keepdim=True)).to(cdt)
            z_new = torch.bmm(w[:, None, :], xa)[:, 0]
            step = torch.linalg.vector_norm(z_new.to(torch.float64) - za.to(torch.float64), dim=1)
            scale = torch.linalg.vector_norm(za.to(torch.float64), dim=1).clamp_min_(_TINY)
            z[active] = z_new
            steps[active] = it
            going = step > self.tol * scale
            if not bool(going.all()):
                active, xa, z_new = active[going], xa[going], z_new[going]
                if not active.numel():
                    break
            za = z_new
        self.last_iterations = steps.tolist()
        return z


def krum_scores(x: torch.Tensor, f: int, dist: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Krum scores ``s_i = sum of the n - f - 2 smallest ||x_i - x_j||^2 over j != i`` (float64).

    Hostile inputs: as :func:`pairwise_sq_distances` (a float64 score beyond the float64 range
    is +inf; :class:`Krum` itself ranks scaled scores, which stay finite)."""
    d2 = pairwise_sq_distances(x) if dist is None else dist.clone()
    return _krum_scores(d2, f)


def _krum_scores(d2: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores from squared distances ``d2`` (overwritten)."""
    n = d2.shape[0]
    d2.fill_diagonal_(math.inf)
    k = n - f - 2
    return torch.sort(d2, dim=1).values[:, :k].sum(dim=1)


def _batched_krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    """``[G, n]`` Krum scores of ``G`` ordinary stacks ``[G, n, d]``: each stack's Gram distances
    as :func:`_gram_sq_distances` takes them (chunks centred on the lower median of the first
    ``2f + 1`` rows, products in the input precision summed in float64), then the sum of the
    ``n - f - 2`` smallest per row, as for one stack."""
    g, n, d = x.shape
    cdt = _compute_dtype(x.dtype)
    rows = _centre_rows(n, f)
    gram = torch.zeros((g, n, n), dtype=torch.float64, device=x.device)
    for sl in _column_slices(d):
        c = x[:, :, sl].to(cdt)
        centre = _lower_median(_side_by_side(c[:, :rows])).view(g, 1, -1)
        centred = c - centre
        gram += torch.bmm(centred, centred.transpose(1, 2)).to(torch.float64)
    gram = 0.5 * (gram + gram.transpose(1, 2))
    sq = gram.diagonal(dim1=1, dim2=2)
    d2 = (sq[:, :, None] + sq[:, None, :]).sub_(gram, alpha=2.0).clamp_min_(0.0)
    d2.diagonal(dim1=1, dim2=2).fill_(math.inf)
    return torch.sort(d2, dim=2).values[:, :, : n - f - 2].sum(dim=2)


def _check_krum_n(who: str, n: int, f: int) -> None:
    if n < 2 * f + 3:
        raise ValueError(f"{who}: needs n >= 2f + 3, got n = {n} and f = {f} (2f + 3 = {2 * f + 3})")


@_register(AGGREGATORS, "krum", "Krum: the input with the smallest sum of squared distances to its n-f-2 nearest")
class Krum(Aggregator):
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017):

        score_i = sum_{j in N_i} ||x_i - x_j||^2,  N_i = the n - f - 2 nearest x_j, j != i,

    returns ``x_{i*}`` with ``i* = argmin_i score_i`` (ties: lowest index). Requires
    ``n >= 2f + 3``. ``f`` (keyword-only, required) is the number of Byzantine inputs assumed.

    Example (f = 1, n = 5): ``[0], [1], [2], [3], [100]``: each keeps its 2 nearest others;
    scores 1+4=5, 1+1=2, 1+1=2, 1+4=5, 97^2+98^2 -> ties 1 and 2, returns ``x_1 = [1]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it, see the module docstring). Scores of huge finite rows are computed on the scaled
    stack and do not overflow. The result is always one of the finite input rows (returned
    exactly, bar float64 entries below ~1e-150 in a stack that also holds ~1e308), so it is
    finite; when at most ``f`` rows are far from the others (1e308 included), none of them is
    selected once their distance to the honest rows exceeds the honest rows' diameter times
    ``sqrt(n)``.
    """

    guarded = True
    certifies = True

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _max_f(self, n: int) -> int:
        return (n - 3) // 2

    def _check_n(self, n: int) -> None:
        _check_krum_n("krum", n, self._fit_f(n))

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        f = self._fit_f(x.shape[0])
        scores = _krum_scores(self._gram_distances(x, f), f)
        return x[int(torch.argmin(scores))].clone()

    def _row_coefficients(self, rg: _RowGram) -> Optional[torch.Tensor]:
        scores = _krum_scores(_sq_distances_from_gram(rg.gram), self.f)
        a = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
        a[int(torch.argmin(scores))] = 1.0
        return a

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        best = torch.argmin(_batched_krum_scores(x, self.f), dim=1)
        return x[torch.arange(x.shape[0], device=x.device), best].to(_compute_dtype(x.dtype))


@_register(AGGREGATORS, "multi_krum", "Multi-Krum: mean of the m inputs with the smallest Krum scores")
class MultiKrum(Aggregator):
    """Multi-Krum (Blanchard et al., NeurIPS 2017): the average of the ``m`` inputs with the
    lowest Krum scores (see :class:`Krum`; ties in score go to the lower index).

    Parameters (keyword-only): ``f`` (required) assumed Byzantine inputs, ``m = None`` how many
    to average, in ``[1, n - f]`` (None: ``n - f``). Requires ``n >= 2f + 3``. ``m = 1`` is Krum.

    Example (f = 1, m = 2): ``[0], [1], [2], [3], [100]``: scores 5, 2, 2, 5, ... -> mean of
    ``x_1, x_2`` = ``[1.5]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it, and then ``m`` capped at ``n - f`` of the remaining rows instead of raising).
    Scores and the mean are computed on the scaled stack: the result is finite. When at most
    ``f`` rows are far (1e308 included) and ``m <= n - f``, none of them is averaged (as for
    :class:`Krum`), so the result is a mean of honest rows; with ``m`` above the number of
    honest rows it is finite but not robust.
    """

    guarded = True
    certifies = True

    def __init__(self, *, f: int, m: Optional[int] = None) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.m = None if m is None else _int_param("m", m, minimum=1)

    def _max_f(self, n: int) -> int:
        return (n - 3) // 2

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)
        _check_krum_n("multi_krum", n, f)
        if self.m is not None and not self._known_bad and not 1 <= self.m <= n - f:
            raise ValueError(
                f"multi_krum: m = {self.m} must lie in [1, n - f] = [1, {n - f}] (n = {n}, f = {f})"
            )

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        f = self._fit_f(n)
        m = n - f if self.m is None else self.m
        if self._known_bad:
            m = min(m, n - f)
        scores = _krum_scores(self._gram_distances(x, f), f)
        keep = torch.sort(scores, stable=True).indices[:m]
        out = torch.empty(d, dtype=x.dtype, device=x.device)
        for sl in _column_slices(d, _selected_mean_columns(m, x.element_size(), x.device)):
            out[sl] = x[:, sl].index_select(0, keep).mean(dim=0)
        return out

    def _row_coefficients(self, rg: _RowGram) -> Optional[torch.Tensor]:
        n = rg.gram.shape[0]
        m = n - self.f if self.m is None else self.m
        scores = _krum_scores(_sq_distances_from_gram(rg.gram), self.f)
        a = torch.zeros(n, dtype=torch.float64, device=scores.device)
        a[torch.sort(scores, stable=True).indices[:m]] = 1.0 / m
        return a

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        g, n, _ = x.shape
        m = n - self.f if self.m is None else self.m
        keep = torch.sort(_batched_krum_scores(x, self.f), dim=1, stable=True).indices[:, :m]
        return x[torch.arange(g, device=x.device)[:, None], keep].to(_compute_dtype(x.dtype)).mean(dim=1)


@_register(AGGREGATORS, "coordinate_median", "coordinate-wise median (midpoint of the middle two for even n)")
class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018):
    ``z_j = median_i x_ij``; for even ``n`` the midpoint of the two middle values.

    Example: ``[[1, 5], [3, 0], [2, 7], [9, 1]]`` -> ``[(2+3)/2, (1+5)/2] = [2.5, 3]``.

    Hostile inputs: non-finite rows are dropped. The result is finite (an input value or the
    midpoint of two, computed without overflow); when fewer than half of the remaining rows are
    corrupted, every coordinate lies within the range of the honest rows' values.
    """

    guarded = True
    certifies = True

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return coordinatewise_median(x, certify=self._certifying_on(x))

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The stacks side by side as the columns of one ``[n, G d]`` stack (a copy), whose
        coordinate-wise median is every stack's: the same selection, column by column."""
        g, n, d = x.shape
        return coordinatewise_median(_side_by_side(x)).view(g, d)


class HonestMinority:
    """The ``f`` of a step that only needs one honest input: keyword-only ``f`` >= 0 assumed
    Byzantine inputs, and ``n > f`` checked at call time (mixed into a component class)."""

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _max_f(self, n: int) -> int:
        return n - 1

    def _check_n(self, n: int) -> None:
        _check_f_below_n(self.name, n, self._fit_f(n))  # type: ignore[attr-defined]


class HonestMajority:
    """The ``f`` of a rule that needs an honest majority: keyword-only ``f`` >= 0 assumed
    Byzantine inputs, and ``n > 2f`` checked at call time (mixed into an aggregator class)."""

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _max_f(self, n: int) -> int:
        return (n - 1) // 2

    def _check_n(self, n: int) -> None:
        f = self._fit_f(n)  # type: ignore[attr-defined]
        if n <= 2 * f:
            raise ValueError(f"{self.name}: needs n > 2f, got n = {n} and f = {f}")  # type: ignore[attr-defined]


@_register(AGGREGATORS, "trimmed_mean", "coordinate-wise trimmed mean: drop the f largest and f smallest")
class TrimmedMean(HonestMajority, Aggregator):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the ``f``
    largest and ``f`` smallest values and average the remaining ``n - 2f``. Requires
    ``n > 2f``; ``f`` (keyword-only, required) is the number of values trimmed at each end.

    Example (f = 1): ``[1], [2], [3], [4], [100]`` -> mean of 2, 3, 4 = ``[3]``.

    Hostile inputs: non-finite rows are dropped (``f`` lowered only if the rest no longer
    allows it, see the module docstring). The kept values are averaged on the scaled stack, so
    the result is finite; when at most ``f`` of the remaining rows are corrupted (however far,
    1e308 included), every coordinate lies within the range of the honest rows' values.
    """

    guarded = True
    certifies = True


    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        f = self._fit_f(n)
        certify = self._certifying_on(x)
        if f == 0:
            if certify:
                _check_certified(_abs_max(x), x)
            return x.mean(dim=0)
        out = torch.empty(d, dtype=x.dtype, device=x.device)

        def trimmed(sl: slice) -> torch.Tensor:
            s = _sorted_columns(x[:, sl])
            if certify:
                _check_certified(_sorted_abs_max(s), x)
            return s[:, f:n - f].mean(dim=1)

        for sl, mean in _chunk_results(trimmed, x):
            out[sl] = mean
        return out

    def _batched(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The stacks side by side as the columns of one stack (a copy): the same per-column
        computation."""
        g, _, d = x.shape
        return self._aggregate(_side_by_side(x)).view(g, d)


_CENTERS = ("median", "mean")


@_register(AGGREGATORS, "centered_clipping", "centered clipping: v <- v + mean_i clip(x_i - v, tau), iters times")
class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021):

        v <- v + mean_i clip(x_i - v, tau),   clip(z, tau) = z * min(1, tau / ||z||),

    repeated ``iters`` times from a starting center ``v_0`` (the paper uses the previous
    aggregate / momentum; here the coordinate-wise median of the inputs, or their mean).

    Parameters (keyword-only): ``tau`` (required) > 0 clipping radius (inf: no clipping, one
    step from any center gives the mean), ``iters = 1`` >= 1 (the paper finds 1 enough),
    ``center = "median"`` in {"median", "mean"}. :meth:`from_center` runs the same iterations
    from an explicit ``v_0`` (e.g. the previous round's aggregate).

    Example (tau = 1, iters = 1): inputs ``[0.5], [-0.5], [10]``. From the median ``v_0 = 0.5``:
    differences 0, -1, 9.5 clip to 0, -1, 1 -> ``v = 0.5 + 0 = [0.5]``. From the mean
    ``v_0 = 10/3``: differences clip to -1, -1, 1 -> ``v = 10/3 - 1/3 = [3]``.

    Hostile inputs: non-finite rows are dropped (also by :meth:`from_center`, whose center must
    be finite). Distances are computed on the scaled stack (``tau`` scaled with it), and each
    step is a convex combination of ``v`` and the inputs, so the result is finite. From the
    median (the default) with finite ``tau``, ``b`` far rows (1e308 included) move ``v`` at most
    ``b * tau / n`` per step beyond where the honest rows take it. From the mean, or with
    ``tau = inf``, huge rows drag the result arbitrarily far (finite, not robust).
    """

    guarded = True
    certifies = True

    def __init__(self, *, tau: float, iters: int = 1, center: str = "median") -> None:
        self.tau = _positive_param("tau", tau, allow_inf=True)
        self.iters = _int_param("iters", iters, minimum=1)
        if center not in _CENTERS:
            raise ValueError(f"center = {center!r}: must be one of {', '.join(_CENTERS)}")
        self.center = center

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        certify = self._certifying_on(x)
        if self.center == "median":
            v0 = coordinatewise_median(x, certify=certify)
        else:
            if certify:
                _check_certified(_abs_max(x), x)
            v0 = x.mean(dim=0)
        return self._iterate(x, v0)

    def from_center(self, x: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """The ``iters`` clipping steps starting from ``v0`` (shape ``[d]``, finite)."""
        who = "centered_clipping"
        n, d = _check_stack(x, who)
        if v0.shape != (d,):
            raise ValueError(f"{who}: center has shape {tuple(v0.shape)}, expected ({d},)")
        if not bool(torch.isfinite(v0).all()):
            raise ValueError(f"{who}: the center v0 must be finite")
        x, self.last_dropped, amax = _finite_rows(x, who)
        y, s = _safe_view(x, max(amax, _finite_abs_max(v0)))
        if y is x:
            return self._iterate(x, v0).to(x.dtype)
        self._unit = s
        try:
            out = self._iterate(y, v0.to(device=y.device, dtype=torch.float64) * (1.0 / s))
        finally:
            self._unit = 1.0
        return _unscale(out, s, x.dtype)

    def _iterate(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cdt = _compute_dtype(x.dtype)
        tau = self.tau / self._unit
        v = v.to(device=x.device, dtype=cdt)
        for _ in range(self.iters):
            s = _clip_scales(_distances_to(x, v), tau)  # float64 [n]
            # v + mean_i s_i (x_i - v) = v (1 - sum(s)/n) + (s @ x) / n: no [n, d] temporary
            v = v * (1.0 - float(s.sum()) / n) + _weighted_sum(s / n, x)
        return v


# --------------------------------------------------------------------------- pre-aggregation


@_register(
    PRE_AGGREGATORS, "nnm", "nearest-neighbour mixing: x_i <- mean of its n-f nearest inputs (itself included)"
)
class NearestNeighborMixing(HonestMinority, PreAggregator):
    """Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan,
    "Fixing by Mixing", AISTATS 2023): ``x_i <- mean of the n - f inputs nearest to x_i``
    (Euclidean; ``x_i`` itself always included; distance ties go to the lower index).
    ``f`` (keyword-only, required) assumed Byzantine inputs; needs ``n > f``.

    Example (f = 1): ``[0], [1], [10]`` -> ``[0.5], [0.5], [5.5]`` (10's nearest other is 1).

    Hostile inputs: non-finite rows are dropped and do not come back (the output has one row per
    finite input; ``f`` lowered only if the rest no longer allows it). Distances and the mixing
    run on the scaled stack, so every output row is finite. The mixing is one dense
    ``[n, n] @ [n, d]`` product, which is safe here: every row that reaches it is finite and
    scaled, so a zero weight always meets a finite value and contributes an exact 0 (no row can
    spread to rows that do not select it). Not an aggregator on its own: a far row still
    reaches the outputs whose ``n - f`` nearest include it; the following aggregator does the rest.
    """

    guarded = True
    certifies = True


    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return _mix_rows(self._mixing(x, self._gram_distances(x, self._fit_f(x.shape[0]))), x)

    def _mixing(self, x: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """``[n, n]`` in the compute dtype, from the squared distances ``d2`` of the rows of
        ``x`` (overwritten): row ``i`` holds ``1 / (n - f)`` at the ``n - f`` inputs nearest to
        ``x_i``, so that the step's output is ``mix @ x``."""
        n = x.shape[0]
        k = n - self._fit_f(n)
        d2.fill_diagonal_(-1.0)  # itself first
        nearest = torch.sort(d2, dim=1, stable=True).indices[:, :k]
        return torch.zeros((n, n), dtype=_compute_dtype(x.dtype), device=x.device).scatter_(1, nearest, 1.0 / k)

    def _call_then(self, agg: Aggregator, x: torch.Tensor, known_bad: int) -> torch.Tensor:
        """This step, then ``agg`` on its output (a :class:`Pipeline`'s last two parts). When
        ``agg``'s result is a combination of its input rows (:meth:`Aggregator._row_coefficients`)
        and the rows are ordinary (none dropped, no guarded path), the mixed rows are never
        formed: their centred Gram matrix is ``mix G mix^T`` for this step's own ``G`` (the rows
        of ``mix`` sum to 1, so the centre stays), ``agg`` finds its coefficients ``a`` over
        them, and the result is one weighted sum of the input rows, ``(mix^T a)^T x``: no
        ``[n, n] @ [n, d]`` product, no ``[n, d]`` output, no pass of ``agg`` over it. The same
        value up to the order of the sums. Otherwise (and when ``agg`` returns None) the mixed
        rows go to ``agg`` as in the pipeline's general case. Hostile inputs, ``last_dropped``
        and errors as there."""
        fused = [False]

        def compute(y: torch.Tensor) -> torch.Tensor:
            fused[0] = False
            if self._known_bad or self._guarded_call:
                return self._apply(y)
            n = y.shape[0]
            agg._check_n(n)
            full = _proven_gram(y, y[:_centre_rows(n, self._fit_f(n))], finite=True,
                                certify_for=y if self._certifying_on(y) else None, with_centre=agg._row_centre)
            rg = _RowGram.of(full, with_centre=agg._row_centre)
            mix = self._mixing(y, _sq_distances_from_gram(rg.gram))
            a = agg._row_coefficients(rg.mixed(mix))
            if a is None:
                return _mix_rows(mix, y)
            fused[0] = True
            return _weighted_sum(mix.to(torch.float64).T @ a, y)

        out = self._run(x, f"pre-aggregation step {self.name!r}", compute, known_bad)
        if fused[0]:
            agg.last_dropped = 0  # the mixed rows are finite: agg would drop none
            return out
        return agg._call(out, known_bad + self.last_dropped)


def _mix_rows(mix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mix @ x`` in column chunks, in the dtype of ``x`` (computed in ``mix``'s)."""
    out = torch.empty_like(x)
    for sl in _column_slices(x.shape[1]):
        out[:, sl] = mix @ x[:, sl].to(mix.dtype)
    return out


@_register(PRE_AGGREGATORS, "clip_to_center", "x_i <- c + clip(x_i - c, tau), c the coordinate-wise median")
class ClipToCenter(PreAggregator):
    """Bounded-norm pre-processing (in the spirit of centered clipping):
    ``x_i <- c + clip(x_i - c, tau)`` with ``c`` the coordinate-wise median and
    ``clip(z, tau) = z * min(1, tau / ||z||)``. ``tau`` (keyword-only, required) > 0.

    Example (tau = 1): ``[0], [1], [10]``: c = 1 -> ``[0], [1], [2]``.

    Hostile inputs: non-finite rows are dropped and do not come back (one output row per finite
    input). Distances are computed on the scaled stack (``tau`` scaled with it), so every output
    row is finite and, for finite ``tau``, within ``tau`` of the coordinate-wise median (which
    lies within the honest rows' range when fewer than half of the rows are corrupted).
    """

    guarded = True

    def __init__(self, *, tau: float) -> None:
        self.tau = _positive_param("tau", tau, allow_inf=True)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        cdt = _compute_dtype(x.dtype)
        c = coordinatewise_median(x).to(cdt)
        s = _clip_scales(_distances_to(x, c), self.tau / self._unit).to(cdt)[:, None]
        out = torch.empty_like(x)
        for sl in _column_slices(x.shape[1]):
            out[:, sl] = c[sl] + s * (x[:, sl].to(cdt) - c[sl])
        return out


# --------------------------------------------------------------------------- pipeline + factory


class Pipeline:
    """Pre-aggregation steps applied in order, then an aggregator: ``[n, d] -> [d]``.

    Hostile inputs: each step drops the non-finite rows it receives (see the module
    docstring); rows dropped by a step count as known-bad for the later ones (an assumed ``f``
    that no longer fits is lowered, never below ``f`` minus the dropped count).
    ``last_dropped`` is the total of the last call.

    Speed: when the last step is nearest-neighbour mixing and the aggregator one of the rules
    whose result is a combination of rows (mean, Krum, Multi-Krum, geometric median), the mixed
    rows are not formed on ordinary inputs: the rule runs on their Gram matrix and the result
    is one weighted sum of the step's input rows
    (:meth:`NearestNeighborMixing._call_then`; the same value up to the order of the sums)."""

    last_dropped: int = 0

    def __init__(self, pre: Sequence[PreAggregator], aggregator: Aggregator) -> None:
        self.pre = tuple(pre)
        self.aggregator = aggregator

    @property
    def name(self) -> str:
        return "+".join([p.name for p in self.pre] + [self.aggregator.name])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        known = 0
        agg = self.aggregator
        last = self.pre[-1] if self.pre else None
        if type(last) is NearestNeighborMixing and "_row_coefficients" in vars(type(agg)):
            # a combination of the mixed rows is one of the step's input rows (see _call_then);
            # only for rules whose own class defines it (a subclass may compute something else)
            for step in self.pre[:-1]:
                x = step._call(x, known) if isinstance(step, _Component) else step(x)
                known += getattr(step, "last_dropped", 0)
            out = last._call_then(agg, x, known)
            self.last_dropped = known + last.last_dropped + agg.last_dropped
            return out
        for step in self.pre:
            x = step._call(x, known) if isinstance(step, _Component) else step(x)
            known += getattr(step, "last_dropped", 0)
        out = agg._call(x, known) if isinstance(agg, _Component) else agg(x)
        self.last_dropped = known + getattr(agg, "last_dropped", 0)
        return out

    def __repr__(self) -> str:
        return f"Pipeline(pre={list(self.pre)!r}, aggregator={self.aggregator!r})"


def accepted_params(cls: type) -> list[str]:
    """Keyword parameter names of a component's constructor."""
    sig = inspect.signature(cls.__init__)
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _required_params(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]


def make_aggregator(name: str, *, pre: Sequence[str] = (), **params: Any) -> Aggregator | Pipeline:
    """Build an aggregator (or a :class:`Pipeline` when ``pre`` names pre-aggregation steps).

    Each parameter goes to every component that accepts it (so ``f`` reaches both ``nnm`` and
    ``krum``); a qualified key ``"<component>.<param>"`` (e.g. ``**{"clip_to_center.tau": 5}``)
    reaches only that component. Unknown names raise ``KeyError``, unknown or missing
    parameters ``ValueError``; both list what is allowed.
    """
    agg_cls = AGGREGATORS.get(name)
    if isinstance(pre, str):
        pre = (pre,)
    pre_names = list(pre)
    if len(set(pre_names)) != len(pre_names):
        raise ValueError(f"pre = {pre_names}: a pre-aggregation step is listed twice")
    pre_classes = [PRE_AGGREGATORS.get(p) for p in pre_names]
    components = [(p, c) for p, c in zip(pre_names, pre_classes)] + [(name, agg_cls)]
    kwargs: dict[str, dict[str, Any]] = {comp: {} for comp, _ in components}
    accepts = {comp: accepted_params(cls) for comp, cls in components}
    unknown = []
    for key, value in params.items():
        if "." in key:
            comp, _, pname = key.partition(".")
            if comp not in kwargs or pname not in accepts[comp]:
                unknown.append(key)
            else:
                kwargs[comp][pname] = value
            continue
        takers = [comp for comp, _ in components if key in accepts[comp]]
        if not takers:
            unknown.append(key)
        for comp in takers:
            kwargs[comp].setdefault(key, value)
    if unknown:
        allowed = "; ".join(f"{comp}: {', '.join(accepts[comp]) or '(none)'}" for comp, _ in components)
        raise ValueError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for aggregator {name!r}; accepted: {allowed}"
        )
    for comp, cls in components:
        missing = [p for p in _required_params(cls) if p not in kwargs[comp]]
        if missing:
            raise ValueError(
                f"{comp!r} needs parameter(s) {', '.join(missing)}; it accepts: {', '.join(accepts[comp])}"
            )
    agg = agg_cls(**kwargs[name])
    if not pre_names:
        return agg
    return Pipeline([cls(**kwargs[p]) for p, cls in zip(pre_names, pre_classes)], agg)
