"""Human activity recognition (Li2020 sec. 7): one agent per UCI HAR subject, each with a
linear softmax classifier theta = (W [F, C], b [C]) on stacked tensors, closed-form gradients
and a vectorized per-agent optimizer (no Python loop over agents in a training step)."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..data import load_har
from ..core.edges import EdgeIndex
from ..core.messages import Messages
from .optim import make_stacked_optimizer
from .base import TASKS, StackedPopulation
from pydantic import Field
from typing import Literal
from ..validation import Probability, Strict


class HarConfig(Strict):
    """Li2020 sec. 7 human activity recognition on UCI HAR (Anguita et al. 2013): one agent per
    subject, a linear softmax classifier (561 features -> 6 activities) per agent. Numbers of
    the authors' reference code: Adam lr 1e-3, batch 10, a quarter of each subject's samples for
    testing, agents k % 3 == 0 skip 10 of 11 local steps."""

    name: Literal["har"] = Field(description="the task (this table's settings)")
    data_root: str = Field(description="folder holding train/ and test/ of the UCI HAR Dataset")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="fraction of each subject's samples held out for testing")
    optimizer: Literal["adam", "sgd", "momentum"] = Field(
        "adam", description="optimizer of every agent's local step: adam, sgd or momentum (SGD with momentum)")
    lr: float = Field(1e-3, gt=0, description="learning rate of the optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="optimizer = momentum: the momentum factor")
    batch_size: int = Field(10, ge=1, description="samples per mini-batch of a local step")
    skip_prob: list[Probability] = Field(default_factory=lambda: [10 / 11, 0.0, 0.0],
                                   description="agent k skips its local step w.p. skip_prob[k % len]")


class HarSetup:
    """One run's agents: agent k is the k-th subject (sorted ids) with its train/test split."""

    def __init__(self, cfg: HarConfig, n: int, rng: np.random.Generator) -> None:
        subjects = load_har(cfg.data_root, test_fraction=cfg.test_fraction, seed=int(rng.integers(2**31)))
        if len(subjects) < n:
            raise ValueError(f"graph has {n} agents but {cfg.data_root} holds {len(subjects)} subjects")
        ids = sorted(subjects)[:n]
        self.train = [subjects[s][0] for s in ids]
        self.test = [subjects[s][1] for s in ids]
        self.group = np.zeros(n, dtype=np.int64)  # every subject is its own task; no known groups
        self.num_features = self.train[0].x.shape[1]
        self.num_classes = self.train[0].num_classes


