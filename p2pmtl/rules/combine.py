"""Combine steps: how a receiver turns its own model and what its in-neighbours sent into its
new model (the "combine" of adapt-then-combine).

The default, ``weighted_average``, is Li2020 eq. (3), theta_k = sum_l a_lk psi_l; populations
run it on their own fast path (a sparse matmul on broadcast rows, never a per-edge copy).
Any other combine step works on per-edge tensors and is vectorized over every receiver,
lane and run with segment operations over the receiver-sorted edge list.

**Your own combine step.** Subclass :class:`CombineStep`, implement :meth:`CombineStep.combine`
and register it::

    @p2pmtl.register_combine("my_step", "x_k <- ...")
    class MyStep(p2pmtl.CombineStep):
        def combine(self, ctx):
            return ctx.edges.segment_sum(ctx.weights[:, None] * ctx.messages)

Select it for every lane with ``[rules] combine = "my_step"`` (parameters in
``combine_params``) or for the lanes of one rule with the rule's ``combine`` attribute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..core.edges import EdgeIndex
from ..registry import Registry

COMBINES: Registry[type["CombineStep"]] = Registry("combine step")


@dataclass
class CombineContext:
    """One combination for every lane at once (lanes are folded into the node axis).

    ``edges``: the lanes' edge list (receiver-sorted, self loops included), ``[E]``;
    ``messages``: what each edge carries, ``[E, D]`` (non-finite messages zeroed; the own edge
    holds the receiver's adapted model psi_k); ``valid``: ``[E]`` bool, message arrived and is
    finite (None: all); ``weights``: the rule's weights ``[E]`` (sum 1 per receiver, 0 on
    invalid edges); ``own``: ``[N, D]`` each receiver's adapted model psi_k."""

    edges: EdgeIndex
    messages: torch.Tensor
    valid: Optional[torch.Tensor]
    weights: torch.Tensor
    own: torch.Tensor


class CombineStep:
    """Maps a :class:`CombineContext` to the receivers' new models ``[N, D]``.

    Contract: vectorized (no loop over nodes or edges), finite for finite inputs, and a
    receiver with no valid neighbour keeps ``own``."""

    fast_weighted_average: bool = False  # populations combine on their own fast path

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@COMBINES.register("weighted_average", "theta_k = sum_l a_lk psi_l (Li2020 eq. 3)")
class WeightedAverage(CombineStep):
    """theta_k = sum_l a_lk psi_l (Li2020 eq. 3); populations run it on their fast path."""

    fast_weighted_average = True

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        return ctx.edges.segment_sum(ctx.weights.unsqueeze(1) * ctx.messages)


@COMBINES.register("clipped", "x_k <- psi_k + sum_l a_lk clip(psi_l - psi_k, tau) (self-centred clipping)")
class SelfCentredClipping(CombineStep):
    """Self-centred clipping (He, Karimireddy and Jaggi 2022, ClippedGossip, eq. 3 with the
    rule's weights as W): x_k <- psi_k + sum_l a_lk clip(psi_l - psi_k, tau), where
    clip(z, tau) = z min(1, tau / ||z||). A neighbour's pull is bounded by a_lk tau whatever it
    sends; tau = inf is the weighted average."""

    def __init__(self, *, tau: float = 1.0) -> None:
        if not (isinstance(tau, (int, float)) and tau > 0 and not math.isnan(tau)):
            raise ValueError(f"clipped: tau = {tau!r}; allowed: a real > 0 (inf: no clipping)")
        self.tau = float(tau)

    def combine(self, ctx: CombineContext) -> torch.Tensor:
        e = ctx.edges
        diff = ctx.messages - torch.index_select(ctx.own, 0, e.dst)
        norm = torch.linalg.vector_norm(diff, dim=1)
        scale = torch.clamp(self.tau / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
        w = ctx.weights if ctx.valid is None else torch.where(ctx.valid, ctx.weights, 0.0)
        return ctx.own + e.segment_sum((w * scale).unsqueeze(1) * diff)


def make_combine(name: str, **params: Any) -> CombineStep:
    """A registered combine step with its parameters; errors name the step and list what it
    accepts."""
    import inspect

    cls = COMBINES.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"combine {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted) or '(none)'}")
    return cls(**params)
