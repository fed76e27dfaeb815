"""Byzantine attacks: what a Byzantine agent sends instead of an honest model.

An attack forges one broadcast vector per Byzantine agent (``forge``); an attack that sends a
different message to each neighbour also overrides per edge (``forge_edges``). Each class states
in its docstring the formula, the source, and what the attacker knows (``knows``, shown by
``p2pmtl list``). Attacks are vectorized over Byzantine agents and edges (loops run only over
independent runs, which are few) and draw randomness only from ``ctx.generators`` (one per
run), so a run's forgeries do not depend on what it is batched with.

Notation: psi_l is what agent l would send if honest (its model after the local step, row l of
``ctx.honest``); H is the set of normal (honest) agents; b a Byzantine agent; k a receiver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Optional

import torch

from ..core.edges import EdgeIndex
from ..registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")


@dataclass
class AttackContext:
    """What an attacker may look at in one round (each attack uses only what it declares).

    Server mode passes the stack of uploads as ``honest`` (rows = uploads), ``edges = None``,
    no population, and the server's ``aggregator`` (attacks that optimise against it, e.g.
    ``alie_opt``, call it on candidate stacks)."""

    step: int
    honest: torch.Tensor  # [N, D] what every agent would send if honest (psi after adaptation)
    byzantine: torch.Tensor  # [B] node ids of Byzantine agents
    run_of_node: torch.Tensor  # [N] index of the run each node belongs to
    generators: list[torch.Generator]  # one per run, so runs are independent of batching
    edges: Optional[EdgeIndex]
    previous: Optional[torch.Tensor] = None  # [N, D] models before this round's local step (server: its model)
    population: Any = None  # gossip: the population (adaptive attacks evaluate losses through it)
    lane: int = 0  # gossip: which lane (weight rule) of the population this context belongs to
    aggregator: Any = None  # server: the receiver's aggregator, a callable [n, D] -> [D] (gossip: None)
    ids: Optional[torch.Tensor] = None  # [B] who the Byzantine rows are (server: client ids, which change
    # from round to round with partial participation); None: ``byzantine`` itself (gossip)


class Attack:
    """What Byzantine agents send. Subclasses implement :meth:`forge` (one broadcast vector per
    Byzantine agent, vectorized over them) and, to send a different message to each receiver,
    :meth:`forge_edges`; they draw randomness only from ``ctx.generators`` and state in their
    docstring the formula, the source and what the attacker knows (``knows``, shown by
    ``p2pmtl list``). ``gossip_only`` attacks need a graph (refused in server mode); ``needs``
    names the population methods an adaptive attack calls (checked against the task)."""

    knows: ClassVar[str] = "nothing"
    gossip_only: ClassVar[bool] = False  # needs a graph and a population (no server mode)
    needs: ClassVar[tuple[str, ...]] = ()  # gossip: population methods the attack calls

    def setup(self, population: Any, byzantine: torch.Tensor) -> None:
        """Called once before the first forgery (data-poisoning attacks change data here)."""

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        """[B, D] broadcast messages of the Byzantine agents."""
        raise NotImplementedError

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> Optional[torch.Tensor]:
        """Optional per-edge messages ``[len(byz_edges), D]`` (edges whose sender is Byzantine)."""
        return None


# --------------------------------------------------------------------------- validation helpers


def _real(attack: str, name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
          low_open: bool = False) -> float:
    """A finite real in [low, high] (or (low, high] with ``low_open``); errors name the attack,
    the parameter, the value and the allowed range."""
    lo = "(" if low_open else "["
    rng = f"{lo}{low:g}, {high:g}]" if math.isfinite(high) else f"{lo}{low:g}, inf)"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and v <= high
    if not ok:
        raise ValueError(f"{attack} attack: {name} = {value!r}; allowed: a finite real in {rng}")
    return float(value)


def _choice(attack: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{attack} attack: {name} = {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


# --------------------------------------------------------------------------- shared vectorized pieces


def _draw(ctx: AttackContext, runs: torch.Tensor, dim: int, kind: str) -> torch.Tensor:
    """``[len(runs), dim]`` draws (``"rand"`` U[0,1) or ``"randn"``), row i from the generator of
    run ``runs[i]`` (loop over runs, never over agents)."""
    out = torch.empty((runs.numel(), dim), dtype=ctx.honest.dtype)
    fn = torch.rand if kind == "rand" else torch.randn
    for r, gen in enumerate(ctx.generators):
        rows = torch.nonzero(runs == r).flatten()
        if rows.numel():
            out[rows] = fn((rows.numel(), dim), generator=gen, dtype=ctx.honest.dtype)
    return out


def per_run_uniform(ctx: AttackContext, low: float, high: float, dim: int) -> torch.Tensor:
    """U[low, high] values for every Byzantine agent, drawn from its own run's generator."""
    return low + (high - low) * _draw(ctx, ctx.run_of_node[ctx.byzantine], dim, "rand")


