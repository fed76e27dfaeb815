"""Synchronous adapt-then-combine diffusion (Li2020 eqs. 2-3) for a whole batched population,
with Byzantine senders. No Python loop over agents or edges.

Layout (DESIGN "where speed comes from"): a *world* is R independent runs of n agents,
flattened to N0 = R*n nodes with one destination-sorted edge list (a disjoint union). An
engine runs M *lanes* of that world, one per weight rule, folded into the node axis (node
``j*N0 + i`` is world node i in lane j): all lanes see identical data and identical attacker
draws, so rules are compared on equal terms and share every tensor op, the weight maths
included (:class:`~p2pmtl.rules.weights.RuleSet`). Only the per-lane statistics (on contiguous edge
slices) and the attacks loop over lanes (M is small).

Fast path (every message finite, no per-edge forgeries): no masks at all. Otherwise non-finite
neighbour messages are dropped (weight 0). The population combines (:mod:`p2pmtl.core.messages`).

Memory: the engine's per-round tensors (the sent rows, the per-edge messages, the fused rules'
scratch and weights) live in one :class:`~p2pmtl.core.ops.Workspace` and are rewritten every
round, so a synchronous round allocates no per-edge tensor: ``sent`` and ``weights`` hold the
last round's values until the next one (clone them to keep them longer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

from ..robust.attacks import Attack, AttackContext
from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..core.ops import Workspace, per_lane
from ..rules.combine import CombineContext, CombineStep
from ..rules.weights import Average, RuleContext, RuleSet, WeightRule, normalise_scores
from ..tasks.base import Population

if TYPE_CHECKING:
    import numpy as np


class GossipEngine:
    def __init__(
        self,
        population: Population,
        world_edges: EdgeIndex,
        rules: Sequence[WeightRule],
        byzantine: torch.Tensor,
        attacks: Optional[Sequence[Optional[Attack]]] = None,
        attack_seeds: Sequence[int] = (),
        run_of_node: Optional[torch.Tensor] = None,
        combines: Optional[Sequence[Optional[CombineStep]]] = None,
        roles=None,
        kernel: str = "torch",
    ) -> None:
        """``world_edges``: the world's edge list; ``rules``: one weight rule per lane;
        ``byzantine``: Byzantine node ids of the world (the same in every lane); ``attacks``:
        one fresh attack object per lane, each drawing from its own generators seeded with
        ``attack_seeds`` (one per run), so that lanes see identical forgeries; ``combines``: one
        combine step per lane (None: the weighted average, on the population's fast path).

        Rules on the general path (:meth:`WeightRule.general`) are evaluated lane by lane and
        replace their lane's slice of the fused :class:`RuleSet` weights (where they hold a
        placeholder); combine steps other than the weighted average replace their lane's models
        after the population's fast combination. Either way a lane's numbers do not depend on
        which other lanes run beside it.

        ``roles`` (a :class:`~p2pmtl.engine.roles.ServerRoles`; None: every node is a learner):
        servers do not adapt, and after every combine the servers' two-phase aggregation
        rewrites the rows of servers and their clients in every lane.

        ``kernel`` (the config's ``kernel``: ``auto``, ``numba`` or ``torch``): whether
        synchronous rounds run their receiving half as one compiled kernel where it applies
        (:mod:`p2pmtl.kernels.fused_round`: the same numbers, a fraction of the memory traffic
        at scale); :attr:`kernel` says which one runs."""
        self.pop, self.world_edges, self.rules = population, world_edges, list(rules)
        self.lanes = m = len(self.rules)
        self.n0, self.e0 = world_edges.num_nodes, world_edges.num_edges
        if population.lanes != m or population.world_nodes != self.n0:
            raise ValueError(
                f"population is {population.lanes} lanes x {population.world_nodes} nodes; the "
                f"engine needs {m} lanes x {self.n0} nodes"
            )
        self.edges = EdgeIndex.disjoint_union([world_edges] * m) if m > 1 else world_edges
        self.byzantine = byzantine.long()
        self.attacks = list(attacks) if attacks is not None else [None] * m
        if self.byzantine.numel() and any(a is None for a in self.attacks):
            raise ValueError("Byzantine agents given but no attack")
        if self.byzantine.numel():
            for attack in self.attacks:  # before the first local step (data poisoning changes data here)
                attack.setup(population, self.byzantine)
        self.is_byzantine = torch.zeros(self.n0, dtype=torch.bool)  # world-level
        self.is_byzantine[self.byzantine] = True
        self.byz_all = torch.cat([self.byzantine + j * self.n0 for j in range(m)])
        world_byz_edges = torch.nonzero(
            self.is_byzantine[world_edges.src] & (world_edges.src != world_edges.dst)).flatten()
        self.world_byz_edges = world_byz_edges
        self.byz_edges = torch.cat([world_byz_edges + j * self.e0 for j in range(m)])
        self.run_of_node = run_of_node if run_of_node is not None else torch.zeros(self.n0, dtype=torch.long)
        self.attack_generators = [
            [torch.Generator().manual_seed(int(s)) for s in attack_seeds] for _ in range(m)
        ]
        self.general = [j for j, r in enumerate(self.rules) if r.general()]
        fused = [r for r in self.rules if not r.general()]
        placeholder = Average(nu=fused[0].nu, init_score=fused[0].init_score) if fused else Average()
        self.workspace = Workspace()
        self.rule_set = RuleSet([placeholder if r.general() else r for r in self.rules], world_edges,
                                dtype=population.dtype, lanes_edges=self.edges, workspace=self.workspace)
        for j in self.general:
            self.rules[j].setup(world_edges, population.dtype)
        self.combines = list(combines) if combines is not None else [None] * m
        self.slow_combines = [j for j, c in enumerate(self.combines)
                              if c is not None and not c.fast_weighted_average]
        self.roles = roles
        self.is_server = roles.is_server if roles is not None else torch.zeros(self.n0, dtype=torch.bool)
        self._step = 0
        self._fused = None
        from ..kernels import wants_kernel

        if wants_kernel(kernel, self.edges.num_edges):
            from ..kernels.fused_round import FusedRound, applies

            if applies(self) is None:
                self._fused = FusedRound(self)
        self.weights: Optional[torch.Tensor] = None  # [M*E0]
        self.sent: Optional[torch.Tensor] = None  # [M*N0, D]

    def lane(self, j: int) -> slice:
        """Node slice of lane j."""
        return slice(j * self.n0, (j + 1) * self.n0)

    def lane_edges(self, j: int) -> slice:
        """Edge slice of lane j (lanes are contiguous because edges are sorted by receiver)."""
        return slice(j * self.e0, (j + 1) * self.e0)

    def step(self, step: int, delivered: Optional[torch.Tensor] = None, active: Optional[torch.Tensor] = None,
             adapting: Optional[torch.Tensor] = None) -> None:
        """One synchronous iteration. ``delivered`` ([E0] bool, world edges; None: all) marks the
        messages received this time (the network model: losses, deadlines, churn, absent
        edges); ``active`` ([N0] bool; None: all) the agents that combine (the others keep their
        model and scores); ``adapting`` (default: ``active``) those that also finished their
        local step (a step cut by a deadline is abandoned: the agent combines its old model)."""
        sent, overrides = self.produce(step, active if adapting is None else adapting)
        if self._fused is not None and overrides[0] is None:  # the compiled round: the same numbers
            if not (delivered is None and active is None and self._fused.run(self, sent)):
                self._fused.run_masked(self, sent, delivered, active)  # losses, absences, non-finite rows
            return
        self.consume(self.messages(sent, overrides, delivered, active))

    def consume_held(self, sent: torch.Tensor, fire, has, inbox: Optional[torch.Tensor]) -> bool:
        """Asynchronous gossip's receiving half on the compiled round, if this engine has one
        (:meth:`p2pmtl.kernels.fused_round.FusedRound.run_held`: the world agents ``fire``
        combine their own rows ``sent`` and the stored rows ``inbox`` of the world edges they
        hold, ``has``); False when it has none (the caller then runs :meth:`consume`)."""
        if self._fused is None:
            return False
        self._fused.run_held(self, sent, fire, has, inbox)
        return True

    @property
    def kernel(self) -> str:
        """``numba`` when synchronous rounds run the compiled kernel (where their messages allow
        it), else ``torch``."""
        return "numba" if self._fused is not None else "torch"

    def produce(self, step: int, active: Optional[torch.Tensor] = None):
        """Adapt (Li2020 eq. 2) and forge: (broadcast rows ``[M*N0, D]``, per-edge forgeries)."""
        pop = self.pop
        self._step = step
        pop.sample(step, active)
        psi = pop.adapt(active if self.roles is None else self.roles.hold(active))
        sent, overrides = psi, (None, None)
        if self.byzantine.numel():
            sent, overrides = self._forge(step, psi)
        self.sent = sent
        return sent, overrides

    def messages(self, sent, overrides, delivered=None, active=None, edge_values=None) -> Messages:
        """What the receivers hold: the broadcast rows, per-edge forgeries, and (asynchronous
        gossip) per-edge stored values ``edge_values = (lane edge ids, rows)``."""
        ok = None
        if delivered is not None or active is not None:
            ok = torch.ones(self.e0, dtype=torch.bool) if delivered is None else delivered.clone()
            if active is not None:
                ok &= active[self.world_edges.dst]
            ok = per_lane(ok, self.lanes)
        if edge_values is not None:
            oe, ov = edge_values
            if overrides[0] is not None:  # stored values replace this step's forgeries on their edges
                keep = ~torch.isin(overrides[0], oe)
                oe, ov = torch.cat([overrides[0][keep], oe]), torch.cat([overrides[1][keep], ov])
            overrides = (oe, ov)
        return Messages(sent, self.edges, self.lanes, self.byz_all, *overrides, delivered=ok, receivers=active,
                        workspace=self.workspace)

    def consume(self, msgs: Messages) -> None:
        """Weights (Li2020 eqs. 4, 9-10, or a rule's own) and combination (eq. 3, or the lane's
        combine step) for every lane."""
        pop = self.pop
        stats = []
        for j, rule in enumerate(self.rules):
            if rule.general():
                stats.append(None)
            elif rule.needs == "loss":
                stats.append(pop.edge_losses(msgs, j))
            elif rule.needs == "distance":
                stats.append(pop.edge_sq_dists(msgs, j))
            else:
                stats.append(None)
        weights = self.rule_set.weights(stats, msgs.valid)
        if self.general:
            weights = weights.clone()
            for j in self.general:
                weights[self.lane_edges(j)] = self._general_weights(j, msgs)
        self.weights = weights
        pop.combine(msgs, weights)
        for j in self.slow_combines:
            pop.set_lane_models(j, self._combine_lane(j, msgs, weights))
        if self.roles is not None:
            self.roles.apply(self, msgs)

    def _lane_valid(self, msgs: Messages, j: int) -> Optional[torch.Tensor]:
        return None if msgs.valid is None else msgs.valid[self.lane_edges(j)]

    def _general_weights(self, j: int, msgs: Messages) -> torch.Tensor:
        """A general rule's weights for lane j: its scores, normalised (invalid edges 0)."""
        rule, pop = self.rules[j], self.pop
        stat = None
        if rule.needs == "loss":
            stat = pop.edge_losses(msgs, j)
        elif rule.needs == "distance":
            stat = pop.edge_sq_dists(msgs, j)
        valid = self._lane_valid(msgs, j)
        ctx = RuleContext(self._step, j, self.world_edges, stat, valid,
                          messages=lambda: msgs.per_edge()[self.lane_edges(j)],
                          own=lambda: msgs.sent[self.lane(j)], population=pop)
        scores = rule.scores(ctx)
        if scores.shape != (self.e0,):
            raise ValueError(f"rule {type(rule).__name__}.scores returned shape {tuple(scores.shape)}; "
                             f"expected one score per edge, ({self.e0},)")
        return normalise_scores(self.world_edges, scores.to(weights_dtype(pop)), valid)

    def _combine_lane(self, j: int, msgs: Messages, weights: torch.Tensor) -> torch.Tensor:
        """Lane j's new models from its combine step (per-edge tensors of that lane)."""
        ctx = CombineContext(self.world_edges, msgs.per_edge()[self.lane_edges(j)], self._lane_valid(msgs, j),
                             weights[self.lane_edges(j)], msgs.sent[self.lane(j)])
        return self.combines[j].combine(ctx)

    def _forge(self, step: int, psi: torch.Tensor):
        """Byzantine messages of every lane: broadcast forgeries, and per-edge ones if any."""
        forged, per_edge = [], []
        theta = getattr(self.pop, "theta", None)  # models before this round's local step
        for j, attack in enumerate(self.attacks):
            prev = theta[self.lane(j), :psi.shape[1]] if isinstance(theta, torch.Tensor) else None
            ctx = AttackContext(step, psi[self.lane(j)], self.byzantine, self.run_of_node,
                                self.attack_generators[j], self.world_edges, prev, self.pop, j)
            forged.append(attack.forge(ctx))
            if self.world_byz_edges.numel():
                per_edge.append(attack.forge_edges(ctx, self.world_byz_edges))
        sent = self.workspace.get("sent", psi.shape, psi.dtype).copy_(psi)  # psi may be the population's own
        sent.index_put_((self.byz_all,), torch.cat(forged) if self.lanes > 1 else forged[0])
        if per_edge and all(p is not None for p in per_edge):
            return sent, (self.byz_edges, torch.cat(per_edge))
        return sent, (None, None)

    def lane_weights(self, j: int) -> torch.Tensor:
        """Current weights of lane j on the world's edge list."""
        return self.weights[self.lane_edges(j)]

    def lane_values(self, values: torch.Tensor | np.ndarray, j: int) -> torch.Tensor | np.ndarray:
        """Lane j's slice (a view) of a per-node tensor or numpy array ``[M*N0, ...]``."""
        return values[self.lane(j)]


def weights_dtype(population: Population) -> torch.dtype:
    return population.dtype