@TASKS.register("har", "Li2020 human activity recognition: linear softmax per UCI HAR subject", config=HarConfig)
class SoftmaxRegression(StackedPopulation):
    metric_names = ("test_loss", "test_acc")
    default_dtype = torch.float32
    autograd = False  # closed-form cross-entropy gradient

    @staticmethod
    def make_setup(cfg: HarConfig, graph, rng: np.random.Generator) -> HarSetup:
        return HarSetup(cfg, graph.number_of_nodes(), rng)

    @classmethod
    def for_world(cls, cfg, world, lanes: int, dtype: torch.dtype) -> "SoftmaxRegression":
        return cls(cfg.task, world.setups, [s["data"] for s in world.seeds], world.edges, dtype=dtype, lanes=lanes)

    def __init__(self, cfg: HarConfig, setups: list[HarSetup], data_seeds: list[int], world_edges: EdgeIndex,
                 dtype: torch.dtype = torch.float32, lanes: int = 1) -> None:
        self.cfg, self.dtype, self.lanes, self.runs = cfg, dtype, lanes, len(setups)
        self.world_edges = world_edges
        train = [d for s in setups for d in s.train]
        self.test = [d for s in setups for d in s.test]
        self.world_nodes = n0 = len(train)
        self.groups = np.concatenate([s.group for s in setups])
        self.group_names = ["all subjects"]
        self.run_of = np.repeat(np.arange(len(setups)), [len(s.train) for s in setups])
        self.local_index = np.concatenate([np.arange(len(s.train)) for s in setups])
        self.f, self.c = setups[0].num_features, setups[0].num_classes
        self.x_all = torch.cat([d.x for d in train]).to(dtype)
        self.y_all = torch.cat([d.y for d in train])
        sizes = torch.tensor([len(d) for d in train])
        self.sizes = sizes.to(dtype).unsqueeze(1)
        self.offsets = (torch.cumsum(sizes, 0) - sizes).unsqueeze(1)
        dim = self.f * self.c + self.c
        self.theta = torch.zeros(lanes * n0, dim, dtype=dtype)  # the reference starts from zero-ish; zeros are exact
        self.opt = make_stacked_optimizer(cfg.optimizer, lanes * n0, dim, cfg.lr, cfg.momentum, dtype)
        self.generators = [torch.Generator().manual_seed(s) for s in data_seeds]
        probs = cfg.skip_prob or [0.0]
        self.skip_p = torch.tensor([probs[k % len(probs)] for k in self.local_index], dtype=torch.float64)

    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return theta[:, : self.f * self.c].view(-1, self.f, self.c), theta[:, self.f * self.c:]

    def sample(self, step: int, active=None) -> None:
        """Mini-batches drawn uniformly with replacement from each agent's training set, and
        which agents skip this step; each run from its own generator."""
        b, n0 = self.cfg.batch_size, self.world_nodes
        u = torch.empty(n0, b + 1, dtype=torch.float64)
        for r, g in enumerate(self.generators):
            rows = torch.from_numpy(np.flatnonzero(self.run_of == r))
            u[rows] = torch.rand((len(rows), b + 1), generator=g, dtype=torch.float64)
        idx = self.offsets + (u[:, :b] * self.sizes.double()).long().clamp_max(self.sizes.long() - 1)
        self.bx = self.x_all[idx]  # [N0, B, F]
        self.by = self.y_all[idx]  # [N0, B]
        self.train_mask = (u[:, b] >= self.skip_p).repeat(self.lanes)

    def adapt(self, active=None) -> torch.Tensor:
        """psi = theta - optimizer step on the mean cross-entropy of the batch; gradient in closed
        form: dW = X^T (softmax(XW + b) - Y) / B, db = column sums of the same."""
        mask = self.train_mask if active is None else self.train_mask & active.repeat(self.lanes)
        return self.opt.step(self.theta, self._grad(), mask)

    def _grad(self) -> torch.Tensor:
        w, bias = self._split(self.theta)
        x = self.bx.repeat(self.lanes, 1, 1)
        y = self.by.repeat(self.lanes, 1)
        p = torch.softmax(torch.baddbmm(bias.unsqueeze(1), x, w), dim=-1)
        g = (p - F.one_hot(y, self.c).to(p.dtype)) / x.shape[1]
        return torch.cat([torch.bmm(x.transpose(1, 2), g).flatten(1), g.sum(1)], dim=1)

    def gradients(self, active=None) -> torch.Tensor:
        """Closed-form gradient of the batch's mean cross-entropy (as in :meth:`adapt`); rows of
        agents that are not ``active`` are zero (skip_prob does not apply: it models local
        steps, not workers asked for a gradient)."""
        g = self._grad()
        if active is not None:
            g = torch.where(active.repeat(self.lanes).unsqueeze(1), g, 0.0)
        return g

    def edge_losses(self, msgs: Messages, lane: int) -> torch.Tensor:
        """Mean cross-entropy of sender l's classifier on receiver k's batch, per edge."""
        e = self.world_edges
        w, bias = self._split(msgs.per_edge()[msgs.lane_edges(lane)])
        logits = torch.baddbmm(bias.unsqueeze(1), e.gather(self.bx, "dst"), w)
        ce = F.cross_entropy(logits.flatten(0, 1), e.gather(self.by, "dst").flatten(), reduction="none")
        return ce.view(e.num_edges, -1).mean(1)

    def metrics(self) -> dict[str, torch.Tensor]:
        loss = torch.zeros(self.lanes * self.world_nodes, dtype=torch.float64)
        acc = torch.zeros_like(loss)
        w, bias = self._split(self.theta)
        for i in range(self.lanes * self.world_nodes):
            d = self.test[i % self.world_nodes]
            logits = d.x.to(self.dtype) @ w[i] + bias[i]
            loss[i] = float(F.cross_entropy(logits, d.y))
            acc[i] = float((logits.argmax(1) == d.y).double().mean())
        return {"test_loss": loss, "test_acc": acc}

    # -- for attacks (p2pmtl.robust.attacks) ----------------------------------------------------------
    def losses_of(self, values: torch.Tensor, receivers: torch.Tensor, lane: int = 0) -> torch.Tensor:
        """Mean cross-entropy of arbitrary classifiers ``values [K, D]`` on the current batches of
        world agents ``receivers [K]`` (the formula of ``edge_losses``)."""
        w, bias = self._split(values)
        logits = torch.baddbmm(bias.unsqueeze(1), self.bx[receivers], w)
        ce = F.cross_entropy(logits.flatten(0, 1), self.by[receivers].flatten(), reduction="none")
        return ce.view(len(receivers), -1).mean(1)

    def poison_labels(self, nodes: torch.Tensor, relabel) -> None:
        """Data poisoning: training labels of world agents ``nodes`` become ``relabel(y, C)``;
        idempotent per agent (every lane's attack may call it)."""
        done = getattr(self, "_poisoned", set())
        new = [int(k) for k in nodes.tolist() if int(k) not in done]
        if not new:
            return
        owner = torch.repeat_interleave(torch.arange(self.world_nodes), self.sizes.squeeze(1).long())
        rows = torch.isin(owner, torch.tensor(new))
        self.y_all = self.y_all.clone()
        self.y_all[rows] = relabel(self.y_all[rows], self.c)
        self._poisoned = done | set(new)
