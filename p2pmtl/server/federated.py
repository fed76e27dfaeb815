"""Server mode: a star whose hub (node 0) is a server, BR-MTRL (Le and Moothedath 2025,
Algorithm 1) and its baselines in one harness, recorded like gossip runs.

Each round the server picks a fraction alpha of the clients. A picked client starts from the
server's model and trains locally according to its method's *scheme*:

- ``fedavg``: the whole model for ``tau_joint`` epochs; the server aggregates whole models;
- ``fedper``: representation and personal head together for ``tau_joint`` epochs; the server
  aggregates representations (Arivazhagan et al. 2019);
- ``fedrep`` / ``br-mtrl``: ``tau_h`` epochs on the head with the representation fixed, then
  ``tau_phi`` epochs on the representation with the head fixed (Algorithm 1, lines 5-10); the
  server aggregates representations with the mean (FedRep, Collins et al. 2021) or a robust
  aggregator (BR-MTRL: geometric median layer by layer, or Krum).

Byzantine clients train honestly and then send what their attack makes of their upload (BR-MTRL:
phi_i + sigma N(0, I)). Clients keep their heads across rounds, picked or not. Evaluation:
every client's personalised model (server representation + own head; FedAvg: the global model)
on its own test set.

Hostile uploads, as in gossip mode: an upload with any NaN or inf entry is dropped before any
pre-aggregation step or aggregator (counted: ``uploads_dropped_nonfinite``). A round left with
too few uploads for the aggregator (late or dropped ones) keeps the server's model (counted:
``rounds_without_update``); any other aggregator error propagates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..robust.aggregators import check_inputs
from ..robust.attacks import Attack, AttackContext
from ..tasks.client_split import FederatedImagesConfig, FederatedSetup, MetaTestConfig
from .config import ServerConfig, parse_dsgd
from ..data import ArrayDataset, partition_classes
from ..tasks.model_bank import make_optimizer_factory
from ..tasks.models import MODELS

AGG_ALIASES = {"gm": "geometric_median"}


def finite_uploads(up: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of an ``[n, d]`` upload stack whose every entry is finite, and how many rows
    were dropped (an upload with a NaN or inf entry never reaches an aggregator)."""
    ok = torch.isfinite(up).all(dim=1)
    kept = int(ok.sum())
    if kept == len(up):
        return up, 0
    return up[ok], len(up) - kept


def upload_shortfall(aggregator, n: int) -> Optional[str]:
    """Why ``n`` uploads are too few for ``aggregator`` (an aggregator, a
    :class:`~p2pmtl.aggregators.Pipeline` whose pre-aggregation steps and aggregator are each
    checked, or any callable), or None when they are enough. Decided before aggregating, so
    that only a genuine shortfall (stragglers, losses, dropped non-finite uploads) skips a
    round and every other aggregator error propagates."""
    if n < 1:
        return "no upload to aggregate"
    try:
        check_inputs(aggregator, n)
    except ValueError as e:
        return str(e)
    return None


def enough_uploads(aggregator, n: int) -> bool:
    """True iff ``n`` uploads satisfy ``aggregator`` (see :func:`upload_shortfall`)."""
    return upload_shortfall(aggregator, n) is None


@dataclass(frozen=True)
class Method:
    name: str
    scheme: str  # fedavg | fedper | alternating | dsgd
    aggregator: str  # registry name
    momentum: Optional[str] = None  # dsgd: worker | server | none (None: server.momentum)
    beta: Optional[float] = None  # dsgd: momentum factor (None: server.beta)

    @staticmethod
    def parse(name: str) -> "Method":
        """``fedavg``, ``fedper``, ``fedrep`` (alternating + mean), ``br-mtrl+AGG`` or
        ``dsgd[-worker|-server|-none][BETA]`` (:func:`p2pmtl.server.config.parse_dsgd`); any
        scheme may take ``+AGG`` (``gm`` = geometric_median)."""
        scheme, _, agg = name.partition("+")
        agg = AGG_ALIASES.get(agg, agg) or "mean"
        dsgd = parse_dsgd(scheme)
        if dsgd is not None:
            return Method(name, "dsgd", agg, *dsgd)
        kind = {"fedavg": "fedavg", "fedper": "fedper", "fedrep": "alternating", "br-mtrl": "alternating"}[scheme]
        return Method(name, kind, agg)

    @property
    def whole_model(self) -> bool:
        """True when the server aggregates whole models (fedavg, dsgd), not representations."""
        return self.scheme in ("fedavg", "dsgd")


