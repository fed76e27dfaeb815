"""An example p2pmtl plugin, written only against the public API (``import p2pmtl``).

It adds one component of every kind: a weight rule with its own statistic, a combine step, an
attack, an aggregator, a graph family, a model, a dataset and a task with its own config. The
tests load it through its entry point, with ``--plugin`` and with ``plugins = [...]``.
"""
from __future__ import annotations

from typing import Literal

import networkx as nx
import numpy as np
import torch
from pydantic import Field

import p2pmtl


# --------------------------------------------------------------------------- weight rule
@p2pmtl.register_rule("cosine", "a_lk ~ max(0, cos(psi_k, psi_l)) above a floor (example plugin)")
class Cosine(p2pmtl.WeightRule):
    """Weights from a statistic the rule computes itself: the cosine similarity between the
    receiver's model and each message, kept when at least ``floor``."""

    def __init__(self, *, floor: float = 0.0, **_ignored) -> None:
        if not -1.0 <= floor <= 1.0:
            raise ValueError(f"floor = {floor}; allowed: [-1, 1]")
        self.floor = floor

    def scores(self, ctx: p2pmtl.RuleContext) -> torch.Tensor:
        own = ctx.edges.gather(ctx.own(), "dst")
        cos = torch.cosine_similarity(own, ctx.messages(), dim=1)
        return torch.where(cos >= self.floor, cos.clamp_min(0), 0.0)


@p2pmtl.register_rule("closest_half", "uniform weights on the half of the neighbours with the smallest loss")
class ClosestHalf(p2pmtl.WeightRule):
    """A tolerant filter on the engine's loss statistic: keep a neighbour when its loss on the
    receiver's data is at most the median over the receiver's in-edges (vectorized by sorting
    edges by (receiver, loss))."""

    needs = "loss"

    def __init__(self, **_ignored) -> None:
        pass

    def scores(self, ctx: p2pmtl.RuleContext) -> torch.Tensor:
        e, stat = ctx.edges, torch.nan_to_num(ctx.stat, nan=float("inf"))
        order = torch.argsort(stat, stable=True)
        order = order[torch.argsort(e.dst[order], stable=True)]  # by receiver, then loss
        start = torch.searchsorted(e.dst, e.dst[order])
        rank = torch.arange(e.num_edges) - start
        keep = torch.zeros(e.num_edges, dtype=torch.bool)
        keep[order] = rank <= (e.in_degree()[e.dst[order]] - 1) // 2
        return keep.to(stat.dtype)


# --------------------------------------------------------------------------- combine step
@p2pmtl.register_combine("median_of_neighbours", "x_k <- coordinate-wise median of the valid messages")
class MedianOfNeighbours(p2pmtl.CombineStep):
    """Per receiver, the coordinate-wise median of the messages it holds (invalid ones as NaN,
    ignored), vectorized with a padded [N, max in-degree, D] tensor."""

    def combine(self, ctx: p2pmtl.CombineContext) -> torch.Tensor:
        e = ctx.edges
        deg = e.in_degree()
        start = torch.cumsum(deg, 0) - deg
        slot = torch.arange(e.num_edges) - start[e.dst]
        pad = torch.full((e.num_nodes, int(deg.max()), ctx.messages.shape[1]), float("nan"), dtype=ctx.messages.dtype)
        msgs = ctx.messages if ctx.valid is None else torch.where(ctx.valid[:, None], ctx.messages, float("nan"))
        pad[e.dst, slot] = msgs
        return torch.nanmedian(pad, dim=1).values


# --------------------------------------------------------------------------- attack
@p2pmtl.register_attack("mirror", "minus the mean of the honest messages, times scale (example plugin)")
class Mirror(p2pmtl.Attack):
    knows = "the honest messages"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def forge(self, ctx: p2pmtl.AttackContext) -> torch.Tensor:
        mean = ctx.honest.mean(0, keepdim=True)
        return (-self.scale * mean).expand(len(ctx.byzantine), -1).clone()


# --------------------------------------------------------------------------- aggregator
@p2pmtl.register_aggregator("norm_filtered_mean", "mean of the inputs whose norm is at most the median norm")
class NormFilteredMean(p2pmtl.Aggregator):
    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(x, dim=1)
        return x[norms <= norms.median()].mean(0)


# --------------------------------------------------------------------------- graph family
@p2pmtl.register_graph("two_cliques", "two complete graphs of n/2 agents joined by `bridges` edges")
def two_cliques(*, n: int, bridges: int = 1) -> nx.Graph:
    half = n // 2
    g = nx.disjoint_union(nx.complete_graph(half), nx.complete_graph(n - half))
    for b in range(bridges):
        g.add_edge(b % half, half + b % (n - half))
    return g


