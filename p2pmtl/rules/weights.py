"""Combination-weight rules for ATC diffusion (Li, Abbas, Koutsoukos, NeurIPS 2020).

Each rule maps per-edge statistics to per-edge weights ``a_lk`` (edge ``l -> k``) that are
non-negative and sum to 1 over each receiver's in-edges. All four rules of Li2020 are
instances of one formula, so a rule class only *declares* its parts:

    phi_lk <- (1 - nu) phi_lk + nu * stat_lk          (smoothed score; rules without a
                                                       statistic keep phi = 1, so s = 1)
    kept   =  neighbours passing the rule's filter    (the receiver itself always passes)
    a_lk   =  s_lk / sum over kept p of s_pk,  s = 1/phi

and :class:`RuleSet` evaluates any mix of rules (one per lane, see :mod:`p2pmtl.engine.gossip`) in
one vectorized pass over the destination-sorted edge list: ~12 tensor ops per step for all
lanes together instead of ~10 per lane.

``valid`` marks edges whose message is finite (None: all are). Invalid or non-finite-statistic
edges get weight 0 and leave their score untouched; an agent's own edge always gets weight.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence

import torch

from ..core.edges import EdgeIndex
from ..core.ops import all_finite
from ..registry import Registry

RULES: Registry[type["WeightRule"]] = Registry("weight rule")


def inverse_score(phi: torch.Tensor) -> torch.Tensor:
    """1 / phi with phi floored at sqrt(smallest normal float): a zero loss gives a large but
    finite weight, and sums over any neighbourhood stay finite, so weights never become NaN."""
    return torch.reciprocal(phi.clamp_min(torch.finfo(phi.dtype).tiny ** 0.5))


class WeightRule:
    """A weight rule, declared by three class attributes:

    - ``needs``: the per-edge statistic it smooths into scores (None, "loss" or "distance");
    - ``filtered``: keep only neighbours with phi_lk <= phi_kk (Li2020 eq. 10);
    - ``self_only``: put all weight on the agent itself (non-cooperation).

    ``weights(edges, stat, valid)`` evaluates the rule alone (a one-lane :class:`RuleSet`).
    """

    needs: ClassVar[Optional[str]] = None
    filtered: ClassVar[bool] = False
    self_only: ClassVar[bool] = False

    def __init__(self, *, nu: float = 0.1, init_score: float = 10.0) -> None:
        if not 0.0 < nu <= 1.0:
            raise ValueError(f"nu = {nu}: must lie in (0, 1]")
        if not (init_score > 0.0 and math.isfinite(init_score)):
            raise ValueError(f"init_score = {init_score}: must be finite and > 0")
        self.nu = float(nu)
        self.init_score = float(init_score)
        self._alone: Optional[RuleSet] = None

    def reset(self, edges: EdgeIndex, dtype: torch.dtype = torch.float64) -> None:
        self._alone = RuleSet([self], edges, dtype)

    @property
    def phi(self) -> torch.Tensor:
        """Smoothed scores per edge (every one starts at ``init_score``)."""
        return self._alone.phi

    def weights(
        self, edges: EdgeIndex, stat: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self._alone.weights([stat], valid)


@RULES.register("noncoop", "non-cooperation: a_kk = 1, every agent learns alone")
class NonCooperative(WeightRule):
    """a_kk = 1 and a_lk = 0 for l != k."""

    self_only = True


@RULES.register("average", "uniform averaging: a_lk = 1/|N_k| over all neighbours, self included")
class Average(WeightRule):
    """a_lk = 1 / |N_k| over neighbours whose message is finite (self always counted)."""


@RULES.register(
    "distance", "distance-based (Li2020 eq. 4): a_lk ~ 1/phi_lk, phi smoothed ||theta_k - psi_l||^2"
)
class DistanceBased(WeightRule):
    """Li2020 eq. (4) with smoothing: phi_lk <- (1-nu) phi_lk + nu ||theta_k,i-1 - psi_l,i||^2,
    a_lk = phi_lk^-1 / sum_p phi_pk^-1 over all neighbours (no filter)."""

    needs = "distance"


@RULES.register(
    "loss", "loss-based, filtered (Li2020 eqs. 9-10): keep phi_lk <= phi_kk, a_lk ~ 1/phi_lk"
)
class LossBased(WeightRule):
    """Li2020 eqs. (9)-(10): phi_lk <- (1-nu) phi_lk + nu * l(psi_l; xi_k) (neighbour l's model
    on k's own data); keep l iff phi_lk <= phi_kk (k always kept);
    a_lk = phi_lk^-1 / sum over kept p of phi_pk^-1, and 0 for the rest.

    Worked example: phi = (k: 2, l1: 1, l2: 4) keeps k and l1 with weights (1/2, 1)/(3/2)
    = (1/3, 2/3) and gives l2 weight 0.
    """

    needs = "loss"
    filtered = True


class RuleSet:
    """Rules of M lanes over one world edge list (E0 edges); lane j owns edges
    ``j*E0 ... (j+1)*E0`` of the lanes' disjoint union. Holds every lane's scores ``[M*E0]``."""

    def __init__(self, rules: Sequence[WeightRule], world_edges: EdgeIndex, dtype: torch.dtype = torch.float64,
                 lanes_edges: Optional[EdgeIndex] = None):
        """``lanes_edges``: the lanes' disjoint union of ``world_edges``, if the caller has it."""
        self.rules = list(rules)
        m, e0 = len(self.rules), world_edges.num_edges
        if lanes_edges is None:
            lanes_edges = EdgeIndex.disjoint_union([world_edges] * m) if m > 1 else world_edges
        self.edges = lanes_edges
        per_lane = lambda f: torch.cat([torch.full((e0,), f(r)) for r in self.rules])  # noqa: E731
        # a rule without a statistic has the constant score 1 (its placeholder statistic is that
        # same constant, so smoothing never changes it) and hence uniform inverse scores
        self.phi = per_lane(lambda r: r.init_score if r.needs else 1.0).to(dtype)
        self.unfiltered = ~per_lane(lambda r: r.filtered).bool()
        self.is_self = self.edges.src == self.edges.dst
        self.self_only = per_lane(lambda r: r.self_only).bool()
        self.any_self_only = bool(self.self_only.any())
        self.allowed = self.is_self | ~self.self_only
        nus = {r.nu for r in self.rules}
        self.nu = nus.pop() if len(nus) == 1 else per_lane(lambda r: r.nu).to(dtype)
        self.any_scored = any(r.needs for r in self.rules)
        self._ones = torch.ones(e0, dtype=dtype)
        self._static: Optional[torch.Tensor] = None

    def weights(self, stats: Sequence[Optional[torch.Tensor]], valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``stats[j]``: lane j's statistic ``[E0]`` (None if its rule has none)."""
        e = self.edges
        if not self.any_scored:
            if valid is None:
                if self._static is None:
                    self._static = self._normalise(self.allowed.to(self.phi.dtype))
                return self._static
            return self._normalise((self.allowed & (valid | self.is_self)).to(self.phi.dtype))
        stat = torch.cat([s if s is not None else self._ones for s in stats]) if len(stats) > 1 else stats[0]
        usable = None
        if valid is not None or not all_finite(stat):
            usable = torch.isfinite(stat) if valid is None else valid & torch.isfinite(stat)
        new = torch.lerp(self.phi, stat, self.nu)
        self.phi = new if usable is None else torch.where(usable, new, self.phi)
        keep = self.unfiltered | (self.phi <= torch.index_select(self.phi, 0, e.self_of_dst))
        if usable is not None:
            keep = (keep & usable) | self.is_self
        if self.any_self_only:
            keep = keep & self.allowed
        return self._normalise(inverse_score(self.phi) * keep)

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """a_e = raw_e / sum of raw over the receiver's in-edges (the own edge is always > 0)."""
        return raw / torch.index_select(self.edges.segment_sum(raw), 0, self.edges.dst)


def make_rule(name: str, *, nu: float, init_score: float) -> WeightRule:
    return RULES.get(name)(nu=nu, init_score=init_score)
