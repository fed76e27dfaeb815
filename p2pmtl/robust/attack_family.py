"""More attacks (issue "RESAM", item 3): ``mimic``, ``inf``, and ALIE / IPM with their factor
optimised each round against the receiver's aggregator (``alie_opt``, ``ipm_opt``).

Sources:

- ``mimic``: Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
  bucketing", ICLR 2022 (every Byzantine worker copies one honest worker, over-weighting it;
  the paper's heuristic picks it along the top principal direction of the honest messages).
  The ByzFL library's ``Mimic`` copies a fixed worker (``target = "first"`` here);
- ``inf``: not an attack from the literature but a probe of the hostile-input path (every
  coordinate +inf, as ByzFL's ``Inf``; or -inf, or NaN): server mode drops such uploads before
  any aggregator (``uploads_dropped_nonfinite``), gossip gives such messages weight 0;
- ``alie_opt``, ``ipm_opt``: "a little is enough" (Baruch et al. 2019) and inner-product
  manipulation (Xie et al. 2019), see :mod:`p2pmtl.robust.attacks`, with the factor (z, eps)
  chosen each round to maximise || F(x) - mean of the honest inputs ||, as ByzFL's
  ``Optimal_ALittleIsEnough`` and ``Optimal_InnerProductManipulation`` (by the ByzFL team,
  the RESAM authors' group; used in Allouah et al., "Fixing by mixing", AISTATS 2023). ByzFL
  searches the factor by a line search (20 evaluations: steps from 0 that double while the
  distance grows, then shrink by 0.8); here the search is a fixed grid of candidates
  (deterministic, the same cost: one aggregator call per candidate and group), see
  :class:`OptimisedALIE`.

Notation as in :mod:`p2pmtl.robust.attacks`: psi_l is what agent l would send if honest (row l
of ``ctx.honest``), b a Byzantine agent, F the aggregator under attack.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Sequence

import torch

from .aggregators import AGGREGATORS, PRE_AGGREGATORS, accepted_params, check_inputs, make_aggregator
from .attacks import (
    ATTACKS,
    SCOPES,
    ALittleIsEnoughAttack,
    Attack,
    AttackContext,
    _choice,
    _real,
    honest_groups,
    honest_stats,
    honest_mask,
)

MIMIC_TARGETS = ("first", "max_variance")
IPM_DEFAULT_EPS = 0.1  # the default eps of the plain ``ipm`` attack


# --------------------------------------------------------------------------- mimic


def top_direction_target(rows: torch.Tensor) -> int:
    """Index of the row whose deviation from the rows' mean has the largest absolute projection
    on the top principal direction of the rows (0 when all rows are equal or the Gram matrix is
    not finite).

    With A the centred rows and u the top eigenvector of the Gram matrix G = A A^T (computed
    exactly by ``eigh`` in float64: deterministic, and cheap for the few hundred rows of a run),
    the top principal direction is z = A^T u / ||A^T u|| and the projections are A z = lambda u
    / ||A^T u||, so the target is argmax_i |u_i| (the first on ties)."""
    if rows.shape[0] < 2:
        return 0
    a = rows.to(torch.float64)
    a = a - a.mean(0)
    g = a @ a.T
    if not bool(torch.isfinite(g).all()) or float(g.diagonal().max()) == 0.0:
        return 0
    _, vectors = torch.linalg.eigh(g)
    return int(vectors[:, -1].abs().argmax())


@ATTACKS.register("mimic", "every Byzantine agent sends a copy of one honest agent's message (Karimireddy et al. 2022)")
class MimicAttack(Attack):
    """Mimic (Karimireddy, He, Jaggi, ICLR 2022, "Byzantine-robust learning on heterogeneous
    datasets via bucketing"): every Byzantine agent b sends m_b = psi_{i*}, a copy of
    the message of one honest agent i* of its run (server mode: one honest upload of the
    round). Nothing it sends is an outlier, yet with heterogeneous data it over-weights one
    agent's data and under-weights the others'.

    ``target = "first"``: i* is the lowest-index honest node of the run. ``"max_variance"``
    (the paper's heuristic): i* maximises |<psi_i - mu, z>| over the honest agents i of the
    run, mu their mean and z the top principal direction of their messages (the direction in
    which the honest messages vary most; computed exactly from the Gram matrix of the run's
    honest messages each round, see :func:`top_direction_target`; the paper estimates z by
    power iteration during the first rounds, from a random start whose sign z keeps; the
    absolute value here makes the choice independent of z's sign). A
    run without honest agents sends its own models. ``last_targets`` holds the node copied by
    each Byzantine agent in the last round. Loops run over runs only. Omniscient: knows the
    honest messages of its run."""

    knows = "omniscient: the honest messages of its run (server mode: the honest uploads of the round)"

    def __init__(self, *, target: str = "max_variance") -> None:
        self.target = _choice("mimic", "target", target, MIMIC_TARGETS)
        self.last_targets: Optional[torch.Tensor] = None

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        honest, runs = honest_mask(ctx), ctx.run_of_node
        byz_run = runs[ctx.byzantine]
        targets = ctx.byzantine.clone()  # a run without honest agents: its own model
        for r in torch.unique(byz_run).tolist():
            nodes = torch.nonzero(honest & (runs == r)).flatten()
            if nodes.numel() == 0:
                continue
            pick = 0 if self.target == "first" else top_direction_target(ctx.honest[nodes])
            targets[byz_run == r] = nodes[pick]
        self.last_targets = targets
        return ctx.honest[targets]


# --------------------------------------------------------------------------- inf


@ATTACKS.register("inf", "every coordinate +inf (or -inf, or NaN): probes the hostile-input path (dropped)")
class InfAttack(Attack):
    """m_b = (s inf, ..., s inf) with s = ``sign`` (+1 or -1), or NaN in every coordinate with
    ``nan = true``. Not an attack from the literature (ByzFL's ``Inf``) but a check of the
    hostile-input path: server mode drops uploads with a non-finite entry before any
    pre-aggregation step or aggregator (counted: ``uploads_dropped_nonfinite``), and in gossip
    mode a non-finite message is invalid and gets weight 0, so under this attack every run
    behaves as if the Byzantine agents were silent. Knows nothing."""

    knows = "nothing"

    def __init__(self, *, sign: int = 1, nan: bool = False) -> None:
        if isinstance(sign, bool) or not isinstance(sign, int) or sign not in (1, -1):
            raise ValueError(f"inf attack: sign = {sign!r}; allowed: 1, -1")
        if not isinstance(nan, bool):
            raise ValueError(f"inf attack: nan = {nan!r}; allowed: true, false")
        self.sign, self.nan = sign, nan

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        value = math.nan if self.nan else self.sign * math.inf
        return torch.full((ctx.byzantine.numel(), ctx.honest.shape[1]), value, dtype=ctx.honest.dtype)


# --------------------------------------------------------------------------- optimised ALIE / IPM


def _too_few(aggregator: Any, n: int) -> bool:
    """True when ``n`` inputs are too few for ``aggregator`` (its own ``_check_n`` and those of
    a pipeline's steps; a plain callable needs one input)."""
    try:
        check_inputs(aggregator, n)
    except ValueError:
        return True
    return False


class _FactorSearch(Attack):
    """Shared machinery of ``alie_opt`` and ``ipm_opt``: m_b(c) = base_b - c * direction_b, the
    factor c chosen by a grid search per group (see :class:`OptimisedALIE`)."""

    attack_name: ClassVar[str] = "?"
    factor_name: ClassVar[str] = "factor"
    factor_low: ClassVar[float] = -math.inf  # smallest allowed entry of ``factors``

    def __init__(self, *, factors: Optional[Sequence[float]] = None, low: float = 0.1, high: float = 100.0,
                 num: int = 12, baseline: bool = True, scope: str = "neighbours", aggregator: Optional[str] = None,
                 f: Optional[int] = None, pre: Optional[Sequence[str]] = None,
                 aggregator_params: Optional[dict] = None) -> None:
        name = self.attack_name
        pre = [] if pre is None else pre
        self.scope = _choice(name, "scope", scope, SCOPES)
        if factors is not None:
            ok = (isinstance(factors, (list, tuple)) and 1 <= len(factors) <= 1000
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          and v >= self.factor_low for v in factors))
            if not ok:
                lo = "" if not math.isfinite(self.factor_low) else f" >= {self.factor_low:g}"
                raise ValueError(f"{name} attack: factors = {factors!r}; allowed: a list of 1 to 1000 "
                                 f"finite reals{lo}")
            grid = sorted(set(float(v) for v in factors))
        else:
            low = _real(name, "low", low, low=0.0, low_open=True)
            high = _real(name, "high", high, low=low)
            if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= 1000:
                raise ValueError(f"{name} attack: num = {num!r}; allowed: an integer in [1, 1000]")
            grid = ([low] if num == 1 else
                    [low * (high / low) ** (i / (num - 1)) for i in range(num)])
        self.grid = torch.tensor(grid, dtype=torch.float64)
        if not isinstance(baseline, bool):
            raise ValueError(f"{name} attack: baseline = {baseline!r}; allowed: true, false")
        self.baseline = baseline
        self.model = self._build_model(aggregator, f, pre, aggregator_params)
        self.aggregator, self.f, self.pre = aggregator, f, list(pre)
        self.aggregator_params = dict(aggregator_params or {})
        self.last_factors: Optional[torch.Tensor] = None  # [B] factor chosen last round
        self.last_search: list[dict] = []  # per group: byzantine (indices into ctx.byzantine), candidates, distances

    def _build_model(self, aggregator: Optional[str], f: Optional[int], pre: Sequence[str],
                     params: Optional[dict]) -> Any:
        """The attacker's own model of the defence (``aggregator``, ``f``, ``pre``,
        ``aggregator_params``), or None."""
        name = self.attack_name
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 0):
            raise ValueError(f"{name} attack: f = {f!r}; allowed: an integer >= 0 (with aggregator)")
        if not isinstance(pre, (list, tuple)) or any(not isinstance(p, str) or p not in PRE_AGGREGATORS for p in pre):
            raise ValueError(f"{name} attack: pre = {pre!r}; allowed: a list of pre-aggregation steps "
                             f"({', '.join(PRE_AGGREGATORS.names())})")
        if params is not None and (not isinstance(params, dict) or "f" in params):
            raise ValueError(f"{name} attack: aggregator_params = {params!r}; allowed: a table of the "
                             f"aggregator's parameters other than f (f is the attack's own parameter)")
        if aggregator is None:
            if f is not None or pre or params:
                raise ValueError(f"{name} attack: f, pre and aggregator_params describe the aggregator "
                                 f"parameter, which is not "
                                 f"given; allowed: aggregator = one of {', '.join(AGGREGATORS.names())}")
            return None
        if not isinstance(aggregator, str) or aggregator not in AGGREGATORS:
            raise ValueError(f"{name} attack: aggregator = {aggregator!r}; allowed: "
                             f"{', '.join(AGGREGATORS.names())}")
        classes = [AGGREGATORS.get(aggregator)] + [PRE_AGGREGATORS.get(p) for p in pre]
        takes_f = any("f" in accepted_params(c) for c in classes)
        try:
            return make_aggregator(aggregator, pre=list(pre), **(params or {}),
                                   **({"f": f} if takes_f and f is not None else {}))
        except ValueError as e:
            raise ValueError(f"{name} attack: aggregator = {aggregator!r}: {e} (give f as the attack's "
                             f"parameter f, others in aggregator_params)") from None

    # subclasses: per Byzantine agent, base [B, D], direction [B, D], plain attack's factor [B]
    def _family(self, ctx: AttackContext, group: torch.Tensor, members: torch.Tensor,
                sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(base, direction, default factor, honest mean, honest count), one row per Byzantine agent."""
        raise NotImplementedError

    def _stacks(self, ctx: AttackContext):
        """The inputs the attacker models: (indices into ``ctx.byzantine`` sharing the stack,
        nodes of the stack in order). ``"neighbours"`` (gossip): b and its out-neighbours;
        otherwise every node of b's run (server mode: every upload of the round)."""
        if self.scope == "neighbours" and ctx.edges is not None:
            e = ctx.edges
            for i, b in enumerate(ctx.byzantine.tolist()):
                nbrs = e.dst[(e.src == b) & (e.dst != b)]
                yield torch.tensor([i]), torch.unique(torch.cat([torch.tensor([b]), nbrs]))
            return
        runs = ctx.run_of_node
        byz_run = runs[ctx.byzantine]
        for r in torch.unique(byz_run).tolist():
            yield torch.nonzero(byz_run == r).flatten(), torch.nonzero(runs == r).flatten()

    def candidates(self, default: float) -> torch.Tensor:
        """The factors tried for a group whose plain attack would use ``default``: the grid,
        and ``default`` too with ``baseline = true``; ascending (ties go to the smaller)."""
        if not self.baseline or not math.isfinite(default):
            return self.grid
        return torch.unique(torch.cat([self.grid, torch.tensor([default], dtype=torch.float64)]))

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        name = self.attack_name
        agg = self.model if self.model is not None else ctx.aggregator
        if agg is None:
            raise ValueError(f"{name} attack: no aggregator to optimise against; in gossip mode (no server "
                             f"aggregator) give the attack's parameter aggregator (one of "
                             f"{', '.join(AGGREGATORS.names())}) and f if it takes one")
        group, members, sizes = honest_groups(ctx, self.scope)
        base, direction, default, center, count = self._family(ctx, group, members, sizes)
        chosen = default.clone()
        honest = honest_mask(ctx)
        dtype = ctx.honest.dtype
        self.last_search = []
        for idx, nodes in self._stacks(ctx):
            rep = int(idx[0])
            if count[rep] == 0:
                continue
            bad = ~honest[nodes]
            cands = self.candidates(float(default[rep]))
            dist = torch.full((cands.numel(),), math.nan, dtype=torch.float64)
            if not _too_few(agg, nodes.numel()):
                stack = ctx.honest[nodes].clone()
                for k, c in enumerate(cands.tolist()):
                    forged = base[rep] - torch.tensor(c, dtype=torch.float64).to(dtype) * direction[rep]
                    stack[bad] = forged.to(stack.dtype)
                    out = agg(stack)
                    if bool(torch.isfinite(out).all()):
                        dist[k] = float((out.to(torch.float64) - center[rep].to(torch.float64)).norm())
            ok = ~torch.isnan(dist)
            if ok.any():  # the first (smallest) factor among those at the largest distance
                best = torch.where(ok, dist, -math.inf)
                chosen[idx] = cands[int(torch.nonzero(best == best.max()).flatten()[0])]
            self.last_search.append({"byzantine": idx, "candidates": cands, "distances": dist})
        self.last_factors = chosen
        out = base - chosen.to(dtype).unsqueeze(1) * direction
        return torch.where((count == 0).unsqueeze(1), ctx.honest[ctx.byzantine], out)


@ATTACKS.register("alie_opt", "ALIE with z chosen each round to push the aggregate furthest from the honest mean")
class OptimisedALIE(_FactorSearch):
    """ALIE with an optimised factor: m_b = mu - z* sigma (mu, sigma the coordinate-wise mean
    and standard deviation, ddof 0, of the honest messages of b's group, exactly as ``alie``),
    with z* = argmax_z || F(x(z)) - mu ||, F the aggregator under attack (Baruch et al. 2019
    for the form; the optimised factor as ByzFL's ``Optimal_ALittleIsEnough``, used in Allouah
    et al. 2023, which finds it by a line search rather than a grid). The plain attack's factor
    is the paper's z (see ``alie``).

    The factor is chosen each round, per group of inputs the attacker models, by a grid search:
    every candidate c (the grid: ``factors`` if given, else ``num`` log-spaced values from
    ``low`` to ``high``; with ``baseline = true`` also the plain attack's factor, so the
    optimised attack is never weaker than the plain one under the modelled aggregator) is
    tried once: x = the stack with the Byzantine rows replaced by m(c), score
    || F(x) - mean of the honest rows of x ||; the factor with the largest score wins (ties: the
    smaller factor). A candidate whose aggregate has a NaN or inf entry is skipped; if none is
    left, or the stack is too small for F (e.g. Krum's n >= 2f + 3), the plain attack's factor
    is used. Cost: one aggregator call per candidate and group. ``last_factors`` holds the
    factor of each Byzantine agent in the last round, ``last_search`` the candidates and their
    scores.

    F, the aggregator under attack: the attack's own model when the parameter ``aggregator``
    (a registry name, with ``f`` if it assumes one, optional ``pre`` steps and other parameters
    in ``aggregator_params``, e.g. ``{tau = 1.0}``) is given, else
    the aggregator the receiver uses (server mode: the server's aggregator, from
    ``AttackContext.aggregator``). Gossip mode has no receiver aggregator: give ``aggregator``
    (without it the first forgery raises ValueError). The modelled stacks (``scope``): server
    mode and ``scope = "all"``: every row of b's run (server: the uploads of the round), the
    Byzantine rows replaced by the forgery; ``"neighbours"`` (gossip): b and its
    out-neighbours in node order, the Byzantine ones replaced by b's forgery (one group, one
    search, per Byzantine agent). A Byzantine agent with no honest member in its group sends
    its own honest model. Omniscient: knows all honest messages of its group this round and
    the aggregator."""

    knows = "omniscient: all honest messages of its group this round, and the aggregator"
    attack_name = "alie_opt"
    factor_name = "z"

    def _family(self, ctx, group, members, sizes):
        mu, sigma, count = honest_stats(ctx, self.scope, ctx.honest)
        z = ALittleIsEnoughAttack.paper_z(sizes, sizes - count.to(sizes.dtype))
        return mu, sigma, z.to(torch.float64), mu, count


@ATTACKS.register("ipm_opt", "IPM with eps chosen each round to push the aggregate furthest from the honest mean")
class OptimisedIPM(_FactorSearch):
    """Inner-product manipulation with an optimised factor: m_b = r - eps* (mean_h psi_h - r),
    r = mean_h prev_h (0 without previous models), over the honest agents h of b's group,
    exactly as ``ipm``, with eps* = argmax_eps || F(x(eps)) - mean_h psi_h ||, F the aggregator
    under attack (Xie et al. 2019 for the form; the optimised factor as ByzFL's
    ``Optimal_InnerProductManipulation``, used in Allouah et al. 2023, which finds it by a line
    search rather than a grid). The plain attack's factor is ``ipm``'s
    default eps = 0.1. Entries of ``factors`` must be >= 0. The search, the aggregator under
    attack (``aggregator``, ``f``, ``pre``, else the server's), the modelled stacks (``scope``)
    and the diagnostics (``last_factors``, ``last_search``) are those of ``alie_opt``
    (:class:`OptimisedALIE`). Omniscient: knows all honest messages and previous models of its
    group this round, and the aggregator."""

    knows = "omniscient: all honest messages (and previous models) of its group this round, and the aggregator"
    attack_name = "ipm_opt"
    factor_name = "eps"
    factor_low = 0.0

    def _family(self, ctx, group, members, sizes):
        b = ctx.byzantine.numel()
        prev = ctx.previous if ctx.previous is not None else torch.zeros_like(ctx.honest)
        mean_psi, _, count = honest_stats(ctx, self.scope, ctx.honest)
        mean_prev, _, _ = honest_stats(ctx, self.scope, prev)
        default = torch.full((b,), IPM_DEFAULT_EPS, dtype=torch.float64)
        return mean_prev, mean_psi - mean_prev, default, mean_psi, count
