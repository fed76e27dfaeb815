"""Running server-mode experiments: every (scenario, method) on the SimPy clock, recorded in
the same run-directory format as gossip runs (a method takes the place of a weight rule).

Besides the metrics, each (scenario, method) reports in ``summary.json``
``uploads_dropped_nonfinite`` (uploads with a NaN or inf entry, dropped before aggregation) and
``rounds_without_update`` (rounds with too few uploads for the aggregator: the server kept its
model), and per round in ``arrays/server_rounds__<scenario>__<method>.npz``
(``uploads_dropped_nonfinite`` [rounds] and ``updated`` [rounds] bool); with
``server.log_uploads = k``, the honest uploads of every k-th round in
``arrays/uploads__<scenario>__<method>.npz`` (key ``round<T>``, for ``p2pmtl robustness --uploads``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.device import resolve_device
from ..graphs.families import build_graph
from ..io.records import RunRecorder, interruptible
from ..network.clock import SynchronousRounds
from ..robust.attacks import make_attack
from .aggregation import build_aggregator
from .dsgd import DSGDRun
from .federated import Clients, FederatedRun, FederatedSetup, Method

if TYPE_CHECKING:  # annotations only: the config imports this package
    from ..experiments.config import ExperimentConfig, ScenarioConfig


def server_world(cfg: "ExperimentConfig", scenario: "ScenarioConfig", seeds: dict):
    """(setup, Byzantine client ids) of one scenario; client i is node i + 1 of the star."""
    from ..engine.world import choose_byzantine

    g = build_graph(cfg.graph.family, cfg.graph.params, seed=seeds["graph"])
    n_clients = g.number_of_nodes() - 1
    setup = FederatedSetup(cfg.task, n_clients, cfg.server.meta_test, np.random.default_rng(seeds["setup"]))
    byz = choose_byzantine(scenario.byzantine, n_clients, seeds["byzantine"], f"scenarios.{scenario.name}.byzantine")
    return g, setup, byz


def run_server_scenarios(cfg: "ExperimentConfig", out_dir: Path, progress: bool, position: int = 0) -> tuple[dict, bool]:
    """All scenarios x methods of a server-mode config in this process; (summary, interrupted)."""
    from ..engine.world import DTYPES, run_seeds
    from .linear import LINEAR_TASKS, run_linear_server

    if cfg.task.name in LINEAR_TASKS:
        return run_linear_server(cfg, out_dir, progress, position)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seeds = run_seeds(cfg.seed)
    worlds = {s.name: server_world(cfg, s, seeds) for s in cfg.scenarios}  # errors before work
    plans = [(s, s.methods or cfg.server.methods) for s in cfg.scenarios]
    rec = RunRecorder.from_output(out_dir, cfg.output)
    rec.summary["group_names"] = ["clients"]
    rec.summary["mode"] = "server"
    bar = tqdm(total=sum(len(m) for _, m in plans) * cfg.iterations, disable=not progress,
               desc=cfg.name, unit="round", position=position)
    with interruptible(rec, bar) as state:
        for scenario, methods in plans:
            g, setup, byz = worlds[scenario.name]
            n = len(setup.clients)
            rec.save_world(scenario.name, g, nx.spring_layout(g, seed=0), np.r_[-1, setup.group], byz + 1)
            normal = np.ones(n, dtype=bool)
            normal[byz] = False
            for name in methods:
                method = Method.parse(name)
                clients = Clients(cfg.task, setup.clients, setup.num_classes, setup.image_shape, seeds["setup"],
                                  dtype=DTYPES[cfg.dtype] if cfg.dtype else torch.float32, device=device)
                agg = build_aggregator(method, cfg.server, clients.rep_sizes, clients.all_sizes)
                attack = make_attack(scenario.attack.name, **scenario.attack.params) if len(byz) else None
                kind = DSGDRun if method.scheme == "dsgd" else FederatedRun
                run = kind(method, cfg.server, clients, agg, byz, attack, seeds["data"])
                block = rec.open_block(scenario.name, name, normal, setup.group, 1, n)
                per_round = 2 * run.picked * run.message_bytes  # download + upload
                every = cfg.output.record_every

                extra: dict = {}
                if cfg.network is None:
                    def on_round(t: int, now: float, run=run, block=block) -> None:
                        run.round(t)
                        if (t + 1) % every == 0 or t + 1 == cfg.iterations:
                            rec.record(block, t, now, per_round * (t + 1), run.evaluate())
                        bar.update(1)

                    SynchronousRounds(cfg.clock, cfg.iterations, on_round).run()
                else:
                    extra = _network_rounds(cfg, rec, run, block, g, seeds, bar)
                meta, naive = run.meta_test(setup.new_clients, cfg.server.meta_test, seeds["setup"])
                rec.save_arrays(f"server_rounds__{scenario.name}__{name}", **run.round_records())
                if run.logged_uploads:
                    rec.save_arrays(f"uploads__{scenario.name}__{name}",
                                    **{f"round{t}": u.numpy() for t, u in run.logged_uploads.items()})
                rec.end_block(block, cfg.output.window, {"meta_test_acc": meta, "naive_meta_test_acc": naive,
                                                         "skipped_rounds": run.skipped_rounds,
                                                         "rounds_without_update": run.rounds_without_update,
                                                         "uploads_dropped_nonfinite": run.uploads_dropped_nonfinite,
                                                         **extra})
    return rec.summary, state["interrupted"]


def _network_rounds(cfg: "ExperimentConfig", rec: RunRecorder, run: FederatedRun, block, g, seeds: dict, bar) -> dict:
    """Server rounds on the network model (:class:`~p2pmtl.network.protocols.ServerRounds`); per-client
    bytes and time are recorded next to the accuracy; returns the round-time summary."""
    from ..network.protocols import ServerRounds, as_metrics

    timing = ServerRounds.for_star(cfg, g, run.message_bytes, seeds["network"])

    def on_round(t: int) -> None:
        run.round(t, timing.arrives)
        bar.update(1)

    def on_record(t: int, now: float) -> None:
        extras = as_metrics(timing.acc.extras())
        total = float(timing.acc.sent.sum() + timing.acc.received.sum())
        rec.record(block, t, now, total, {**run.evaluate(), **extras})

    timing.run(cfg.iterations, on_round, on_record, cfg.output.record_every)
    return timing.summary()