# --------------------------------------------------------------------------- model and dataset
@p2pmtl.register_model("tiny_mlp", "flatten -> 32 -> classes (example plugin)")
class TinyMLP(p2pmtl.SplitModel):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.representation = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size * image_size, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, num_classes)


@p2pmtl.register_dataset("bars", "8x8 images of a horizontal or vertical bar, 2 classes (example plugin)")
def bars(*, size: int, seed: int, root=None, download=False) -> p2pmtl.ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size)
    pos = rng.integers(0, 8, size)
    x = rng.normal(0, 0.1, (size, 1, 8, 8)).astype(np.float32)
    x[y == 0, 0, pos[y == 0], :] += 1.0
    x[y == 1, 0, :, pos[y == 1]] += 1.0
    return p2pmtl.ArrayDataset(x=torch.from_numpy(x), y=torch.from_numpy(y).long(), num_classes=2, name="bars")


# --------------------------------------------------------------------------- task
class MeanEstimationConfig(p2pmtl.Strict):
    """Each agent estimates the mean of its group's Gaussian stream (groups: contiguous blocks)."""

    name: Literal["mean_estimation"] = "mean_estimation"
    groups: int = Field(2, ge=1, description="number of distinct means")
    dim: int = Field(3, ge=1, description="dimension of the estimated mean")
    spread: float = Field(5.0, gt=0, description="means drawn uniformly in [-spread, spread]^dim")
    noise: float = Field(1.0, ge=0, description="std of every sample around its mean")
    mu: float = Field(0.2, gt=0, le=1, description="step size of the running-mean update")


class MeanSetup:
    def __init__(self, cfg: MeanEstimationConfig, n: int, rng: np.random.Generator) -> None:
        self.means = rng.uniform(-cfg.spread, cfg.spread, size=(cfg.groups, cfg.dim))
        self.group = np.minimum(np.arange(n) * cfg.groups // n, cfg.groups - 1)


@p2pmtl.register_task("mean_estimation", "agents estimate their group's mean from noisy samples",
                      config=MeanEstimationConfig)
class MeanEstimation(p2pmtl.StackedPopulation):
    metric_names = ("loss", "msd")
    default_dtype = torch.float64

    @staticmethod
    def make_setup(cfg: MeanEstimationConfig, graph, rng: np.random.Generator) -> MeanSetup:
        return MeanSetup(cfg, graph.number_of_nodes(), rng)

    @classmethod
    def for_world(cls, cfg, world, lanes: int, dtype: torch.dtype) -> "MeanEstimation":
        return cls(cfg.task, world, lanes, dtype)

    def __init__(self, cfg: MeanEstimationConfig, world, lanes: int, dtype: torch.dtype) -> None:
        self.cfg, self.dtype, self.lanes = cfg, dtype, lanes
        self.world_edges = world.edges
        self.runs = len(world.setups)
        self.world_nodes = world.edges.num_nodes
        self.groups = np.concatenate([s.group for s in world.setups])
        self.group_names = [f"mean {g}" for g in range(cfg.groups)]
        self.target = torch.as_tensor(np.concatenate([s.means[s.group] for s in world.setups]), dtype=dtype)
        self.theta = torch.zeros(lanes * self.world_nodes, cfg.dim, dtype=dtype)
        self.gen = torch.Generator().manual_seed(int(world.seeds[0]["data"]))

    def sample(self, step: int, active=None) -> None:
        self.x = self.target + self.cfg.noise * torch.randn(self.target.shape, generator=self.gen, dtype=self.dtype)

    def adapt(self, active=None) -> torch.Tensor:
        theta = self.theta.view(self.lanes, self.world_nodes, -1)
        psi = torch.lerp(theta, self.x, self.cfg.mu).view(self.theta.shape)
        return self.hold(psi, active)

    def edge_losses(self, msgs: p2pmtl.Messages, lane: int) -> torch.Tensor:
        diff = self.world_edges.gather(self.x, "dst") - msgs.per_edge()[msgs.lane_edges(lane)]
        return (diff * diff).sum(1)

    def metrics(self) -> dict[str, torch.Tensor]:
        theta = self.theta.view(self.lanes, self.world_nodes, -1)
        msd = ((theta - self.target) ** 2).sum(-1).view(-1)
        loss = ((theta - self.x) ** 2).sum(-1).view(-1)
        return {"loss": loss, "msd": msd}
