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

Inputs are expected to be finite: drop non-finite messages before aggregating. A distance that
involves a non-finite input counts as +inf, so Krum and Multi-Krum never select such an input
(while n - f - 2 finite neighbours exist), but averaging steps (mean, Weiszfeld, clipping,
NNM's mixing) propagate inf/NaN.

Implementation notes (memory and speed for n ~ 1000, d ~ 1e6):

- pairwise distances come from one Gram matrix ``G = Xc Xc^T`` accumulated in float64 over
  column chunks, ``D_ij = G_ii + G_jj - 2 G_ij`` clamped at 0. Each chunk is first centred on
  its coordinate-wise (lower) median: distances are unchanged, but the cancellation error of
  the Gram formula then scales with the spread of the honest majority rather than with the
  norms of the vectors (or of far outliers);
- coordinate-wise rules (median, trimmed mean) and the distance-to-a-point passes of the
  iterative rules work on column chunks of :data:`CHUNK_COLUMNS` columns, so temporaries stay
  at ``n x CHUNK_COLUMNS`` instead of ``n x d``.
"""
from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence

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


# --------------------------------------------------------------------------- shared kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 computed as is; half precisions are computed in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def coordinatewise_median(x: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median of ``[n, d]``; for even ``n`` the midpoint of the two middle
    values (``torch.median`` alone returns the lower one). Column-chunked."""
    n, d = _check_stack(x, "coordinatewise_median")
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for sl in _column_slices(d):
        c = x[:, sl]
        lower = c.median(dim=0).values
        if n % 2:
            out[sl] = lower
        else:  # the upper middle value is minus the lower median of -c
            upper = c.neg().median(dim=0).values.neg_()
            out[sl] = 0.5 * lower + 0.5 * upper
    return out


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` float64 squared Euclidean distances by the Gram identity
    ``||a - b||^2 = <a, a> + <b, b> - 2 <a, b>``.

    Column chunks are centred on their lower coordinate median (NaN ignored; an input value,
    so integer data stay exact), multiplied in the input precision (float32 for half types)
    and summed in float64; the Gram matrix is symmetrised, negatives from rounding are clamped to 0 and
    the diagonal is exactly 0. Distances involving a non-finite input are +inf."""
    n, d = _check_stack(x, "pairwise_sq_distances")
    cdt = _compute_dtype(x.dtype)
    gram = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    for sl in _column_slices(d):
        c = x[:, sl].to(cdt)
        center = c.nanmedian(dim=0).values.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        c = c - center
        gram += (c @ c.T).to(torch.float64)
    gram = 0.5 * (gram + gram.T)
    sq = gram.diagonal().clone()
    dist = (sq[:, None] + sq[None, :]).sub_(gram, alpha=2.0).clamp_min_(0.0)
    dist.nan_to_num_(nan=math.inf)  # a non-finite input is infinitely far from everything
    dist.fill_diagonal_(0.0)
    return dist


def distances_to(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[n]`` float64 Euclidean distances ``||x_i - z||``, computed directly (no Gram
    cancellation) chunk by chunk."""
    n, d = x.shape
    cdt = _compute_dtype(x.dtype)
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    zc = z.to(cdt)
    for sl in _column_slices(d):
        part = torch.cdist(x[:, sl].to(cdt), zc[None, sl], compute_mode="donot_use_mm_for_euclid_dist")
        sq += part[:, 0].to(torch.float64).square()
    return sq.sqrt_()


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


class _Component:
    name: ClassVar[str] = "?"

    def params(self) -> dict[str, Any]:
        """The constructor parameters of this instance (for logs and reprs)."""
        return {k: getattr(self, k) for k in accepted_params(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Aggregator(_Component):
    """``[n, d] -> [d]``. Subclasses implement ``_aggregate`` and, if they need one, ``_check_n``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _ = _check_stack(x, f"aggregator {self.name!r}")
        self._check_n(n)
        return self._aggregate(x).to(x.dtype)

    def _check_n(self, n: int) -> None:
        pass

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PreAggregator(_Component):
    """``[n, d] -> [n, d]``, applied before an aggregator (see :class:`Pipeline`)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _ = _check_stack(x, f"pre-aggregation step {self.name!r}")
        self._check_n(n)
        return self._apply(x).to(x.dtype)

    def _check_n(self, n: int) -> None:
        pass

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_f_below_n(who: str, n: int, f: int) -> None:
    if f >= n:
        raise ValueError(f"{who}: f = {f} assumed Byzantine inputs but only n = {n} inputs; needs n > f")


# --------------------------------------------------------------------------- aggregators


@_register(AGGREGATORS, "mean", "plain average (not robust)")
class Mean(Aggregator):
    """``mean_i x_i``.

    Example: ``[[0, 0], [2, 4]] -> [1, 2]``.
    """

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=0)


def weiszfeld(
    x: torch.Tensor, *, nu: float = 1e-6, tol: float = 1e-7, max_iter: int = 100
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld iteration for ``argmin_z sum_i ||x_i - z||`` (Pillutla et al. 2022).

    Returns ``(z, iterations)``. ``z`` starts at the mean; each step sets
    ``z <- sum_i b_i x_i / sum_i b_i`` with ``b_i = 1 / max(nu, ||x_i - z||)`` and the loop stops
    when ``||z_new - z|| <= tol * max(||z||, tiny)`` or after ``max_iter`` steps. Weights and
    norms are float64; the weighted sums run in the input precision (float32 for half types)."""
    cdt = _compute_dtype(x.dtype)
    z = x.to(cdt).mean(dim=0)
    it = 0
    while it < max_iter:
        it += 1
        b = 1.0 / distances_to(x, z).clamp_min(nu)
        z_new = _weighted_sum(b / b.sum(), x)
        step = torch.linalg.vector_norm(z_new.to(torch.float64) - z.to(torch.float64)).item()
        scale = max(torch.linalg.vector_norm(z.to(torch.float64)).item(), _TINY)
        z = z_new
        if step <= tol * scale:
            break
    return z, it


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
        segment (layer by layer, Frobenius norm per layer, as in BR-MTRL) and concatenate.

    The breakdown point is 1/2: fewer than half of the inputs, however far, move ``z`` a
    bounded amount. ``last_iterations`` holds the step count(s) of the last call.

    Example: ``[[0, 0], [1, 0], [0, 1], [100, 100]]`` -> ``[0.5, 0.5]``, where the unit vectors
    towards the four inputs sum to zero (the far point pulls no harder than a near one),
    whereas the mean is ``[25.25, 25.25]``.
    """

    def __init__(
        self,
        *,
        nu: float = 1e-6,
        tol: float = 1e-7,
        max_iter: int = 100,
        segments: Optional[Sequence[int]] = None,
    ) -> None:
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
        parts, self.last_iterations, start = [], [], 0
        for size in segments:
            z, it = weiszfeld(x[:, start:start + size], nu=self.nu, tol=self.tol, max_iter=self.max_iter)
            parts.append(z)
            self.last_iterations.append(it)
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def krum_scores(x: torch.Tensor, f: int, dist: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Krum scores ``s_i = sum of the n - f - 2 smallest ||x_i - x_j||^2 over j != i`` (float64)."""
    n = x.shape[0]
    d2 = pairwise_sq_distances(x) if dist is None else dist.clone()
    d2.fill_diagonal_(math.inf)
    k = n - f - 2
    return torch.sort(d2, dim=1).values[:, :k].sum(dim=1)


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
    """

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _check_n(self, n: int) -> None:
        _check_krum_n("krum", n, self.f)

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        scores = krum_scores(x, self.f)
        return x[int(torch.argmin(scores))].clone()


@_register(AGGREGATORS, "multi_krum", "Multi-Krum: mean of the m inputs with the smallest Krum scores")
class MultiKrum(Aggregator):
    """Multi-Krum (Blanchard et al., NeurIPS 2017): the average of the ``m`` inputs with the
    lowest Krum scores (see :class:`Krum`; ties in score go to the lower index).

    Parameters (keyword-only): ``f`` (required) assumed Byzantine inputs, ``m = None`` how many
    to average, in ``[1, n - f]`` (None: ``n - f``). Requires ``n >= 2f + 3``. ``m = 1`` is Krum.

    Example (f = 1, m = 2): ``[0], [1], [2], [3], [100]``: scores 5, 2, 2, 5, ... -> mean of
    ``x_1, x_2`` = ``[1.5]``.
    """

    def __init__(self, *, f: int, m: Optional[int] = None) -> None:
        self.f = _int_param("f", f, minimum=0)
        self.m = None if m is None else _int_param("m", m, minimum=1)

    def _check_n(self, n: int) -> None:
        _check_krum_n("multi_krum", n, self.f)
        if self.m is not None and not 1 <= self.m <= n - self.f:
            raise ValueError(
                f"multi_krum: m = {self.m} must lie in [1, n - f] = [1, {n - self.f}] (n = {n}, f = {self.f})"
            )

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        m = n - self.f if self.m is None else self.m
        scores = krum_scores(x, self.f)
        keep = torch.sort(scores, stable=True).indices[:m]
        out = torch.empty(d, dtype=x.dtype, device=x.device)
        for sl in _column_slices(d):
            out[sl] = x[:, sl].index_select(0, keep).mean(dim=0)
        return out


@_register(AGGREGATORS, "coordinate_median", "coordinate-wise median (midpoint of the middle two for even n)")
class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018):
    ``z_j = median_i x_ij``; for even ``n`` the midpoint of the two middle values.

    Example: ``[[1, 5], [3, 0], [2, 7], [9, 1]]`` -> ``[(2+3)/2, (1+5)/2] = [2.5, 3]``.
    """

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return coordinatewise_median(x)


@_register(AGGREGATORS, "trimmed_mean", "coordinate-wise trimmed mean: drop the f largest and f smallest")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the ``f``
    largest and ``f`` smallest values and average the remaining ``n - 2f``. Requires
    ``n > 2f``; ``f`` (keyword-only, required) is the number of values trimmed at each end.

    Example (f = 1): ``[1], [2], [3], [4], [100]`` -> mean of 2, 3, 4 = ``[3]``.
    """

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _check_n(self, n: int) -> None:
        if n <= 2 * self.f:
            raise ValueError(f"trimmed_mean: needs n > 2f, got n = {n} and f = {self.f}")

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        if self.f == 0:
            return x.mean(dim=0)
        out = torch.empty(d, dtype=x.dtype, device=x.device)
        for sl in _column_slices(d):
            s = x[:, sl].T.contiguous().sort(dim=1).values  # [chunk, n], rows sorted
            out[sl] = s[:, self.f:n - self.f].mean(dim=1)
        return out


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
    """

    def __init__(self, *, tau: float, iters: int = 1, center: str = "median") -> None:
        self.tau = _positive_param("tau", tau, allow_inf=True)
        self.iters = _int_param("iters", iters, minimum=1)
        if center not in _CENTERS:
            raise ValueError(f"center = {center!r}: must be one of {', '.join(_CENTERS)}")
        self.center = center

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        v0 = coordinatewise_median(x) if self.center == "median" else x.mean(dim=0)
        return self._iterate(x, v0)

    def from_center(self, x: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """The ``iters`` clipping steps starting from ``v0`` (shape ``[d]``)."""
        n, d = _check_stack(x, "centered_clipping")
        if v0.shape != (d,):
            raise ValueError(f"centered_clipping: center has shape {tuple(v0.shape)}, expected ({d},)")
        return self._iterate(x, v0).to(x.dtype)

    def _iterate(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cdt = _compute_dtype(x.dtype)
        v = v.to(device=x.device, dtype=cdt)
        for _ in range(self.iters):
            s = _clip_scales(distances_to(x, v), self.tau)  # float64 [n]
            # v + mean_i s_i (x_i - v) = v (1 - sum(s)/n) + (s @ x) / n: no [n, d] temporary
            v = v * (1.0 - float(s.sum()) / n) + _weighted_sum(s / n, x)
        return v


# --------------------------------------------------------------------------- pre-aggregation


@_register(
    PRE_AGGREGATORS, "nnm", "nearest-neighbour mixing: x_i <- mean of its n-f nearest inputs (itself included)"
)
class NearestNeighborMixing(PreAggregator):
    """Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan,
    "Fixing by Mixing", AISTATS 2023): ``x_i <- mean of the n - f inputs nearest to x_i``
    (Euclidean; ``x_i`` itself always included; distance ties go to the lower index).
    ``f`` (keyword-only, required) assumed Byzantine inputs; needs ``n > f``.

    Example (f = 1): ``[0], [1], [10]`` -> ``[0.5], [0.5], [5.5]`` (10's nearest other is 1).
    """

    def __init__(self, *, f: int) -> None:
        self.f = _int_param("f", f, minimum=0)

    def _check_n(self, n: int) -> None:
        _check_f_below_n("nnm", n, self.f)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        k = n - self.f
        d2 = pairwise_sq_distances(x)
        d2.fill_diagonal_(-1.0)  # itself first
        nearest = torch.sort(d2, dim=1, stable=True).indices[:, :k]
        cdt = _compute_dtype(x.dtype)
        mix = torch.zeros((n, n), dtype=cdt, device=x.device).scatter_(1, nearest, 1.0 / k)
        out = torch.empty_like(x)
        for sl in _column_slices(d):
            out[:, sl] = mix @ x[:, sl].to(cdt)
        return out


@_register(PRE_AGGREGATORS, "clip_to_center", "x_i <- c + clip(x_i - c, tau), c the coordinate-wise median")
class ClipToCenter(PreAggregator):
    """Bounded-norm pre-processing (in the spirit of centered clipping):
    ``x_i <- c + clip(x_i - c, tau)`` with ``c`` the coordinate-wise median and
    ``clip(z, tau) = z * min(1, tau / ||z||)``. ``tau`` (keyword-only, required) > 0.

    Example (tau = 1): ``[0], [1], [10]``: c = 1 -> ``[0], [1], [2]``.
    """

    def __init__(self, *, tau: float) -> None:
        self.tau = _positive_param("tau", tau, allow_inf=True)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        cdt = _compute_dtype(x.dtype)
        c = coordinatewise_median(x).to(cdt)
        s = _clip_scales(distances_to(x, c), self.tau).to(cdt)[:, None]
        out = torch.empty_like(x)
        for sl in _column_slices(x.shape[1]):
            out[:, sl] = c[sl] + s * (x[:, sl].to(cdt) - c[sl])
        return out


# --------------------------------------------------------------------------- pipeline + factory


class Pipeline:
    """Pre-aggregation steps applied in order, then an aggregator: ``[n, d] -> [d]``."""

    def __init__(self, pre: Sequence[PreAggregator], aggregator: Aggregator) -> None:
        self.pre = tuple(pre)
        self.aggregator = aggregator

    @property
    def name(self) -> str:
        return "+".join([p.name for p in self.pre] + [self.aggregator.name])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.pre:
            x = step(x)
        return self.aggregator(x)

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
