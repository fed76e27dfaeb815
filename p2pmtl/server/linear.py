"""Server mode for linear tasks (target localization, HAR): the star's hub keeps one global
model and aggregates the chosen clients' local steps with a (robust) aggregator (FedAvg
scheme: mean; with ``+gm``, ``+krum``, ...), or, for ``dsgd`` methods (RESAM), their
momenta or gradients at the global model (:mod:`p2pmtl.server.momentum`), and steps. This is the server side of the server-vs-gossip
study: a single global model cannot fit several tasks, whatever the aggregator, while the
loss-based gossip rule lets each agent keep to its own task.

All methods of a scenario run as lanes of one batched population (identical data, attacker
draws and network); a round is vectorized over clients, one aggregator call per lane.

As in :mod:`p2pmtl.server.federated`: uploads with a NaN or inf entry are dropped before any
pre-aggregation step or aggregator (``uploads_dropped_nonfinite``); a round with too few
uploads for a lane's aggregator keeps that lane's model (``rounds_without_update``); any other
aggregator error propagates.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.edges import EdgeIndex
from ..io.records import RunRecorder, interruptible
from ..robust.attacks import AttackContext, make_attack
from ..tasks import TASKS
from .aggregation import build_aggregator
from .federated import Method, finite_uploads, upload_shortfall
from .momentum import DistributedMomentum

if TYPE_CHECKING:  # annotations only: the config imports this package
    from ..experiments.config import ExperimentConfig, ScenarioConfig

LINEAR_TASKS = ("target_localization", "har")


class LinearServer:
    """One scenario: clients 0..n-1 (star nodes 1..n) in M lanes, one aggregator per lane."""

    def __init__(self, cfg: "ExperimentConfig", scenario: "ScenarioConfig", methods: list[str], seeds: dict) -> None:
        from ..engine.world import DTYPES, World, choose_byzantine
        from ..graphs.families import build_graph

        self.star = build_graph(cfg.graph.family, cfg.graph.params, seed=seeds["graph"])
        n = self.star.number_of_nodes() - 1
        clients = nx.empty_graph(n)
        task = TASKS.get(cfg.task.name)
        setup = task.make_setup(cfg.task, clients, np.random.default_rng(seeds["setup"]))
        self.byzantine = choose_byzantine(scenario.byzantine, n, seeds["byzantine"],
                                          f"scenarios.{scenario.name}.byzantine")
        world = World([clients], EdgeIndex.from_graph(clients), [setup], [seeds], torch.as_tensor(self.byzantine), n)
        dtype = DTYPES[cfg.dtype] if cfg.dtype else task.default_dtype
        self.methods = [Method.parse(m) for m in methods]
        for m in self.methods:
            if m.scheme not in ("fedavg", "dsgd"):
                raise ValueError(f"method {m.name!r}: linear tasks have no representation/head split; "
                                 f"use fedavg[+<aggregator>] or dsgd[+<aggregator>]")
        self.pop = task.for_world(cfg, world, len(methods), dtype)
        dim = self.pop.theta.shape[1]
        self.aggregators = [build_aggregator(m, cfg.server, [dim], [dim]) for m in self.methods]
        self.attacks = [make_attack(scenario.attack.name, **scenario.attack.params) if len(self.byzantine) else None
                        for _ in methods]
        self.attack_gens = [torch.Generator().manual_seed(seeds["attack"]) for _ in methods]
        self.n, self.m = n, len(methods)
        self.picked = max(1, int(round(cfg.server.alpha * n)))
        self.rng = np.random.default_rng(seeds["data"])
        self.is_byz = np.zeros(n, dtype=bool)
        self.is_byz[self.byzantine] = True
        self.groups = setup.group
        self.message_bytes = self.pop.message_bytes
        start = self.pop.theta[: n].mean(0)  # every client starts from the same global model
        self.pop.theta = start.expand(self.m * n, -1).clone()
        srv = cfg.server
        self.momenta = [DistributedMomentum(m.momentum or srv.momentum,
                                            (srv.beta if m.beta is None else m.beta)
                                            if (m.momentum or srv.momentum) != "none" else 0.0,
                                            n, dim, self.pop.theta.dtype) if m.scheme == "dsgd" else None
                        for m in self.methods]
        self.lr, self.weight_decay = srv.lr, srv.weight_decay
        self.log_every = srv.log_uploads
        self.logged_uploads: list[dict[int, torch.Tensor]] = [{} for _ in self.methods]  # per lane
        self.uploads_dropped_nonfinite = np.zeros(self.m, dtype=np.int64)  # per lane (method)
        self.rounds_without_update = np.zeros(self.m, dtype=np.int64)  # per lane: too few uploads
        self.nonfinite_per_round: list[np.ndarray] = []  # [m] per round
        self.updated_per_round: list[np.ndarray] = []  # [m] bool per round

    def round_records(self, j: int) -> dict[str, np.ndarray]:
        """Lane ``j``'s per-round counts: uploads dropped as non-finite, whether the model was
        updated."""
        return {"uploads_dropped_nonfinite": np.array([r[j] for r in self.nonfinite_per_round], dtype=np.int64),
                "updated": np.array([r[j] for r in self.updated_per_round], dtype=bool)}

    def round(self, t: int, arrives=None) -> None:
        """Choose clients; they take a local step from the global model; Byzantine ones forge;
        the server drops the uploads that did not arrive and those with a NaN or inf entry,
        and aggregates the rest (a lane with too few keeps its model); every client gets the
        new model. Too few uploads with none dropped is a configuration error (ValueError);
        any other aggregator error propagates."""
        chosen = np.sort(self.rng.choice(self.n, size=self.picked, replace=False))
        active = torch.zeros(self.n, dtype=torch.bool)
        active[torch.from_numpy(chosen)] = True
        pop = self.pop
        pop.sample(t, active)
        dsgd = [mom is not None for mom in self.momenta]
        psi = pop.adapt(active).view(self.m, self.n, -1) if not all(dsgd) else None
        grads = None
        if any(dsgd):  # minibatch gradients at the global model (+ weight decay), then momenta
            grads = pop.gradients(active).view(self.m, self.n, -1)
            if self.weight_decay:
                grads = grads + self.weight_decay * pop.theta.view(self.m, self.n, -1)
        rows = torch.from_numpy(chosen)
        byz_rows = torch.from_numpy(np.flatnonzero(self.is_byz[chosen]))
        on_time = np.ones(len(chosen), dtype=bool) if arrives is None else arrives(chosen)
        late = not on_time.all()
        keep = torch.from_numpy(np.flatnonzero(on_time))
        new, dropped, updated = [], np.zeros(self.m, dtype=np.int64), np.ones(self.m, dtype=bool)
        for j in range(self.m):
            mom = self.momenta[j]
            up = psi[j, rows] if mom is None else mom.uploads(rows, grads[j, rows])
            if self.log_every and t % self.log_every == 0:  # honest uploads, before forgeries and drops
                self.logged_uploads[j][t] = up[torch.from_numpy(~self.is_byz[chosen])].clone()
            if byz_rows.numel():  # Byzantine clients forge, then the network decides what arrives
                ctx = AttackContext(t, up, byz_rows, torch.zeros(len(up), dtype=torch.long), [self.attack_gens[j]],
                                    None, aggregator=self.aggregators[j], ids=rows[byz_rows])
                up = up.index_put((byz_rows,), self.attacks[j].forge(ctx).to(up.dtype))
            if late:
                up = up[keep]
            up, dropped[j] = finite_uploads(up)
            short = upload_shortfall(self.aggregators[j], len(up))
            if short is not None:
                if not late and not dropped[j]:
                    raise ValueError(f"server round {t}, method {self.methods[j].name!r}: all {len(up)} uploads "
                                     f"arrived, finite, and are too few for the aggregator: {short}")
                new.append(pop.theta[j * self.n])  # too few uploads: the server keeps its model
                updated[j] = False
                continue
            agg = self.aggregators[j](up).to(pop.theta.dtype)
            new.append(agg if mom is None else mom.step(pop.theta[j * self.n], agg, self.lr))
        self.uploads_dropped_nonfinite += dropped
        self.rounds_without_update += ~updated
        self.nonfinite_per_round.append(dropped)
        self.updated_per_round.append(updated)
        pop.theta = torch.stack(new).repeat_interleave(self.n, dim=0)

    def metrics(self) -> dict[str, torch.Tensor]:
        return self.pop.metrics()


def run_linear_server(cfg: "ExperimentConfig", out_dir: Path, progress: bool, position: int = 0) -> tuple[dict, bool]:
    """Every scenario of a server-mode config on a linear task; methods as lanes."""
    from ..network.clock import SynchronousRounds
    from ..engine.world import run_seeds
    from ..network.protocols import ServerRounds, as_metrics

    torch.set_num_threads(cfg.threads)
    seeds = run_seeds(cfg.seed)
    plans = [(s, s.methods or cfg.server.methods) for s in cfg.scenarios]
    servers = {s.name: LinearServer(cfg, s, m, seeds) for s, m in plans}  # errors before work
    rec = RunRecorder.from_output(out_dir, cfg.output)
    rec.summary["mode"] = "server"
    bar = tqdm(total=len(plans) * cfg.iterations, disable=not progress, desc=cfg.name, unit="round",
               position=position)
    with interruptible(rec, bar) as state:
        for scenario, methods in plans:
            srv = servers[scenario.name]
            rec.summary["group_names"] = srv.pop.group_names
            g = srv.star
            rec.save_world(scenario.name, g, nx.spring_layout(g, seed=0), np.r_[-1, srv.groups],
                               srv.byzantine + 1)
            normal = ~srv.is_byz
            blocks = [rec.open_block(scenario.name, m, normal, srv.groups, 1, srv.n) for m in methods]
            every = cfg.output.record_every
            timing = None
            if cfg.network is not None:
                timing = ServerRounds.for_star(cfg, g, srv.message_bytes, seeds["network"])

            def record(t: int, now: float) -> None:
                metrics = srv.metrics()
                extras = {} if timing is None else as_metrics(timing.acc.extras())
                total = (2 * srv.picked * srv.message_bytes * (t + 1) if timing is None
                         else float(timing.acc.sent.sum() + timing.acc.received.sum()))
                for j, block in enumerate(blocks):
                    rec.record(block, t, now, total, {**{k: v[j * srv.n:(j + 1) * srv.n] for k, v in metrics.items()},
                                                      **extras})

            if timing is None:
                def on_round(t: int, now: float) -> None:
                    srv.round(t)
                    if (t + 1) % every == 0 or t + 1 == cfg.iterations:
                        record(t, now)
                    bar.update(1)

                SynchronousRounds(cfg.clock, cfg.iterations, on_round).run()
            else:
                def step(t: int) -> None:
                    srv.round(t, timing.arrives)
                    bar.update(1)

                timing.run(cfg.iterations, step, record, every)
            extra = {} if timing is None else timing.summary()
            for j, (block, method) in enumerate(zip(blocks, methods)):
                rec.save_arrays(f"server_rounds__{scenario.name}__{method}", **srv.round_records(j))
                if srv.logged_uploads[j]:
                    rec.save_arrays(f"uploads__{scenario.name}__{method}",
                                    **{f"round{t}": u.numpy() for t, u in srv.logged_uploads[j].items()})
                rec.end_block(block, cfg.output.window,
                              {**extra, "uploads_dropped_nonfinite": int(srv.uploads_dropped_nonfinite[j]),
                               "rounds_without_update": int(srv.rounds_without_update[j])})
    return rec.summary, state["interrupted"]