def honest_mask(ctx: AttackContext) -> torch.Tensor:
    mask = torch.ones(ctx.honest.shape[0], dtype=torch.bool)
    mask[ctx.byzantine] = False
    return mask


def _byz_position(ctx: AttackContext) -> torch.Tensor:
    """[N] index of each node in ``ctx.byzantine`` (-1 for normal nodes)."""
    pos = torch.full((ctx.honest.shape[0],), -1, dtype=torch.long)
    pos[ctx.byzantine] = torch.arange(ctx.byzantine.numel())
    return pos


def honest_groups(ctx: AttackContext, scope: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The honest vectors each Byzantine agent looks at, as (group index [K], honest node [K],
    group size n_b [B] counting every member of b's group, Byzantine ones included).

    ``scope = "all"``: every normal agent of b's run (server mode: every honest upload), and
    n_b = agents in the run. ``"neighbours"``: b's normal out-neighbours (the agents that
    receive b's message), and n_b = 1 + its out-neighbours (b included)."""
    honest = honest_mask(ctx)
    if scope == "neighbours" and ctx.edges is not None:
        e = ctx.edges
        pos = _byz_position(ctx)
        out = (pos[e.src] >= 0) & (e.src != e.dst)
        sel = out & honest[e.dst]
        sizes = torch.bincount(pos[e.src[out]], minlength=ctx.byzantine.numel()) + 1
        return pos[e.src[sel]], e.dst[sel], sizes
    runs = ctx.run_of_node
    nodes = torch.nonzero(honest).flatten()
    # group of honest node h for Byzantine b: same run. Pairs (b, h) of one run, vectorized.
    byz_run = runs[ctx.byzantine]
    pair_b, pair_h = torch.nonzero(byz_run.unsqueeze(1) == runs[nodes].unsqueeze(0), as_tuple=True)
    sizes = torch.bincount(runs, minlength=len(ctx.generators) or 1)[byz_run]
    return pair_b, nodes[pair_h], sizes


def group_mean_std(values: torch.Tensor, group: torch.Tensor, members: torch.Tensor,
                   groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean and (population, ddof 0) standard deviation of ``values[members]``
    per group, and the member count; groups without members get mean 0, std 0, count 0."""
    d = values.shape[1]
    count = torch.bincount(group, minlength=groups).to(values.dtype).unsqueeze(1)
    rows = values[members]
    s = torch.zeros((groups, d), dtype=values.dtype).index_add_(0, group, rows)
    mean = s / count.clamp_min(1)
    dev = rows - mean[group]
    var = torch.zeros((groups, d), dtype=values.dtype).index_add_(0, group, dev * dev) / count.clamp_min(1)
    return mean, var.sqrt(), count.squeeze(1)


def honest_stats(ctx: AttackContext, scope: str, values: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`group_mean_std` of ``values`` over each Byzantine agent's honest group
    (:func:`honest_groups`): ``[B, D]`` mean, ``[B, D]`` std, ``[B]`` count. With ``scope =
    "all"`` (or no graph) every Byzantine agent of a run shares its group, so the statistics
    are computed once per run and gathered (the same sums in the same order: identical values,
    without a ``[B * honest, D]`` copy)."""
    b = ctx.byzantine.numel()
    if scope == "neighbours" and ctx.edges is not None:
        group, members, _ = honest_groups(ctx, scope)
        return group_mean_std(values, group, members, b)
    runs = ctx.run_of_node
    nodes = torch.nonzero(honest_mask(ctx)).flatten()
    mean, std, count = group_mean_std(values, runs[nodes], nodes, int(runs.max()) + 1 if runs.numel() else 1)
    byz_run = runs[ctx.byzantine]
    return mean[byz_run], std[byz_run], count[byz_run]


def _edge_receivers(ctx: AttackContext, byz_edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index into ctx.byzantine of each edge's sender, receiver node) of ``byz_edges``."""
    pos = _byz_position(ctx)
    return pos[ctx.edges.src[byz_edges]], ctx.edges.dst[byz_edges]


# --------------------------------------------------------------------------- attacks without knowledge


@ATTACKS.register("uniform", "every coordinate drawn from U[low, high] (Li2020 sec. 7)")
class UniformAttack(Attack):
    """m_b = v_b, v_b,j ~ U[low, high] i.i.d. (Li2020 sec. 7: [15, 16] for target localization,
    [0, 0.1] for digits). ``redraw = "once"`` draws the vector once per attacker (the reference
    code); ``"every_step"`` draws afresh each iteration (the paper's text). Knows nothing.

    In server mode with partial participation the Byzantine rows of a round are whichever
    Byzantine clients were picked (``ctx.ids``): each keeps the vector drawn the first round it
    was picked."""

    knows = "nothing"

    def __init__(self, *, low: float = 15.0, high: float = 16.0, redraw: str = "once") -> None:
        low, high = _real("uniform", "low", low), _real("uniform", "high", high)
        if not high >= low:
            raise ValueError(f"uniform attack: high = {high} must be >= low = {low}")
        self.low, self.high = low, high
        self.redraw = _choice("uniform", "redraw", redraw, ("once", "every_step"))
        self._fixed: Optional[torch.Tensor] = None
        self._by_id: dict[int, torch.Tensor] = {}  # server mode: each client's vector

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if self.redraw == "every_step":
            return per_run_uniform(ctx, self.low, self.high, ctx.honest.shape[1])
        if ctx.ids is None:  # gossip: the same Byzantine agents every step
            if self._fixed is None:
                self._fixed = per_run_uniform(ctx, self.low, self.high, ctx.honest.shape[1])
            return self._fixed
        ids = ctx.ids.tolist()
        new = [k for k, i in enumerate(ids) if i not in self._by_id]
        if new:  # first time picked: drawn in the order of the round's rows
            drawn = per_run_uniform(replace(ctx, byzantine=ctx.byzantine[new]), self.low, self.high,
                                    ctx.honest.shape[1])
            for k, v in zip(new, drawn):
                self._by_id[ids[k]] = v
        return torch.stack([self._by_id[i] for i in ids]).to(ctx.honest.dtype)


# --------------------------------------------------------------------------- attacks on the own model


@ATTACKS.register("scaled", "own parameters times factor * U(0,1), drawn each step (Li2020 reference digits code)")
class ScaledAttack(Attack):
    """m_b = s_b psi_b with s_b = factor * U(0,1) (a fresh draw per agent and step; ``random =
    false`` uses s_b = factor). Li2020's digit reference code uses factor 0.1. Knows its own
    model only."""

    knows = "its own model"

    def __init__(self, *, factor: float = 0.1, random: bool = True) -> None:
        self.factor = _real("scaled", "factor", factor)
        if not isinstance(random, bool):
            raise ValueError(f"scaled attack: random = {random!r}; allowed: true, false")
        self.random = random

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        own = ctx.honest[ctx.byzantine]
        if not self.random:
            return self.factor * own
        scale = per_run_uniform(ctx, 0.0, self.factor, 1)  # [B, 1]
        return scale.to(own.dtype) * own


@ATTACKS.register("gaussian", "own parameters plus sigma * N(0, I), drawn each step (BR-MTRL)")
class GaussianAttack(Attack):
    """m_b = psi_b + sigma z, z ~ N(0, I) fresh each step (Le and Moothedath 2025, sec. V;
    sigma is not given in the paper: a setting). Knows its own model only."""

    knows = "its own model"

    def __init__(self, *, sigma: float = 1.0) -> None:
        self.sigma = _real("gaussian", "sigma", sigma, low=0.0)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        own = ctx.honest[ctx.byzantine]
        noise = _draw(ctx, ctx.run_of_node[ctx.byzantine], own.shape[1], "randn")
        return own + self.sigma * noise


@ATTACKS.register("sign_flip", "minus scale times its own parameters (sign flipping)")
class SignFlipAttack(Attack):
    """m_b = -scale psi_b: the honest message with its sign flipped (the sign-flipping attack of
    Allen-Zhu et al. 2021 and Karimireddy et al. 2021, applied to the message, here a model).
    Knows its own model only."""

    knows = "its own model"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = _real("sign_flip", "scale", scale, low=0.0, low_open=True)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        return -self.scale * ctx.honest[ctx.byzantine]


# --------------------------------------------------------------------------- omniscient attacks


SCOPES = ("neighbours", "all")


@ATTACKS.register("alie", "a little is enough: mean - z * std of the honest messages (Baruch et al. 2019)")
class ALittleIsEnoughAttack(Attack):
    """"A little is enough" (Baruch, Baruch, Goldberg, NeurIPS 2019, Algorithm 3):
    m_b = mu - z sigma, with mu_j and sigma_j the coordinate-wise mean and standard deviation
    (ddof 0) of the honest messages b looks at, and by default the paper's z:
    s = floor(n/2 + 1) - f, z = Phi^{-1}((n - s) / n), where n is the number of agents in that
    group and f the Byzantine ones (s is clamped to >= 1 so z stays finite when f >= n/2).
    ``z`` overrides it. Omniscient: knows the honest messages of its group.

    ``scope = "neighbours"`` (gossip): the group is b's out-neighbourhood: mu, sigma over its
    normal out-neighbours, n = 1 + out-degree, f = 1 + Byzantine out-neighbours. ``"all"``: every
    normal agent of the run (server mode always: the honest uploads of the round). A Byzantine
    agent with no honest receiver sends its own honest model. (The paper writes mu + z sigma in
    places; the sign only picks the side, we follow the common mu - z sigma.)"""

    knows = "omniscient: the honest messages of its neighbourhood (or of all agents)"

    def __init__(self, *, z: Optional[float] = None, scope: str = "neighbours") -> None:
        self.z = None if z is None else _real("alie", "z", z)
        self.scope = _choice("alie", "scope", scope, SCOPES)

    @staticmethod
    def paper_z(n: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Baruch et al.'s z_max = Phi^{-1}((n - s)/n), s = floor(n/2 + 1) - f (clamped >= 1)."""
        n = n.to(torch.float64)
        s = (torch.floor(n / 2 + 1) - f.to(torch.float64)).clamp_min(1)
        return torch.special.ndtri(((n - s) / n).clamp(1e-12, 1 - 1e-12))

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        b = ctx.byzantine.numel()
        _, _, sizes = honest_groups(ctx, self.scope)
        mu, sigma, count = honest_stats(ctx, self.scope, ctx.honest)
        if self.z is not None:
            z = torch.full((b,), self.z, dtype=torch.float64)
        else:
            z = self.paper_z(sizes, sizes - count.to(sizes.dtype))
        out = mu - z.to(mu.dtype).unsqueeze(1) * sigma
        alone = count == 0
        return torch.where(alone.unsqueeze(1), ctx.honest[ctx.byzantine], out)


@ATTACKS.register("ipm", "inner-product manipulation: reference - eps * mean honest update (Xie et al. 2019)")
class InnerProductManipulationAttack(Attack):
    """Inner-product manipulation (Xie, Koyejo, Gupta, UAI 2019, "Fall of empires"): Byzantine
    agents send -eps times the mean honest update, so that its inner product with the true
    update turns negative. Here messages are models, so updates are taken from a reference:
    m_b = r - eps * mean_h (psi_h - prev_h), r = mean_h prev_h, over the honest agents h of b's
    group (``scope`` as in ``alie``), where prev_h is h's model before the local step (server
    mode: the server's model, so m = server model - eps * mean honest update, Xie's attack
    exactly). Without ``previous`` in the context r = 0 and m_b = -eps * mean_h psi_h. Small
    eps (0.1) targets median- and Krum-like rules, large eps the mean. Omniscient."""

    knows = "omniscient: the honest messages (and previous models) of its neighbourhood or of all"

    def __init__(self, *, eps: float = 0.1, scope: str = "neighbours") -> None:
        self.eps = _real("ipm", "eps", eps, low=0.0)
        self.scope = _choice("ipm", "scope", scope, SCOPES)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        prev = ctx.previous if ctx.previous is not None else torch.zeros_like(ctx.honest)
        mean_psi, _, count = honest_stats(ctx, self.scope, ctx.honest)
        mean_prev, _, _ = honest_stats(ctx, self.scope, prev)
        out = mean_prev - self.eps * (mean_psi - mean_prev)
        return torch.where((count == 0).unsqueeze(1), ctx.honest[ctx.byzantine], out)


# --------------------------------------------------------------------------- data poisoning


@ATTACKS.register("label_flip", "data poisoning: trains honestly on flipped labels y -> C-1-y (or y+shift mod C)")
class LabelFlipAttack(Attack):
    """Label flipping (data poisoning; e.g. Biggio et al. 2012, Fang et al. 2020): the Byzantine
    agent keeps its data but relabels every training example, y -> C - 1 - y (``flip =
    "reverse"``) or y -> (y + shift) mod C (``flip = "shift"``), then trains and sends its model
    honestly: m_b = psi_b. Only classification tasks (digits, federated_images, har); labels of
    normal agents are untouched. In gossip mode the labels are flipped before the first
    forgery, so the round-0 local step still used true labels; Byzantine digit agents, frozen
    under other attacks, train. Knows its own data only."""

    knows = "its own data"
    needs = ("poison_labels",)

    def __init__(self, *, flip: str = "reverse", shift: int = 1) -> None:
        self.flip = _choice("label_flip", "flip", flip, ("reverse", "shift"))
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 1:
            raise ValueError(f"label_flip attack: shift = {shift!r}; allowed: an integer >= 1")
        self.shift = shift

    def relabel(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return (num_classes - 1 - y) if self.flip == "reverse" else (y + self.shift) % num_classes

    def setup(self, population: Any, byzantine: torch.Tensor) -> None:
        if hasattr(population, "train") and hasattr(population, "num_classes"):  # server-mode clients
            for i in byzantine.tolist():
                x, y = population.train[i]
                population.train[i] = (x, self.relabel(y, population.num_classes))
            return
        if not hasattr(population, "poison_labels"):
            raise ValueError(f"label_flip attack: task {type(population).__name__} has no labels to flip; "
                             "allowed tasks: digits, federated_images, har")
        population.poison_labels(byzantine, self.relabel)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        return ctx.honest[ctx.byzantine]


# --------------------------------------------------------------------------- per-neighbour attacks


@ATTACKS.register("two_faced", "honest to a random share of its receivers, U[low, high] values to the others")
class TwoFacedAttack(Attack):
    """A Byzantine agent that sends a different message to each neighbour: for each out-edge
    b -> k, drawn once per edge, receiver k gets the honest model psi_b with probability
    ``honest_fraction``; the others get a fresh U[low, high] vector per edge and step. Its
    broadcast row (its self edge) is psi_b. Knows its own model only. (Gossip mode only.)"""

    knows = "its own model"
    gossip_only = True

    def __init__(self, *, low: float = 15.0, high: float = 16.0, honest_fraction: float = 0.5) -> None:
        self.low, self.high = _real("two_faced", "low", low), _real("two_faced", "high", high)
        if not self.high >= self.low:
            raise ValueError(f"two_faced attack: high = {high} must be >= low = {low}")
        self.honest_fraction = _real("two_faced", "honest_fraction", honest_fraction, low=0.0, high=1.0)
        self._fooled: Optional[torch.Tensor] = None

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.edges is None:
            raise ValueError("two_faced attack needs a graph (gossip mode)")
        return ctx.honest[ctx.byzantine]

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> torch.Tensor:
        runs = ctx.run_of_node[ctx.edges.src[byz_edges]]
        if self._fooled is None:  # which receivers get honest messages: once per edge
            self._fooled = _draw(ctx, runs, 1, "rand").squeeze(1) >= self.honest_fraction
        own = ctx.honest[ctx.edges.src[byz_edges]]
        noise = self.low + (self.high - self.low) * _draw(ctx, runs, own.shape[1], "rand")
        return torch.where(self._fooled.unsqueeze(1), noise, own)


@ATTACKS.register("dissensus", "to each receiver: its own model pushed away from its honest neighbours (He et al. 2022)")
class DissensusAttack(Attack):
    """Dissensus (He, Karimireddy, Jaggi 2022, "Byzantine-robust decentralized learning via
    ClippedGossip", sec. 6, with uniform weights): to each normal receiver k, Byzantine b sends
    m_bk = psi_k - eps * (|H_k| / |B_k|) * (mean_{h in H_k} psi_h - psi_k), H_k and B_k the
    normal and Byzantine in-neighbours of k (k excluded). Under averaging the Byzantine
    messages cancel eps times the pull of k's honest neighbours (eps > 1 pushes k away from
    them): neighbours drift apart. Omniscient: knows every receiver's and its neighbours'
    messages. (Gossip mode only.)"""

    knows = "omniscient: its receivers' models and their neighbours' messages"
    gossip_only = True

    def __init__(self, *, eps: float = 1.5) -> None:
        self.eps = _real("dissensus", "eps", eps, low=0.0)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.edges is None:
            raise ValueError("dissensus attack needs a graph (gossip mode)")
        return ctx.honest[ctx.byzantine]

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> torch.Tensor:
        e, psi = ctx.edges, ctx.honest
        honest = honest_mask(ctx)
        other = e.src != e.dst
        h_edge = (other & honest[e.src]).to(psi.dtype)
        b_edge = (other & ~honest[e.src]).to(psi.dtype)
        n_h = e.segment_sum(h_edge)  # [N] honest in-neighbours
        n_b = e.segment_sum(b_edge)
        sum_h = e.segment_sum(h_edge.unsqueeze(1) * e.gather(psi))
        mean_h = sum_h / n_h.clamp_min(1).unsqueeze(1)
        push = (n_h / n_b.clamp_min(1)).unsqueeze(1) * (mean_h - psi)  # [N, D]
        k = e.dst[byz_edges]
        return psi[k] - self.eps * push[k]


@ATTACKS.register("adaptive_loss", "to each receiver: a model pulled towards a target with loss just below the receiver's own")
class AdaptiveLossAttack(Attack):
    """Adaptive attack on the loss-based rule (Li2020 eqs. 9-10), which keeps neighbour l when
    its smoothed loss on k's data is at most k's own. To each normal receiver k, Byzantine b
    sends m_bk = psi_k + t d_bk with d_bk = T_b - psi_k (the pull towards b's target T_b), and
    t the largest of 1, 1/2, ..., 2^-(steps-1) with l(m_bk; xi_k) <= (1 - margin) l(psi_k;
    xi_k); if none passes, m_bk = psi_k (an exact tie, which the filter keeps). Since every
    instantaneous loss is at most k's own, so is the smoothed score, and b is never filtered.
    ``project = true`` first removes from d_bk its component along the gradient of k's loss at
    psi_k (first-order loss-neutral; exact for target localization, whose loss has rank-one
    curvature; needs a population with ``loss_grads_of``). Targets: ``"uniform"`` (U[low, high]
    drawn once per attacker, Li2020's values) or ``"zero"``. Omniscient: knows each receiver's
    current model and current batch (its data). Scores per edge cost ``steps + 1`` forward
    passes. (Gossip mode only.)"""

    knows = "omniscient: each receiver's current model and current data"
    gossip_only = True
    needs = ("losses_of",)

    def __init__(self, *, target: str = "uniform", low: float = 15.0, high: float = 16.0,
                 steps: int = 12, margin: float = 0.0, project: bool = False) -> None:
        self.target = _choice("adaptive_loss", "target", target, ("uniform", "zero"))
        self.low, self.high = _real("adaptive_loss", "low", low), _real("adaptive_loss", "high", high)
        if not self.high >= self.low:
            raise ValueError(f"adaptive_loss attack: high = {high} must be >= low = {low}")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 60:
            raise ValueError(f"adaptive_loss attack: steps = {steps!r}; allowed: an integer in [1, 60]")
        self.steps = steps
        self.margin = _real("adaptive_loss", "margin", margin, low=0.0, high=1.0)
        if not isinstance(project, bool):
            raise ValueError(f"adaptive_loss attack: project = {project!r}; allowed: true, false")
        self.project = project
        self._target: Optional[torch.Tensor] = None
        self.last_t: Optional[torch.Tensor] = None  # step sizes chosen last round (diagnostics, tests)

    def _targets(self, ctx: AttackContext) -> torch.Tensor:
        if self._target is None:
            d = ctx.honest.shape[1]
            self._target = (per_run_uniform(ctx, self.low, self.high, d) if self.target == "uniform"
                            else torch.zeros((ctx.byzantine.numel(), d), dtype=ctx.honest.dtype))
        return self._target

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.edges is None or ctx.population is None or not hasattr(ctx.population, "losses_of"):
            raise ValueError("adaptive_loss attack needs gossip mode and a task with losses_of "
                             "(target_localization, digits, har)")
        return self._targets(ctx)

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> torch.Tensor:
        pop, psi = ctx.population, ctx.honest
        who, k = _edge_receivers(ctx, byz_edges)
        victims = honest_mask(ctx)[k]
        out = psi[k].clone()  # Byzantine receivers: anything (their scores are unused)
        self.last_t = torch.zeros(byz_edges.numel(), dtype=torch.float64)
        if not victims.any():
            return out
        kv, own = k[victims], psi[k[victims]]
        d = self._targets(ctx)[who[victims]] - own
        if self.project:
            if not hasattr(pop, "loss_grads_of"):
                raise ValueError(f"adaptive_loss attack: project = true needs loss gradients; task "
                                 f"{type(pop).__name__} has none (use project = false)")
            g = pop.loss_grads_of(own, kv, ctx.lane)
            gg = (g * g).sum(1, keepdim=True)
            d = d - torch.where(gg > 0, (d * g).sum(1, keepdim=True) / gg.clamp_min(1e-300), 0.0) * g
        ts = 0.5 ** torch.arange(self.steps, dtype=psi.dtype)  # [S], largest first
        cand = own.unsqueeze(0) + ts.view(-1, 1, 1) * d.unsqueeze(0)  # [S, K, D]
        s, kk = ts.numel(), kv.numel()
        losses = pop.losses_of(torch.cat([own, cand.reshape(s * kk, -1)]), kv.repeat(s + 1), ctx.lane)
        base, cl = losses[:kk], losses[kk:].view(s, kk)
        ok = torch.isfinite(cl) & (cl <= (1 - self.margin) * base.unsqueeze(0))
        first = torch.where(ok.any(0), ok.to(torch.int8).argmax(0), s)  # first passing step size
        t = torch.where(first < s, ts[first.clamp_max(s - 1)], torch.zeros((), dtype=psi.dtype))
        out[victims] = own + t.unsqueeze(1) * d
        self.last_t[victims] = t.double()
        return out


def make_attack(name: str, **params) -> Attack:
    return ATTACKS.get(name)(**params)