class Clients:
    """n client models (representation + head), one optimizer each, and their data, on
    ``device`` (where local training and evaluation run; uploads and the server's model are
    CPU rows, as the aggregators and attacks take them).

    Every client starts from one model, ``proto``; the per-client modules and optimizers
    (``models``, ``opts``) are built on first use, so a run whose clients train as one stacked
    tensor (:class:`~p2pmtl.server.batched_clients.BatchedClients`) never holds n modules on
    the device."""

    def __init__(self, cfg: FederatedImagesConfig, data: list, num_classes: int, image_shape: tuple,
                 init_seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        self.fmt = torch.channels_last if cfg.channels_last and len(image_shape) == 3 else torch.contiguous_format
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            proto = self.new_model(num_classes, image_shape)
        self.proto, self.n = proto, len(data)
        self._models: Optional[list[nn.Module]] = None
        self._opts: Optional[list] = None
        self.make_opt = make_optimizer_factory(cfg.optimizer, cfg.lr, cfg.momentum)
        self.train = [(self._prep(x), y.to(self.device)) for (x, y), _ in data]
        self.test = [(self._prep(x), y.to(self.device)) for _, (x, y) in data]
        self.rep_sizes = [p.numel() for p in proto.representation.parameters()]
        self.all_sizes = [p.numel() for p in proto.parameters()]
        self.num_classes, self.image_shape = num_classes, image_shape

    @property
    def models(self) -> list[nn.Module]:
        """One module per client, copies of ``proto`` (built on first use)."""
        if self._models is None:
            self._models = [self._copy(self.proto) for _ in range(self.n)]
        return self._models

    @property
    def opts(self) -> list:
        """One optimizer per client module (built on first use)."""
        if self._opts is None:
            self._opts = [self.make_opt(list(m.parameters())) for m in self.models]
        return self._opts

    def new_model(self, num_classes: int, image_shape: tuple) -> nn.Module:
        return MODELS.get(self.cfg.model)(in_channels=image_shape[0], num_classes=num_classes,
                                          image_size=image_shape[1]).to(self.dtype).to(
            device=self.device, memory_format=self.fmt)

    def _copy(self, m: nn.Module) -> nn.Module:
        import copy

        return copy.deepcopy(m)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=self.fmt) if x.dim() == 4 else x


def flat(params) -> torch.Tensor:
    """The parameters as one row, on the CPU (a copy when they live on a GPU)."""
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu()


def load(params, vector: torch.Tensor) -> None:
    with torch.no_grad():
        for p, c in zip(params, torch.split(vector, [p.numel() for p in params])):
            p.copy_(c.view(p.shape))


def batches(n: int, batch: int, unit: str, count: int, gen: torch.Generator):
    """Index batches for ``count`` epochs (shuffled each) or ``count`` steps."""
    if unit == "epochs":
        for _ in range(count):
            perm = torch.randperm(n, generator=gen)
            yield from torch.split(perm, batch)
    else:
        for _ in range(count):
            yield torch.randint(0, n, (min(batch, n),), generator=gen)


