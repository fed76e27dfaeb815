"""Byzantine attacks: what a Byzantine agent sends instead of an honest model.

An attack forges one broadcast vector per Byzantine agent (``forge``); an attack that sends a
different message to each neighbour also overrides per edge (``forge_edges``). Each class states
what the attacker knows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .edges import EdgeIndex
from .registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")


@dataclass
class AttackContext:
    """What an attacker may look at in one round (each attack uses only what it declares)."""

    step: int
    honest: torch.Tensor  # [N, D] what every agent would send if honest (psi after adaptation)
    byzantine: torch.Tensor  # [B] node ids of Byzantine agents
    run_of_node: torch.Tensor  # [N] index of the run each node belongs to
    generators: list[torch.Generator]  # one per run, so runs are independent of batching
    edges: EdgeIndex


class Attack:
    knows: ClassVar[str] = "nothing"

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        """[B, D] broadcast messages of the Byzantine agents."""
        raise NotImplementedError

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> Optional[torch.Tensor]:
        """Optional per-edge messages ``[len(byz_edges), D]`` (edges whose sender is Byzantine)."""
        return None


def per_run_uniform(ctx: AttackContext, low: float, high: float, dim: int) -> torch.Tensor:
    """U[low, high] values for every Byzantine agent, drawn from its own run's generator."""
    out = torch.empty((ctx.byzantine.numel(), dim), dtype=ctx.honest.dtype)
    runs = ctx.run_of_node[ctx.byzantine]
    for r, gen in enumerate(ctx.generators):  # loop over runs (few), never over agents
        rows = torch.nonzero(runs == r).flatten()
        if rows.numel():
            vals = torch.rand((rows.numel(), dim), generator=gen, dtype=ctx.honest.dtype)
            out[rows] = low + (high - low) * vals
    return out


@ATTACKS.register("uniform", "every coordinate drawn from U[low, high] (Li2020 sec. 7)")
class UniformAttack(Attack):
    """Each Byzantine agent sends a vector whose coordinates are i.i.d. U[low, high]
    (Li2020 sec. 7: [15, 16] for target localization, [0, 0.1] for digits).
    ``redraw = "once"`` draws the vector once per attacker (the reference code);
    ``"every_step"`` draws afresh each iteration (the paper's text). Knows nothing."""

    knows = "nothing"

    def __init__(self, *, low: float = 15.0, high: float = 16.0, redraw: str = "once") -> None:
        if not high >= low:
            raise ValueError(f"uniform attack: high = {high} must be >= low = {low}")
        if redraw not in ("once", "every_step"):
            raise ValueError(f"uniform attack: redraw = {redraw!r}; allowed: 'once', 'every_step'")
        self.low, self.high, self.redraw = float(low), float(high), redraw
        self._fixed: Optional[torch.Tensor] = None

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if self.redraw == "every_step" or self._fixed is None:
            self._fixed = per_run_uniform(ctx, self.low, self.high, ctx.honest.shape[1])
        return self._fixed


@ATTACKS.register("scaled", "own parameters times factor * U(0,1), drawn each step (Li2020 reference digits code)")
class ScaledAttack(Attack):
    """Each Byzantine agent sends its own model scaled by ``factor * U(0,1)`` (a fresh draw per
    agent and step; ``random = false`` uses ``factor`` itself). Li2020's digit reference code
    uses factor 0.1. Knows its own model only."""

    knows = "its own model"

    def __init__(self, *, factor: float = 0.1, random: bool = True) -> None:
        self.factor, self.random = float(factor), bool(random)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        own = ctx.honest[ctx.byzantine]
        if not self.random:
            return self.factor * own
        scale = per_run_uniform(ctx, 0.0, self.factor, 1)  # [B, 1]
        return scale.to(own.dtype) * own


@ATTACKS.register("gaussian", "own parameters plus sigma * N(0, I), drawn each step (BR-MTRL)")
class GaussianAttack(Attack):
    """Each Byzantine agent sends its own (honestly trained) vector plus sigma N(0, I), fresh
    each step (Le and Moothedath 2025, sec. V; sigma is not given in the paper: a setting).
    Knows its own model only."""

    knows = "its own model"

    def __init__(self, *, sigma: float = 1.0) -> None:
        if not sigma >= 0:
            raise ValueError(f"gaussian attack: sigma = {sigma} must be >= 0")
        self.sigma = float(sigma)

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        own = ctx.honest[ctx.byzantine]
        noise = torch.empty_like(own)
        runs = ctx.run_of_node[ctx.byzantine]
        for r, gen in enumerate(ctx.generators):
            rows = torch.nonzero(runs == r).flatten()
            if rows.numel():
                noise[rows] = torch.randn((rows.numel(), own.shape[1]), generator=gen, dtype=own.dtype)
        return own + self.sigma * noise


def make_attack(name: str, **params) -> Attack:
    return ATTACKS.get(name)(**params)
