"""Byzantine-robust gossip rules: each receiver combines its own model with what its
in-neighbours sent through a robust rule instead of a plain weighted average.

Every rule here is a :class:`~p2pmtl.rules.weights.WeightRule` on the general path (its
``scores`` give the mixing weights ``W``) whose :meth:`~p2pmtl.rules.weights.WeightRule.combine_step`
returns the :class:`~p2pmtl.rules.combine.CombineStep` that does the robust part. They run as
lanes beside ``noncoop``, ``average``, ``loss`` and ``distance`` in one run::

    rules.names = ["loss", "clipped_gossip", "cs_plus", "ios", "bridge_trimmed_mean", "bridge_median"]
    rules.params = { ios = { b = 2 }, clipped_gossip = { tau = "adaptive", b = 1 } }

| rule (= its combine step) | new model of receiver k | parameters |
|---|---|---|
| ``clipped_gossip`` | psi_k + sum_l W_lk clip(psi_l - psi_k, tau_k) | tau (a real or "adaptive"), b, mixing |
| ``cs_plus`` | the same, tau_k at a weight quantile of the distances | b, mixing |
| ``ios`` | weighted mean after b rounds of dropping the farthest neighbour | b, mixing |
| ``bridge_trimmed_mean`` | coordinate-wise trimmed mean over N_k and k | b |
| ``bridge_median`` | coordinate-wise median over N_k and k | (none) |
| ``node_aggregator`` | a registered aggregator on the stack of N_k and k | aggregator, its parameters |

(``clipped_gossip`` with a fixed ``tau`` uses the combine step ``clipped`` of
:mod:`p2pmtl.rules.combine`; with ``tau = "adaptive"`` the step ``clipped_adaptive`` below.)

The conventions shared by all of them are these.

- ``N_k`` are k's in-neighbours whose message arrived and is finite (``valid``); a message that
  did not arrive or is not finite never enters any of these rules: it is absent, exactly as if
  the edge did not exist this round. The receiver's own model psi_k is always present.
- ``W`` (``mixing``): ``"metropolis"`` gives W_lk = 1 / (1 + max(d_k, d_l)) for l != k and
  W_kk = 1 - sum of the others, d = in-degree without the self loop; ``"uniform"`` gives
  1 / (1 + d_k) to k and to each of its graph neighbours. ``b`` is the number of Byzantine
  neighbours a receiver is meant to tolerate (an integer >= 0, never inferred).
- Vectorized over every receiver and run (the engine calls a lane's step once per round on
  that lane's edge list; lanes are few): segment sums over the receiver-sorted edge list
  and padded neighbourhoods ``[N, max in-degree, D]`` built with one scatter (no Python loop
  over nodes or edges; IOS loops over its b rounds). The coordinate-wise rules process the
  model in column chunks so that the padded block stays near 2^22 entries. Only the generic
  ``node_aggregator`` loops over receivers (see there).

The sources are He, Karimireddy, Jaggi, "Byzantine-robust decentralized learning via ClippedGossip"
(2022, arXiv:2202.01545); Gaucher, Dieuleveut, Hendrikx, "Unified breakdown analysis for
Byzantine robust gossip" (ICML 2025, arXiv:2410.10418), whose reference implementation
(github.com/renaudgaucher/Byzantine-Robust-Gossip, ``aggregators/robust_gossip.py`` and
``aggregators/ios.py``) fixes the details of CS+, of the practical adaptive radius of He et al.
and of IOS; Wu, Chen, Ling, "Byzantine-resilient decentralized stochastic optimization with
robust aggregation rules" (IEEE TSP 2023) for IOS; Fang, Yang, Bajwa, "BRIDGE: Byzantine-
resilient decentralized gradient descent" (IEEE TSIPN 2022) for the trimmed mean and median
(reference code: github.com/INSPIRE-Lab-US/Byzantine-resilient-distributed-learning, which
screens the neighbourhood *including* the receiver itself).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import torch

from ..core.edges import EdgeIndex
from .combine import COMBINES, CombineContext, CombineStep
from .weights import RULES, RuleContext, WeightRule

_MIXINGS = ("metropolis", "uniform")
_BLOCK = 2**22  # entries of one padded [N, max_deg, columns] block of the coordinate-wise rules


# --------------------------------------------------------------------------- validation


def _count(who: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{who}: {name} = {value!r}; allowed: an integer >= 0")
    return int(value)


def _mixing(who: str, mixing: Any) -> str:
    if mixing not in _MIXINGS:
        raise ValueError(f"{who}: mixing = {mixing!r}; allowed: 'metropolis', 'uniform'")
    return mixing


# --------------------------------------------------------------------------- shared kernels


def mixing_weights(edges: EdgeIndex, mixing: str) -> torch.Tensor:
    """Nominal off-diagonal mixing weights ``[E]`` (float64, 0 on self edges): Metropolis
    W_lk = 1 / (1 + max(d_k, d_l)) or uniform 1 / (1 + d_k), d the in-degree without the self
    loop."""
    e = edges
    is_self = e.src == e.dst
    deg = (e.in_degree() - 1).to(torch.float64)  # neighbours without the self loop
    if mixing == "uniform":
        return torch.where(is_self, 0.0, 1.0 / (1.0 + deg[e.dst]))
    return torch.where(is_self, 0.0, 1.0 / (1.0 + torch.maximum(deg[e.dst], deg[e.src])))


def _present(edges: EdgeIndex, valid: Optional[torch.Tensor], messages: torch.Tensor) -> torch.Tensor:
    """Edges whose message enters the rule: valid (arrived and finite) neighbours and the own edge."""
    is_self = edges.src == edges.dst
    ok = torch.isfinite(messages).all(1) if not math.isfinite(float(messages.sum())) else None
    if valid is not None:
        ok = valid if ok is None else ok & valid
    if ok is None:
        return torch.ones_like(is_self)
    return ok | is_self  # (a non-finite own model passes as it is, as in the other combine steps)


class _Slots:
    """Where every edge sits in its receiver's padded neighbourhood: ``pos [E]`` (from 0, in
    sender order) and ``width`` (the largest in-degree). Cached per edge list."""

    def __init__(self) -> None:
        self._edges: Optional[EdgeIndex] = None
        self.pos = torch.empty(0, dtype=torch.long)
        self.width = 0

    def of(self, edges: EdgeIndex) -> "_Slots":
        if edges is not self._edges:
            self.pos = torch.arange(edges.num_edges) - edges.offsets[edges.dst]
            self.width = int(edges.in_degree().max()) if edges.num_edges else 0
            self._edges = edges
        return self


def _pad(edges: EdgeIndex, slots: _Slots, values: torch.Tensor, keep: torch.Tensor, fill: float) -> torch.Tensor:
    """Per-edge values ``[E, ...]`` -> padded ``[N, width, ...]`` (one scatter); edges not in
    ``keep`` and padding hold ``fill``."""
    out = values.new_full((edges.num_nodes, slots.width, *values.shape[1:]), fill)
    idx = torch.nonzero(keep).flatten()
    out[edges.dst[idx], slots.pos[idx]] = values[idx]
    return out


def _tolerance(dtype: torch.dtype, width: int) -> float:
    """Rounding allowance of sums of at most ``width`` weights (weights sum to about 1)."""
    return 8.0 * max(width, 1) * torch.finfo(dtype).eps


def _byzantine_weight(edges: EdgeIndex, slots: _Slots, w: torch.Tensor, present: torch.Tensor, b: int) -> torch.Tensor:
    """delta_k ``[N]``: the sum of the ``b`` largest weights of k's present neighbours (self
    excluded), i.e. the most weight ``b`` Byzantine neighbours can hold; all of them if fewer."""
    if b == 0:
        return w.new_zeros(edges.num_nodes)
    nbr = present & (edges.src != edges.dst)
    pad = _pad(edges, slots, w, nbr, 0.0)
    return torch.topk(pad, min(b, slots.width), dim=1).values.sum(1)


def _weight_beyond(edges: EdgeIndex, slots: _Slots, dist: torch.Tensor, w: torch.Tensor,
                   present: torch.Tensor) -> torch.Tensor:
    """``[E]``: for each edge e of receiver k, the weight of k's present edges strictly farther
    than e, sum over {j present: d_j > d_e} of w_j (order-free: ties count together)."""
    inf = float("inf")
    d = _pad(edges, slots, dist, present, inf)  # [N, W]
    ww = _pad(edges, slots, w, present, 0.0)
    sd, order = torch.sort(d, dim=1, stable=True)
    sw = torch.gather(ww, 1, order)
    suffix = torch.cat([sw.flip(1).cumsum(1).flip(1), sw.new_zeros(sw.shape[0], 1)], 1)  # [:, p] = sum_{q >= p}
    after = torch.searchsorted(sd, d, right=True)  # first slot strictly farther than each entry
    beyond = torch.gather(suffix, 1, after)
    return beyond[edges.dst, slots.pos]


def _clip_combine(ctx: CombineContext, w: torch.Tensor, diff: torch.Tensor, norm: torch.Tensor,
                  tau: torch.Tensor) -> torch.Tensor:
    """psi_k + sum_l w_lk clip(psi_l - psi_k, tau_k)."""
    e = ctx.edges
    scale = torch.clamp(tau[e.dst] / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
    return ctx.own + e.segment_sum((w * scale).unsqueeze(1) * diff)


def _differences(ctx: CombineContext):
    e = ctx.edges
    present = _present(e, ctx.valid, ctx.messages)
    w = torch.where(present, ctx.weights, 0.0)
    msg = torch.where(present.unsqueeze(1), ctx.messages, 0.0)
    diff = msg - torch.index_select(ctx.own, 0, e.dst)
    diff = torch.where((e.src == e.dst).unsqueeze(1), 0.0, diff)
    return present, w, diff, torch.linalg.vector_norm(diff, dim=1)


# --------------------------------------------------------------------------- combine steps


class _RadiusClipping(CombineStep):
    """Self-centred clipping x_k <- psi_k + sum_l w_lk clip(psi_l - psi_k, tau_k) with a radius
    tau_k computed per receiver from the weighted distances (subclasses define ``_radius``)."""

    def __init__(self, who: str, b: int) -> None:
        self.b = _count(who, "b", b)
        self._slots = _Slots()

    def radius(self, ctx: CombineContext) -> torch.Tensor:
        """tau_k ``[N]`` of every receiver."""
        e = ctx.edges
        slots = self._slots.of(e)
        present, w, _, norm = _differences(ctx)
        return self._radius(e, slots, present, w, norm)

    def _radius(self, e, slots, present, w, norm) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e = ctx.edges
        slots = self._slots.of(e)
        present, w, diff, norm = _differences(ctx)
        return _clip_combine(ctx, w, diff, norm, self._radius(e, slots, present, w, norm))


@COMBINES.register("clipped_adaptive", "self-centred clipping, tau_k^2 = (1/delta_k) sum of w d^2 "
                                      "over all but the farthest (He et al. 2022)")
class AdaptiveClipping(_RadiusClipping):
    """Self-centred clipping with the adaptive radius of He, Karimireddy and Jaggi (2022):

        x_k <- psi_k + sum_l w_lk clip(psi_l - psi_k, tau_k),   clip(z, t) = z min(1, t / ||z||),
        tau_k^2 = (1 / delta_k) sum over l in K_k of w_lk ||psi_l - psi_k||^2.

    Their theorem sets tau_k^2 = (1/delta_k) sum over k's *honest* neighbours of
    W_lk E||x_l - x_k||^2, delta_k the Byzantine weight at k; the practical rule (as in the
    reference implementation of Gaucher et al. 2025, ``cs_he``) replaces the unknown honest set
    by K_k = all present neighbours (and k itself, at distance 0) except the farthest ones,
    removed from the far end until their weight reaches delta_k (the removed set is the
    smallest distance-suffix of weight >= delta_k; neighbours at equal distance are removed
    together; that code removes weight > delta_k when a suffix holds exactly delta_k, i.e. one
    neighbour more for uniform weights, which we read as a boundary artefact). delta_k = the
    sum of the ``b`` largest weights w_lk of k's present neighbours (the most weight b
    Byzantine neighbours can hold; all of them if fewer). ``b = 0`` (or a receiver with no
    neighbour) gives delta_k = 0 and tau_k = inf: plain gossip averaging.

    (He et al.'s released code, epfml/byzantine-robust-decentralized-optimizer, with
    ``tau = None`` uses a simpler heuristic, tau_k = the
    second-largest neighbour distance; that is not this rule.)

    Worked example (w = 1/5 on k and four neighbours, b = 1, 1-D): psi_k = 0, neighbours 1, 2,
    3, 10. delta = 1/5 removes the 10; tau^2 = 5 (1/5)(0 + 1 + 4 + 9) = 14, tau = 3.742;
    x_k = (1 + 2 + 3 + 3.742) / 5 = 1.948 (the plain average is 3.2).
    """

    def __init__(self, *, b: int = 1) -> None:
        super().__init__("clipped_adaptive", b)

    def _radius(self, e, slots, present, w, norm):
        delta = _byzantine_weight(e, slots, w, present, self.b)
        beyond = _weight_beyond(e, slots, norm, w, present)
        kept = present & (beyond >= delta[e.dst] - _tolerance(w.dtype, slots.width))
        tau2 = e.segment_sum(torch.where(kept, w * norm * norm, 0.0)) / delta.clamp_min(torch.finfo(w.dtype).tiny)
        return torch.where(delta > 0, tau2.sqrt(), float("inf"))



@COMBINES.register("cs_plus", "CS+ (Gaucher et al. 2025): self-centred clipping at the weight quantile 2 delta_k")
class CSPlusStep(_RadiusClipping):
    """CS+ (Gaucher, Dieuleveut and Hendrikx 2025, the robust summand of CS+-RG): self-centred
    clipping whose radius is a weight quantile of the distances,

        x_k <- psi_k + sum_l w_lk clip(psi_l - psi_k, tau_k),
        tau_k = max { ||psi_l - psi_k|| : l in N_k + k, sum over {j: d_j > d_l} of w_jk >= 2 delta_k },

    i.e. the neighbours farther than tau_k, the smallest distance-suffix of k's neighbourhood
    with weight >= 2 delta_k, are clipped to the largest distance below them (0 if there is
    none; neighbours at equal distance are clipped or kept together). delta_k: the Byzantine
    weight at k, here the sum of the ``b`` largest weights of k's present neighbours (b w for
    uniform weights w, as in the paper's experiments). ``b = 0`` clips nothing: plain gossip
    averaging. Reference implementation: ``cs_plus`` in the authors' repository (communication
    step 1); here ties in distance are resolved by distance value, not by sort position.

    Worked example (w = 1/5 on k and four neighbours, b = 1, 1-D): psi_k = 0, neighbours 1, 2,
    3, 10. 2 delta = 2/5: the weight beyond 0, 1, 2, 3, 10 is 4/5, 3/5, 2/5, 1/5, 0, so
    tau = 2: the 3 and the 10 are clipped to 2 and x_k = (1 + 2 + 2 + 2) / 5 = 1.4.
    """

    def __init__(self, *, b: int = 1) -> None:
        super().__init__("cs_plus", b)

    def _radius(self, e, slots, present, w, norm):
        delta = _byzantine_weight(e, slots, w, present, self.b)
        beyond = _weight_beyond(e, slots, norm, w, present)
        ok = present & (beyond >= 2.0 * delta[e.dst] - _tolerance(w.dtype, slots.width))
        tau = norm.new_full((e.num_nodes,), float("-inf"))
        tau = tau.scatter_reduce(0, e.dst, torch.where(ok, norm, float("-inf")), "amax")
        return tau.clamp_min(0.0)



@COMBINES.register("ios", "IOS (Wu, Chen, Ling 2023): b times drop the neighbour farthest from the weighted "
                          "mean, then average")
class IOSStep(CombineStep):
    """Iterative outlier scissor (Wu, Chen, Ling et al. 2023, "Byzantine-resilient
    decentralized stochastic optimization with robust aggregation rules"). Per receiver k, with
    weights w over R = N_k + {k} (present edges of positive weight):

        repeat b times:  m = sum_{l in R} w_lk psi_l / sum_{l in R} w_lk;
                         remove from R the l != k farthest from m (||psi_l - m||);
        x_k = sum_{l in R} w_lk psi_l / sum_{l in R} w_lk.

    k itself is never removed. A receiver with fewer than ``b`` neighbours loses them all and
    keeps psi_k. Ties in distance: the neighbour with the smallest index goes first. Cost: b
    rounds of two segment sums over the edges. Reference implementation: ``aggregators/ios.py``
    of Gaucher et al.'s repository.

    Worked example (w = 1/5 on k and four neighbours, 1-D): psi_k = 0, neighbours 1, 2, 3, 10.
    b = 1: m = 3.2, the 10 is farthest (6.8) and goes; x_k = (0 + 1 + 2 + 3) / 4 = 1.5.
    b = 2: then m = 1.5, the 3 goes (1.5 vs 0.5, 0.5); x_k = 1.
    """

    def __init__(self, *, b: int = 1) -> None:
        self.b = _count("ios", "b", b)
        self._slots = _Slots()

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e, msg = ctx.edges, ctx.messages
        slots = self._slots.of(e)
        is_self = e.src == e.dst
        present = _present(e, ctx.valid, msg)
        w = torch.where(present, ctx.weights, 0.0)
        msg = torch.where(present.unsqueeze(1), msg, 0.0)
        keep = present & ((w > 0) | is_self)
        starts = e.offsets[:-1]
        for _ in range(self.b):
            wk = torch.where(keep, w, 0.0)
            total = e.segment_sum(wk)
            mean = e.segment_sum(wk.unsqueeze(1) * msg) / total.clamp_min(torch.finfo(w.dtype).tiny).unsqueeze(1)
            dist = torch.linalg.vector_norm(msg - torch.index_select(mean, 0, e.dst), dim=1)
            dist = torch.nan_to_num(dist, nan=float("inf"))  # an unmeasurable neighbour counts as farthest
            cand = keep & ~is_self
            pad = _pad(e, slots, dist, cand, float("-inf"))
            best = pad.argmax(dim=1)  # first maximum: the smallest sender index among ties
            has = torch.gather(pad, 1, best.unsqueeze(1)).squeeze(1) > float("-inf")
            if not bool(has.any()):
                break
            keep = keep.clone()
            keep[(starts + best)[has]] = False
        wk = torch.where(keep, w, 0.0)
        total = e.segment_sum(wk)
        out = e.segment_sum(wk.unsqueeze(1) * msg) / total.clamp_min(torch.finfo(w.dtype).tiny).unsqueeze(1)
        return torch.where((total > 0).unsqueeze(1), out, ctx.own)


def _coordinate_blocks(edges: EdgeIndex, slots: _Slots, d: int) -> Sequence[slice]:
    step = max(1, _BLOCK // max(1, edges.num_nodes * slots.width))
    return [slice(s, min(s + step, d)) for s in range(0, d, step)]


@COMBINES.register("bridge_trimmed_mean",
                   "BRIDGE-T: per coordinate drop the b largest and b smallest of N_k and k, average the rest")
class BridgeTrimmedMeanStep(CombineStep):
    """BRIDGE-T screening (Fang, Yang, Bajwa 2022), coordinate-wise trimmed mean over the
    receiver's neighbourhood *including its own model* (as BRIDGE's reference code does):
    per coordinate j, sort the n_k = |N_k| + 1 values {psi_l[j] : l in N_k + k}, drop the ``b``
    smallest and the ``b`` largest and average the n_k - 2b others,

        x_k[j] = 1 / (n_k - 2b) * sum of the sorted values v_(b+1) ... v_(n_k - b).

    The own value may be trimmed like any other. A receiver with n_k <= 2b (fewer than 2b + 1
    values) keeps psi_k. Unweighted (the rule's weights are not used). Vectorized: padded
    neighbourhoods with +inf padding, one sort per column block.

    Worked example (b = 1): psi_k = (0, 5), neighbours (1, 1), (2, -10), (3, 2), (10, 3). First
    coordinate: 0 1 2 3 10 -> mean(1, 2, 3) = 2; second: -10 1 2 3 5 -> mean(1, 2, 3) = 2;
    x_k = (2, 2).
    """

    def __init__(self, *, b: int = 1) -> None:
        self.b = _count("bridge_trimmed_mean", "b", b)
        self._slots = _Slots()

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e, msg = ctx.edges, ctx.messages
        slots = self._slots.of(e)
        present = _present(e, ctx.valid, msg)
        count = torch.bincount(e.dst[present], minlength=e.num_nodes)  # n_k
        kept = (count - 2 * self.b).clamp_min(0)
        p = torch.arange(slots.width)
        mask = (p >= self.b).unsqueeze(0) & (p.unsqueeze(0) < (count - self.b).unsqueeze(1))  # [N, W]
        out = torch.empty_like(ctx.own)
        for cols in _coordinate_blocks(e, slots, msg.shape[1]):
            s = torch.sort(_pad(e, slots, msg[:, cols], present, float("inf")), dim=1).values
            total = torch.where(mask.unsqueeze(2), s, 0.0).sum(1)
            out[:, cols] = total / kept.clamp_min(1).unsqueeze(1).to(total.dtype)
        return torch.where((kept > 0).unsqueeze(1), out, ctx.own)


@COMBINES.register("bridge_median", "BRIDGE-M: coordinate-wise median of N_k and k")
class BridgeMedianStep(CombineStep):
    """BRIDGE-M screening (Fang, Yang, Bajwa 2022): coordinate-wise median over the receiver's
    neighbourhood *including its own model*: per coordinate j, the median of the
    n_k = |N_k| + 1 values {psi_l[j] : l in N_k + k}; for even n_k the midpoint of the two
    middle values, v_(n_k/2) / 2 + v_(n_k/2 + 1) / 2. Unweighted. Vectorized: padded
    neighbourhoods with +inf padding, one sort per column block.

    Worked example (psi_k = (0, 5), neighbours (1, 1), (2, -10), (3, 2), (10, 3)): the medians
    of 0 1 2 3 10 and of -10 1 2 3 5, x_k = (2, 2); without the last neighbour, (1.5, 1.5).
    """

    def __init__(self) -> None:
        self._slots = _Slots()

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e, msg = ctx.edges, ctx.messages
        slots = self._slots.of(e)
        present = _present(e, ctx.valid, msg)
        count = torch.bincount(e.dst[present], minlength=e.num_nodes)  # >= 1: the own model
        lo, hi = ((count - 1) // 2).unsqueeze(1), (count // 2).unsqueeze(1)
        out = torch.empty_like(ctx.own)
        for cols in _coordinate_blocks(e, slots, msg.shape[1]):
            s = torch.sort(_pad(e, slots, msg[:, cols], present, float("inf")), dim=1).values
            c = s.shape[2]
            a = torch.gather(s, 1, lo.unsqueeze(2).expand(-1, 1, c)).squeeze(1)
            z = torch.gather(s, 1, hi.unsqueeze(2).expand(-1, 1, c)).squeeze(1)
            out[:, cols] = torch.where(lo == hi, a, 0.5 * a + 0.5 * z)
        return out


@COMBINES.register("node_aggregator", "any registered aggregator applied at each receiver to the stack of N_k and k")
class NodeAggregatorStep(CombineStep):
    """A registered robust aggregator (:data:`p2pmtl.robust.aggregators.AGGREGATORS`, e.g.
    ``krum``, ``geometric_median``, ``multi_krum``, ``centered_clipping``, with optional
    pre-aggregation steps ``pre``) applied at every receiver to the stack of its present
    neighbours' messages *and its own model*, in sender order: x_k = F([psi_l : l in N_k + k]).
    Unweighted. The aggregator's own parameters are in ``aggregator_params`` (``{ f = 1 }``;
    the rule ``node_aggregator`` also takes them directly as its own parameters).

    Cost. Receivers are grouped by neighbourhood size; an aggregator with a callable attribute
    ``batched`` (``[G, n, D] -> [G, D]``) is called once per group. The built-in mean,
    coordinate median, trimmed mean, Krum, Multi-Krum and geometric median aggregate all the
    group's ordinary stacks (finite, below the overflow bound) in one batched call, the same
    values up to rounding (:meth:`~p2pmtl.robust.aggregators.Aggregator._batched`); other
    aggregators, pipelines and stacks with huge entries take one call per receiver (a Python
    loop over receivers, per step and lane; use the vectorized ``bridge_*`` rules for large
    graphs). A receiver whose neighbourhood the aggregator refuses (``ValueError``, e.g. Krum's n >= 2f + 3) keeps psi_k; ``refused``
    counts them in the last call (a warning is issued once).

    Worked example (``aggregator = "trimmed_mean"``, ``f = 1``), psi_k = (0, 5), neighbours
    (1, 1), (2, -10), (3, 2), (10, 3) -> (2, 2), as ``bridge_trimmed_mean`` with b = 1.
    """

    def __init__(self, *, aggregator: Optional[str] = None, pre: Sequence[str] = (),
                 aggregator_params: Optional[dict] = None) -> None:
        from ..robust.aggregators import AGGREGATORS, make_aggregator

        who = "node_aggregator"
        if not isinstance(aggregator, str) or aggregator not in AGGREGATORS:
            raise ValueError(f"{who}: aggregator = {aggregator!r}; allowed: {', '.join(AGGREGATORS.names())}")
        if aggregator_params is not None and not isinstance(aggregator_params, dict):
            raise ValueError(f"{who}: aggregator_params = {aggregator_params!r}; allowed: a table of parameters")
        merged = dict(aggregator_params or {})
        try:
            self._agg = make_aggregator(aggregator, pre=pre, **merged)
        except (KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"{who}: {msg}") from None
        self.aggregator = aggregator
        self.pre = [pre] if isinstance(pre, str) else list(pre)
        self.aggregator_params = merged
        self.refused = 0
        self._warned = False

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e, msg = ctx.edges, ctx.messages
        present = _present(e, ctx.valid, msg)
        count = torch.bincount(e.dst[present], minlength=e.num_nodes)
        before = torch.cumsum(present.to(torch.long), 0) - present.to(torch.long)
        rank = before - before[e.offsets[:-1]][e.dst]  # place among the receiver's present edges
        out = ctx.own.clone()
        batched = getattr(self._agg, "batched", None)
        refused = 0
        for size in torch.unique(count).tolist():
            rows = torch.nonzero(count == size).flatten()
            row_of = torch.full((e.num_nodes,), -1, dtype=torch.long)
            row_of[rows] = torch.arange(rows.numel())
            sel = torch.nonzero(present & (count[e.dst] == size)).flatten()
            idx = torch.empty((rows.numel(), size), dtype=torch.long)
            idx[row_of[e.dst[sel]], rank[sel]] = sel
            stack = msg[idx]  # [G, size, D]
            if callable(batched):
                out[rows] = batched(stack).to(out.dtype)
                continue
            left, refused_here = self._batched_ordinary(stack, rows, size, out)
            refused += refused_here
            for i in left:
                try:
                    out[int(rows[i])] = self._agg(stack[i])
                except ValueError:
                    refused += 1
        self.refused = refused
        if refused and not self._warned:
            self._warned = True
            warnings.warn(f"node_aggregator {self.aggregator!r}: {refused} receiver(s) kept their own model "
                          f"(the aggregator refused their neighbourhood size)", RuntimeWarning, stacklevel=2)
        return out

    def _batched_ordinary(self, stack: torch.Tensor, rows: torch.Tensor, size: int,
                          out: torch.Tensor) -> tuple[list[int], int]:
        """Aggregate, in one call, the receivers of one neighbourhood size whose stacks are
        ordinary (:func:`~p2pmtl.robust.aggregators.ordinary_stacks`), when the aggregator has a
        batched form of its own (:meth:`~p2pmtl.robust.aggregators.Aggregator._batched`: the
        mean, the coordinate median, the trimmed mean, Krum, Multi-Krum, the geometric median);
        write them into ``out``. Returns the positions in ``rows`` left for one call each (stacks with huge entries take
        the aggregator's guarded path there) and how many receivers the size was refused for."""
        from ..robust.aggregators import Aggregator, ordinary_stacks

        agg = self._agg
        if not isinstance(agg, Aggregator) or "_batched" not in vars(type(agg)):
            return list(range(rows.numel())), 0
        ordinary = ordinary_stacks(stack)
        left = torch.nonzero(~ordinary).flatten().tolist()
        if not bool(ordinary.any()):
            return left, 0
        try:
            agg._check_n(size)
        except ValueError:
            return left, int(ordinary.sum())
        every = not left  # the usual case: no gather
        values = agg._batched(stack if every else stack[ordinary])
        if values is None:
            return list(range(rows.numel())), 0
        out[rows if every else rows[ordinary]] = values.to(out.dtype)
        return left, 0


# --------------------------------------------------------------------------- weight rules


def _clipped_gossip_scores(ctx: RuleContext, mixing: str) -> torch.Tensor:
    """W with the shares of missing messages left with the receiver (ClippedGossip's W)."""
    e = ctx.edges
    is_self = e.src == e.dst
    w = mixing_weights(e, mixing)
    if ctx.valid is not None:
        w = torch.where(ctx.valid, w, 0.0)
    return torch.where(is_self, (1.0 - e.segment_sum(w))[e.dst], w)  # a missing share stays home


@RULES.register("clipped_gossip",
                "ClippedGossip (He, Karimireddy, Jaggi 2022): x_k <- sum_l W_lk (x_k + clip(x_l - x_k, tau)), "
                "tau fixed or adaptive")
class ClippedGossip(WeightRule):
    """Self-centred clipping gossip (He, Karimireddy and Jaggi 2022, "Byzantine-robust
    decentralized learning via ClippedGossip", eq. 3):

        x_k <- sum_l W_lk (x_k + clip(x_l - x_k, tau)) = x_k + sum_l W_lk clip(x_l - x_k, tau),

    clip(z, tau) = z min(1, tau / ||z||), applied after the local step (ATC: x = psi). ``W`` is
    ``metropolis`` (W_lk = 1 / (1 + max(d_k, d_l)) for l != k, W_kk = 1 - sum of the others,
    d = in-degree without the self loop) or ``uniform`` (1 / |N_k|, self included). Messages
    that did not arrive or are not finite get weight 0 and their share stays with the
    receiver. ``tau = inf`` is plain gossip averaging with W.

    ``tau``: a real > 0 (fixed radius, combine step ``clipped``) or ``"adaptive"``: the
    per-receiver radius of the paper, tau_k^2 = (1/delta_k) sum of W_lk ||x_l - x_k||^2 over
    all neighbours but the farthest ones of weight delta_k, delta_k the weight of ``b``
    (default 1) Byzantine neighbours (combine step ``clipped_adaptive``, see
    :class:`AdaptiveClipping`). ``b`` is accepted with ``tau = "adaptive"`` only.

    Worked example (uniform W over k and one neighbour l, tau = 1): x_k = (0, 0),
    x_l = (3, 4) gives x_k + 1/2 (3, 4) / 5 = (0.3, 0.4). Adaptive, b = 1, uniform W over k
    and neighbours 1, 2, 3, 10 (1-D, x_k = 0): tau = sqrt(14) and x_k = 1.948."""

    def __init__(self, *, tau: Any = 1.0, mixing: str = "metropolis", b: Optional[int] = None) -> None:
        if isinstance(tau, str) and tau == "adaptive":
            self.b = _count("clipped_gossip", "b", 1 if b is None else b)
        else:
            if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0 and not math.isnan(tau)):
                raise ValueError(f"clipped_gossip: tau = {tau!r}; allowed: a real > 0 (inf: no clipping) "
                                 f"or 'adaptive'")
            if b is not None:
                raise ValueError(f"clipped_gossip: b = {b!r}; allowed only with tau = 'adaptive' "
                                 f"(tau = {tau!r} is fixed)")
            tau, self.b = float(tau), None
        self.tau, self.mixing = tau, _mixing("clipped_gossip", mixing)

    def combine_step(self):
        if self.tau == "adaptive":
            return AdaptiveClipping(b=self.b)
        from .combine import SelfCentredClipping

        return SelfCentredClipping(tau=self.tau)

    def scores(self, ctx: RuleContext) -> torch.Tensor:
        return _clipped_gossip_scores(ctx, self.mixing)


@RULES.register("cs_plus",
                "CS+ (Gaucher, Dieuleveut, Hendrikx 2025): ClippedGossip clipping the farthest weight 2 delta_k")
class CSPlus(WeightRule):
    """CS+-RG (Gaucher, Dieuleveut and Hendrikx 2025): ClippedGossip's update with the radius
    tau_k at a weight quantile of the distances, so that exactly the farthest neighbours of
    total weight 2 delta_k are clipped (delta_k: the weight of ``b`` Byzantine neighbours, the
    ``b`` largest present W_lk). Formula and worked example: :class:`CSPlusStep`. ``W`` as in
    :class:`ClippedGossip` (``mixing``; shares of missing messages stay with the receiver).
    It takes ``b`` (integer >= 0, default 1; 0 is plain gossip), ``mixing``."""

    def __init__(self, *, b: int = 1, mixing: str = "metropolis") -> None:
        self.b = _count("cs_plus", "b", b)
        self.mixing = _mixing("cs_plus", mixing)

    def combine_step(self):
        return CSPlusStep(b=self.b)

    def scores(self, ctx: RuleContext) -> torch.Tensor:
        return _clipped_gossip_scores(ctx, self.mixing)


@RULES.register("ios", "IOS (Wu, Chen, Ling 2023): drop the farthest neighbour from the weighted mean b times, "
                       "average the rest")
class IOS(WeightRule):
    """Iterative outlier scissor (Wu, Chen, Ling et al. 2023): ``b`` rounds of removing the
    neighbour farthest from the weighted mean of those left, then their weighted mean
    (formula and worked example: :class:`IOSStep`). Weights W over N_k + k: ``metropolis``
    (default) or ``uniform`` as in :class:`ClippedGossip`; a missing or non-finite message is
    absent and the weights are renormalised over what is present (its share does not go to
    the receiver). It takes ``b`` (integer >= 0, default 1; a receiver with fewer than b
    neighbours keeps its own model), ``mixing``."""

    def __init__(self, *, b: int = 1, mixing: str = "metropolis") -> None:
        self.b = _count("ios", "b", b)
        self.mixing = _mixing("ios", mixing)

    def combine_step(self):
        return IOSStep(b=self.b)

    def scores(self, ctx: RuleContext) -> torch.Tensor:
        e = ctx.edges
        is_self = e.src == e.dst
        w = mixing_weights(e, self.mixing)
        return torch.where(is_self, (1.0 - e.segment_sum(w))[e.dst], w)  # engine: invalid -> 0, renormalised


class _Unweighted(WeightRule):
    """Rules whose combine step ignores the weights: scores 1 (uniform over the present
    neighbourhood, for the engine's records)."""

    def scores(self, ctx: RuleContext) -> torch.Tensor:
        return torch.ones(ctx.edges.num_edges, dtype=torch.float64)


@RULES.register("bridge_trimmed_mean",
                "BRIDGE-T (Fang, Yang, Bajwa 2022): coordinate-wise trimmed mean (b each end) of N_k and k")
class BridgeTrimmedMean(_Unweighted):
    """BRIDGE-T: per coordinate, the mean of the receiver's neighbourhood values *and its own*
    after dropping the ``b`` largest and ``b`` smallest (formula and worked example:
    :class:`BridgeTrimmedMeanStep`). It takes ``b`` (integer >= 0, default 1; a receiver
    with fewer than 2b + 1 values keeps its own model)."""

    def __init__(self, *, b: int = 1) -> None:
        self.b = _count("bridge_trimmed_mean", "b", b)

    def combine_step(self):
        return BridgeTrimmedMeanStep(b=self.b)


@RULES.register("bridge_median", "BRIDGE-M (Fang, Yang, Bajwa 2022): coordinate-wise median of N_k and k")
class BridgeMedian(_Unweighted):
    """BRIDGE-M: per coordinate, the median of the receiver's neighbourhood values *and its
    own* (formula and worked example: :class:`BridgeMedianStep`). No parameters."""

    def __init__(self) -> None:  # no parameters (an unknown one is refused by make_rule)
        pass

    def combine_step(self):
        return BridgeMedianStep()


@RULES.register("node_aggregator",
                "a registered aggregator (krum, geometric_median, ...) at each receiver over N_k and k")
class NodeAggregator(_Unweighted):
    """Any registered aggregator applied at each receiver to its present neighbours' messages
    and its own model (formula, cost and worked example: :class:`NodeAggregatorStep`).
    It takes ``aggregator`` (a name of ``p2pmtl list``'s aggregators, required), ``pre``
    (pre-aggregation steps), the aggregator's own parameters (``f = 1``), and
    ``aggregator_params`` for those named like a ``[rules]`` key (``nu``)."""

    def __init__(self, *, aggregator: Optional[str] = None, pre: Sequence[str] = (),
                 aggregator_params: Optional[dict] = None, nu: Any = None, init_score: Any = None,
                 **params: Any) -> None:
        if aggregator_params is not None and not isinstance(aggregator_params, dict):
            raise ValueError(f"node_aggregator: aggregator_params = {aggregator_params!r}; "
                             f"allowed: a table of parameters")
        self._step = NodeAggregatorStep(aggregator=aggregator, pre=pre,
                                        aggregator_params={**params, **(aggregator_params or {})})
        self.aggregator, self.pre, self.params = aggregator, pre, dict(self._step.aggregator_params)

    def combine_step(self):
        return NodeAggregatorStep(aggregator=self.aggregator, pre=self.pre, aggregator_params=self.params)