class LocalTrainer:
    """The local updates of Algorithm 1 and of the baselines, on one client."""

    def __init__(self, server: ServerConfig, batch: int):
        self.server, self.batch = server, batch

    def alternating(self, model: nn.Module, opt, x, y, gen) -> None:
        """tau_h head epochs with phi fixed (features computed once), then tau_phi
        representation epochs with the head fixed."""
        s = self.server
        model.train()
        if s.tau_h:
            with torch.no_grad():
                feats = model.representation(x)
            for idx in batches(len(y), self.batch, s.unit, s.tau_h, gen):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model.head(feats[idx]), y[idx]).backward()
                opt.step()
        if s.tau_phi:
            model.head.requires_grad_(False)
            for idx in batches(len(y), self.batch, s.unit, s.tau_phi, gen):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            model.head.requires_grad_(True)

    def joint(self, model: nn.Module, opt, x, y, gen) -> None:
        """tau_joint epochs on every parameter (FedAvg, FedPer)."""
        model.train()
        for idx in batches(len(y), self.batch, self.server.unit, self.server.tau_joint, gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


class FederatedRun:
    """One method on one world: server state, clients, rounds, evaluation, meta-test."""

    def __init__(self, method: Method, server: ServerConfig, clients: Clients, aggregator: Callable,
                 byzantine: np.ndarray, attack: Optional[Attack], seed: int) -> None:
        self.method, self.server, self.c = method, server, clients
        self.aggregator, self.attack = aggregator, attack
        self.byzantine = set(int(b) for b in byzantine)
        self.gen = torch.Generator().manual_seed(seed)
        self.attack_gen = torch.Generator().manual_seed(seed + 1)
        self.rng = np.random.default_rng(seed)
        self.trainer = LocalTrainer(server, clients.cfg.batch_size)
        first = clients.proto  # every client starts from this model
        shared = list(first.parameters()) if method.whole_model else list(first.representation.parameters())
        self.global_state = flat(shared)
        self.n = clients.n
        self.picked = max(1, int(round(server.alpha * self.n)))
        self.skipped_rounds = 0  # rounds without an update (too few uploads); see rounds_without_update
        self.uploads_dropped_nonfinite = 0
        self.nonfinite_per_round: list[int] = []  # uploads dropped as non-finite, one entry per round
        self.updated_per_round: list[bool] = []  # whether the server's model was updated, per round
        self.logged_uploads: dict[int, torch.Tensor] = {}  # round -> honest uploads (server.log_uploads)
        if attack is not None and self.byzantine:  # data-poisoning attacks change data here
            attack.setup(clients, torch.as_tensor(sorted(self.byzantine), dtype=torch.long))
        self.bank = self._batched_clients() if method.scheme != "dsgd" else None

    def _batched_clients(self):
        """The clients as one stacked tensor (:class:`~p2pmtl.server.batched_clients.BatchedClients`)
        when ``task.bank`` says ``batched`` (``auto``: on a GPU, when every client holds the
        same number of images); None: the per-client modules."""
        from .batched_clients import BatchedClients

        kind = getattr(self.c.cfg, "bank", "auto")
        equal = len({len(y) for _, y in self.c.train}) == 1 and len({len(y) for _, y in self.c.test}) == 1
        if kind == "batched" or (kind == "auto" and self.c.device.type != "cpu" and equal):
            return BatchedClients(self.c, getattr(self.c.cfg, "bank_chunk", 64))
        return None

    def shared_params(self, i: int) -> list:
        m = self.c.models[i]
        return list(m.parameters()) if self.method.whole_model else list(m.representation.parameters())

    @property
    def rounds_without_update(self) -> int:
        """Rounds whose uploads were too few for the aggregator: the server kept its model."""
        return self.skipped_rounds

    def round_records(self) -> dict[str, np.ndarray]:
        """Per-round counts: uploads dropped as non-finite, and whether the model was updated."""
        return {"uploads_dropped_nonfinite": np.asarray(self.nonfinite_per_round, dtype=np.int64),
                "updated": np.asarray(self.updated_per_round, dtype=bool)}

    @property
    def message_bytes(self) -> int:
        return self.global_state.numel() * self.global_state.element_size()

    def round(self, t: int, arrives: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
        """Algorithm 1, one round: pick clients, local updates, (Byzantine) uploads, aggregation.
        ``arrives(chosen)`` (the network model, :class:`~p2pmtl.network.protocols.ServerRounds`) tells
        whose upload reaches the server before its deadline: the others still train (their
        heads move) but their uploads are dropped. Uploads with a NaN or inf entry are dropped
        next (counted in ``uploads_dropped_nonfinite``), before any pre-aggregation step. If
        too few remain for the aggregator (e.g. Krum's n >= 2f + 3), the server keeps its model
        this round (counted in ``skipped_rounds`` = ``rounds_without_update``); if none was
        dropped, too few is a configuration error (ValueError). Other aggregator errors
        propagate. Returns the chosen clients."""
        chosen = np.sort(self.rng.choice(self.n, size=self.picked, replace=False))
        if self.bank is not None:
            agg = self.aggregate_uploads(t, chosen, self._batched_round(chosen), arrives)
            if agg is not None:
                self.global_state = agg
            return chosen
        uploads = []
        for i in chosen.tolist():
            load(self.shared_params(i), self.global_state)
            x, y = self.c.train[i]
            train = self.trainer.alternating if self.method.scheme == "alternating" else self.trainer.joint
            train(self.c.models[i], self.c.opts[i], x, y, self.gen)
            uploads.append(flat(self.shared_params(i)))
        agg = self.aggregate_uploads(t, chosen, torch.stack(uploads), arrives)
        if agg is not None:
            self.global_state = agg
        return chosen

    def _batched_round(self, chosen: np.ndarray) -> torch.Tensor:
        """The chosen clients' local updates in lockstep on the stacked bank, with the
        mini-batches the per-client loop would draw (same generator, same order)."""
        s, m = self.server, len(self.c.train[0][1])
        count = {"head": s.tau_h, "rep": s.tau_phi, "joint": s.tau_joint}
        shared = self.global_state.numel()
        return self.bank.train(chosen, self.global_state, shared, self.method.scheme,
                               lambda phase: list(batches(m, self.trainer.batch, s.unit, count[phase], self.gen)))

    def aggregate_uploads(self, t: int, chosen: np.ndarray, up: torch.Tensor,
                          arrives: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Optional[torch.Tensor]:
        """The server's side of a round, given the honest uploads ``up`` of the ``chosen``
        clients (one row each): Byzantine rows are forged, late uploads and uploads with a NaN
        or inf entry dropped (counted), and the rest aggregated. None when too few remain for
        the aggregator (counted as a round without update; a ValueError if none was dropped)."""
        byz_rows = torch.tensor([r for r, i in enumerate(chosen.tolist()) if i in self.byzantine], dtype=torch.long)
        every = self.server.log_uploads
        if every and t % every == 0:  # the honest uploads, before any forgery or drop
            honest = [r for r, i in enumerate(chosen.tolist()) if i not in self.byzantine]
            self.logged_uploads[t] = up[honest].detach().clone()
        if byz_rows.numel():
            ctx = AttackContext(t, up, byz_rows, torch.zeros(len(up), dtype=torch.long), [self.attack_gen], None,
                                previous=self.global_state.to(up.dtype).expand(len(up), -1),
                                aggregator=self.aggregator, ids=torch.from_numpy(chosen)[byz_rows])
            up = up.index_put((byz_rows,), self.attack.forge(ctx).to(up.dtype))
        on_time = np.ones(len(chosen), dtype=bool) if arrives is None else arrives(chosen)
        if not on_time.all():
            up = up[torch.from_numpy(np.flatnonzero(on_time))]
        up, bad = finite_uploads(up)
        self.uploads_dropped_nonfinite += bad
        self.nonfinite_per_round.append(bad)
        short = upload_shortfall(self.aggregator, len(up))
        if short is not None:
            if on_time.all() and not bad:
                raise ValueError(f"server round {t}: all {len(up)} uploads arrived, finite, and are too few "
                                 f"for the aggregator: {short}")
            self.skipped_rounds += 1
            self.updated_per_round.append(False)
            return None
        out = self.aggregator(up).to(up.dtype)
        self.updated_per_round.append(True)
        return out

    def evaluate(self) -> dict[str, torch.Tensor]:
        """Each client's personalised model on its test set: server representation (FedAvg:
        server model) with the client's own head."""
        if self.bank is not None:
            loss, acc = self.bank.evaluate(self.global_state, self.global_state.numel())
            return {"test_loss": loss, "test_acc": acc}
        loss = torch.zeros(self.n, dtype=torch.float64)
        acc = torch.zeros_like(loss)
        for i, (x, y) in enumerate(self.c.test):
            m = self.c.models[i]
            load(self.shared_params(i), self.global_state)
            m.eval()
            with torch.inference_mode():
                out = m(x)
            loss[i] = float(F.cross_entropy(out, y))
            acc[i] = float((out.argmax(1) == y).double().mean())
        return {"test_loss": loss, "test_acc": acc}

    def meta_test(self, new_clients: list, meta: MetaTestConfig, seed: int) -> tuple[float, float]:
        """Unseen clients: with the learned representation fixed, train only a fresh head for
        ``meta.epochs`` epochs on little data; baseline "naive": each trains a whole fresh model
        alone for the same epochs. Returns (method accuracy, naive accuracy), means over clients."""
        if not new_clients:
            return math.nan, math.nan
        gen = torch.Generator().manual_seed(seed)
        accs, naive = [], []
        for j, ((x, y), (xt, yt)) in enumerate(new_clients):
            x, xt, y, yt = self.c._prep(x), self.c._prep(xt), y.to(self.c.device), yt.to(self.c.device)
            with torch.random.fork_rng():
                torch.manual_seed(seed + j)
                model = self.c.new_model(self.c.num_classes, self.c.image_shape)
                scratch = self.c.new_model(self.c.num_classes, self.c.image_shape)
            rep = list(model.parameters()) if self.method.whole_model else list(model.representation.parameters())
            load(rep, self.global_state)
            opt = self.c.make_opt(list(model.head.parameters()))
            trainer = LocalTrainer(self.server.model_copy(update={"tau_h": meta.epochs, "tau_phi": 0, "unit": "epochs"}),
                                   self.c.cfg.batch_size)
            trainer.alternating(model, opt, x, y, gen)
            solo = LocalTrainer(self.server.model_copy(update={"tau_joint": meta.epochs, "unit": "epochs"}),
                                self.c.cfg.batch_size)
            solo.joint(scratch, self.c.make_opt(list(scratch.parameters())), x, y, gen)
            for m, out in ((model, accs), (scratch, naive)):
                m.eval()
                with torch.inference_mode():
                    out.append(float((m(xt).argmax(1) == yt).double().mean()))
        return float(np.mean(accs)), float(np.mean(naive))
