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

**Your own rule.** Subclass :class:`WeightRule`, override :meth:`WeightRule.scores` (and
:meth:`WeightRule.setup` for state), and register it::

    @p2pmtl.register_rule("cosine", "a_lk ~ max(0, cos(theta_k, psi_l))")
    class Cosine(p2pmtl.WeightRule):
        def scores(self, ctx):
            own = ctx.edges.gather(ctx.own(), "dst")          # [E0, D] receiver's model per edge
            msg = ctx.messages()                               # [E0, D] what each edge carries
            return torch.cosine_similarity(own, msg, dim=1).clamp_min(0)

A rule that overrides ``scores`` runs on the general path: the engine evaluates it once per
lane on that lane's edge list (vectorized over all agents and runs; no loop over agents or
edges), then sets invalid edges to 0 and normalises over each receiver's in-edges. The four
built-in rules keep their fused path (:class:`RuleSet`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import torch

from ..core.edges import EdgeIndex
from ..core.ops import Workspace, all_finite, segment_sum_into
from ..registry import Registry

if TYPE_CHECKING:  # annotations only: combine.py is loaded when a step is asked for
    from .combine import CombineStep

RULES: Registry[type["WeightRule"]] = Registry("weight rule")


def inverse_score(phi: torch.Tensor, keep: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """1 / phi with phi floored at sqrt(smallest normal float): a zero loss gives a large but
    finite weight, and sums over any neighbourhood stay finite, so weights never become NaN.

    ``keep`` (1.0 or 0.0 per entry): keep / phi instead, the same IEEE quotient for kept entries
    and +0 for the others, in one pass. ``out``: write there (no allocation)."""
    floored = torch.clamp_min(phi, torch.finfo(phi.dtype).tiny ** 0.5, out=out)
    if keep is None:
        return floored.reciprocal_()
    return torch.div(keep, floored, out=floored)


@dataclass
class RuleContext:
    """What a rule may look at in one round, for one lane (edge list of the *world*: E0 edges
    sorted by receiver, self loops included, N0 nodes = runs x agents).

    ``stat`` is the statistic the rule asked for with ``needs`` (``"loss"``: l(psi_l; xi_k), the
    sender's model on the receiver's data; ``"distance"``: ||theta_k - psi_l||^2), ``[E0]``, or
    None. ``valid`` marks edges whose message arrived and is finite (None: all). ``messages()``
    gives what every edge carries, ``[E0, D]`` (non-finite neighbour messages zeroed);
    ``own()`` the receivers' models before this combination, ``[N0, D]``. Both are computed on
    first use only."""

    step: int
    lane: int
    edges: Any  # EdgeIndex of the world
    stat: Optional[torch.Tensor]
    valid: Optional[torch.Tensor]
    messages: Callable[[], torch.Tensor]
    own: Callable[[], torch.Tensor]
    population: Any = None


class WeightRule:
    """A weight rule. Built-in rules are declared by three class attributes and evaluated
    together by :class:`RuleSet` (the fused path):

    - ``needs``: the per-edge statistic it smooths into scores (None, "loss" or "distance");
    - ``filtered``: keep only neighbours with phi_lk <= phi_kk (Li2020 eq. 10);
    - ``self_only``: put all weight on the agent itself (non-cooperation).

    A rule that overrides :meth:`scores` runs on the general path instead. ``combine`` names
    the :class:`~p2pmtl.rules.combine.CombineStep` its lane uses (None: the config's, by
    default the weighted average of Li2020 eq. 3).

    ``weights(edges, stat, valid)`` evaluates a built-in rule alone (a one-lane :class:`RuleSet`).
    """

    needs: ClassVar[Optional[str]] = None
    filtered: ClassVar[bool] = False
    self_only: ClassVar[bool] = False
    combine: ClassVar[Optional[str]] = None

    def combine_step(self) -> Optional["CombineStep"]:
        """The combine step of this rule's lane: None for the config's (``rules.combine``);
        by default the step named by ``combine`` with its default parameters. Rules whose step
        takes parameters (e.g. a clipping radius) override this."""
        if self.combine is None:
            return None
        from .combine import make_combine

        return make_combine(self.combine)

    @classmethod
    def general(cls) -> bool:
        """True when the rule computes its own scores (not the fused built-in formula)."""
        return cls.scores is not WeightRule.scores

    def setup(self, edges: EdgeIndex, dtype: torch.dtype) -> None:
        """Called once before the first round with the world's edge list (keep per-edge state
        here, e.g. ``self.phi = torch.ones(edges.num_edges, dtype=dtype)``)."""

    def scores(self, ctx: RuleContext) -> torch.Tensor:
        """Non-negative per-edge scores ``[E0]`` of one lane; the engine zeroes invalid edges
        and normalises over each receiver's in-edges (a receiver whose scores are all 0 keeps
        its own model). Override to write a rule."""
        raise NotImplementedError

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
                 lanes_edges: Optional[EdgeIndex] = None, workspace: Optional[Workspace] = None):
        """``lanes_edges``: the lanes' disjoint union of ``world_edges``, if the caller has it.
        ``workspace``: where the scored path keeps its per-edge scratch tensors and the weights
        it returns (then overwritten by the next call); None: fresh tensors every call."""
        self.rules = list(rules)
        self.ws = workspace if workspace is not None else Workspace(reuse=False)
        m, e0 = len(self.rules), world_edges.num_edges
        if lanes_edges is None:
            lanes_edges = EdgeIndex.disjoint_union([world_edges] * m) if m > 1 else world_edges
        self.edges = lanes_edges
        per_lane = lambda f: torch.cat([torch.full((e0,), f(r)) for r in self.rules])  # noqa: E731
        # a rule without a statistic has the constant score 1 (its placeholder statistic is that
        # same constant, so smoothing never changes it) and hence uniform inverse scores
        self.phi = per_lane(lambda r: r.init_score if r.needs else 1.0).to(dtype)
        self.unfiltered = ~per_lane(lambda r: r.filtered).bool()
        self.all_filtered = not bool(self.unfiltered.any())
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
        ws, shape, dtype = self.ws, self.phi.shape, self.phi.dtype
        if len(stats) > 1:
            stat = torch.cat([s if s is not None else self._ones for s in stats], out=ws.get("stat", shape, dtype))
        else:
            stat = stats[0]
        usable = None
        if valid is not None or not all_finite(stat):
            usable = torch.isfinite(stat) if valid is None else valid & torch.isfinite(stat)
        if usable is None:
            self.phi.lerp_(stat, self.nu)  # phi <- (1 - nu) phi + nu stat, in place
        else:
            self.phi = torch.where(usable, torch.lerp(self.phi, stat, self.nu), self.phi)
        # the filter (Li2020 eq. 10), keep phi_lk <= phi_kk, as a float 1.0 / 0.0 (a masked fill
        # or where() with an unpredictable mask costs several times a float division)
        own = torch.index_select(self.phi, 0, e.self_of_dst, out=ws.get("own", shape, dtype))
        keep = ws.get("keep", shape, dtype)
        if self.all_filtered and usable is None and not self.any_self_only:
            torch.le(self.phi, own, out=keep)
        else:
            kept = torch.le(self.phi, own, out=ws.get("kept", shape, torch.bool)).logical_or_(self.unfiltered)
            if usable is not None:
                kept.logical_and_(usable).logical_or_(self.is_self)
            if self.any_self_only:
                kept.logical_and_(self.allowed)
            keep.copy_(kept)
        raw = inverse_score(self.phi, keep, out=ws.get("weights", shape, dtype))  # s_lk = 1/phi_lk, 0 if dropped
        return self._normalise(raw, scratch=own)

    def _normalise(self, raw: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a_e = raw_e / sum of raw over the receiver's in-edges (the own edge is always > 0).
        With ``scratch`` (an ``[E]`` tensor free for use), ``raw`` is divided in place."""
        e = self.edges
        if scratch is None:
            return raw / torch.index_select(e.segment_sum(raw), 0, e.dst)
        total = segment_sum_into(raw, e.offsets, out=self.ws.get("total", (e.num_nodes,), raw.dtype))
        return raw.div_(torch.index_select(total, 0, e.dst, out=scratch))


def normalise_scores(edges: EdgeIndex, scores: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Weights from a general rule's scores: NaN, negative and invalid edges (except the
    receiver's own) count 0; each receiver's weights sum to 1; a receiver whose scores are all
    0 puts weight 1 on itself."""
    is_self = edges.src == edges.dst
    s = torch.nan_to_num(scores, nan=0.0, posinf=torch.finfo(scores.dtype).max).clamp_min(0)
    if valid is not None:
        s = torch.where(valid | is_self, s, 0.0)
    total = torch.index_select(edges.segment_sum(s), 0, edges.dst)
    empty = total <= 0
    s = torch.where(empty, is_self.to(s.dtype), s)
    total = torch.where(empty, 1.0, total)
    return s / total


def make_rule(name: str, *, nu: float = 0.1, init_score: float = 10.0, **params: Any) -> WeightRule:
    """A registered rule with its parameters; ``nu`` and ``init_score`` reach rules whose
    constructor takes them. Unknown parameters are an error listing the accepted ones."""
    import inspect

    cls = RULES.get(name)
    sig = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.values())
    accepted = [k for k in sig if k != "self"]
    unknown = [k for k in params if k not in sig and not takes_any]
    if unknown:
        raise ValueError(f"rule {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted) or '(none)'}")
    kwargs = {k: v for k, v in (("nu", nu), ("init_score", init_score)) if k in sig or takes_any}
    return cls(**kwargs, **params)

