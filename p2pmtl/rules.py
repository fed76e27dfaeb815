"""Combination-weight rules for ATC diffusion (Li, Abbas, Koutsoukos, NeurIPS 2020).

Every rule maps per-edge statistics to per-edge weights ``a_lk`` (edge ``l -> k``) that are
non-negative and sum to 1 over each receiver's in-edges. Rules work on the destination-sorted
edge list (:class:`~p2pmtl.edges.EdgeIndex`) so one call serves a whole batched population.

``valid`` marks edges whose message is finite. Non-self edges with invalid messages get weight
0; an agent's own edge is always usable (the agent never filters itself out).
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch

from .edges import EdgeIndex
from .ops import all_finite
from .registry import Registry

RULES: Registry[type["WeightRule"]] = Registry("weight rule")


def smooth(phi: torch.Tensor, stat: torch.Tensor, nu: float, update: Optional[torch.Tensor]) -> torch.Tensor:
    """Exponential smoothing phi <- (1 - nu) phi + nu * stat (Li2020 sec. 5), only where
    ``update`` holds (None: everywhere); a skipped edge keeps its old score."""
    new = torch.lerp(phi, stat, nu)
    return new if update is None else torch.where(update, new, phi)


def normalise_per_receiver(raw: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
    """a_e = raw_e / sum of raw over the receiver's in-edges. Every rule gives the receiver's
    own edge a positive raw weight (scores stay finite), so no sum is zero."""
    return raw / torch.index_select(edges.segment_sum(raw), 0, edges.dst)


def inverse_score(phi: torch.Tensor) -> torch.Tensor:
    """1 / phi with phi floored at sqrt(smallest normal float): a zero loss gives a large but
    finite weight, and sums over any neighbourhood stay finite, so weights never become NaN."""
    floor = torch.finfo(phi.dtype).tiny ** 0.5
    return torch.reciprocal(phi.clamp_min(floor))


class WeightRule:
    """Base class. ``needs`` names the per-edge statistic the rule consumes (or None).

    ``weights(edges, stat, valid)``: ``stat`` is the per-edge statistic (None if not needed);
    ``valid`` marks edges whose message is finite, None meaning all are (the fast path).
    """

    needs: ClassVar[Optional[str]] = None

    def __init__(self, *, nu: float = 0.1, init_score: float = 10.0) -> None:
        if not 0.0 < nu <= 1.0:
            raise ValueError(f"nu = {nu}: must lie in (0, 1]")
        if not (init_score > 0.0 and math.isfinite(init_score)):
            raise ValueError(f"init_score = {init_score}: must be finite and > 0")
        self.nu = float(nu)
        self.init_score = float(init_score)
        self.phi: Optional[torch.Tensor] = None

    def reset(self, edges: EdgeIndex, dtype: torch.dtype = torch.float64) -> None:
        """Every smoothed score starts at ``init_score``."""
        self.phi = torch.full((edges.num_edges,), self.init_score, dtype=dtype)

    def weights(
        self, edges: EdgeIndex, stat: Optional[torch.Tensor], valid: Optional[torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError


def usable_edges(edges: EdgeIndex, valid: Optional[torch.Tensor], stat: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Edges whose message and statistic are both finite (None: every edge is). Only these
    update their score; weight goes to these plus the receiver's own edge."""
    if valid is None and (stat is None or all_finite(stat)):
        return None
    usable = torch.ones(edges.num_edges, dtype=torch.bool) if valid is None else valid.clone()
    if stat is not None:
        usable &= torch.isfinite(stat)
    return usable


def with_self(edges: EdgeIndex, mask: torch.Tensor) -> torch.Tensor:
    out = mask.clone()
    out[edges.self_edge] = True
    return out


@RULES.register("noncoop", "non-cooperation: a_kk = 1, every agent learns alone")
class NonCooperative(WeightRule):
    """a_kk = 1 and a_lk = 0 for l != k."""

    _static: Optional[torch.Tensor] = None

    def weights(self, edges, stat=None, valid=None):
        if self._static is None:
            self._static = torch.zeros(edges.num_edges, dtype=self.phi.dtype)
            self._static[edges.self_edge] = 1.0
        return self._static


@RULES.register("average", "uniform averaging: a_lk = 1/|N_k| over all neighbours, self included")
class Average(WeightRule):
    """a_lk = 1 / |N_k| over neighbours whose message is finite (self always counted)."""

    _static: Optional[torch.Tensor] = None

    def weights(self, edges, stat=None, valid=None):
        if valid is None:
            if self._static is None:
                self._static = normalise_per_receiver(torch.ones_like(self.phi), edges)
            return self._static
        return normalise_per_receiver(with_self(edges, valid).to(self.phi.dtype), edges)


@RULES.register(
    "distance", "distance-based (Li2020 eq. 4): a_lk ~ 1/phi_lk, phi smoothed ||theta_k - psi_l||^2"
)
class DistanceBased(WeightRule):
    """Li2020 eq. (4) with smoothing: phi_lk <- (1-nu) phi_lk + nu ||theta_k,i-1 - psi_l,i||^2,
    a_lk = phi_lk^-1 / sum_p phi_pk^-1 over all neighbours (no filter)."""

    needs = "distance"

    def weights(self, edges, stat, valid=None):
        usable = usable_edges(edges, valid, stat)
        self.phi = smooth(self.phi, stat, self.nu, usable)
        raw = inverse_score(self.phi)
        if usable is not None:
            raw = raw * with_self(edges, usable)
        return normalise_per_receiver(raw, edges)


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

    def weights(self, edges, stat, valid=None):
        usable = usable_edges(edges, valid, stat)
        self.phi = smooth(self.phi, stat, self.nu, usable)
        keep = self.phi <= torch.index_select(self.phi, 0, edges.self_of_dst)  # self: phi <= phi
        if usable is not None:
            keep = with_self(edges, keep & usable)
        return normalise_per_receiver(inverse_score(self.phi) * keep, edges)


def make_rule(name: str, *, nu: float, init_score: float) -> WeightRule:
    return RULES.get(name)(nu=nu, init_score=init_score)
