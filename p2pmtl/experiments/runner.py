"""From a validated config to a run directory: build graphs, Byzantine sets and populations,
then run every (scenario, weight rule) pair on the SimPy clock and record as it goes."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..robust.attacks import make_attack
from ..network.clock import SynchronousRounds
from .config import ExperimentConfig, ScenarioConfig, dump_config
from ..core.device import resolve_device
from ..core.edges import EdgeIndex
from ..engine.gossip import GossipEngine
from ..graphs.edge_list import EdgeListGraph
from ..graphs.families import build_graph, positions
from ..io.records import RunRecorder, interruptible, json_safe
from ..rules.combine import make_combine
from ..rules.weights import make_rule
from ..tasks import TASKS
from ..engine.world import DTYPES, World, choose_byzantine, run_seeds

def build_world(cfg: ExperimentConfig, scenario: ScenarioConfig) -> World:
    graphs, edges, setups, seeds, byz = [], [], [], [], []
    n0 = None
    for r in range(cfg.runs):
        s = run_seeds(cfg.seed + r)
        g = build_graph(cfg.graph.family, cfg.graph.params, seed=s["graph"])
        n = g.number_of_nodes()
        if n0 is not None and n != n0:
            raise ValueError("every run must have the same number of agents")
        n0 = n
        graphs.append(g)
        edges.append(EdgeIndex.from_graph(g))
        setups.append(TASKS.get(cfg.task.name).make_setup(cfg.task, g, np.random.default_rng(s["setup"])))
        seeds.append(s)
        if cfg.roles is not None and cfg.roles.servers:
            cfg.roles.check_nodes(n)
            byz.append(_learner_byzantine(cfg, scenario, g, s["byzantine"]) + r * n)
        else:
            byz.append(choose_byzantine(scenario.byzantine, n, s["byzantine"],
                                        f"scenarios.{scenario.name}.byzantine", scenario.placement, g) + r * n)
    world_edges, present = EdgeIndex.disjoint_union(edges), None
    net = cfg.network
    if net is not None and net.topology.kind != "static":
        from ..network.model import blocks_needed, dynamic_edges

        world_edges, present = dynamic_edges(net, graphs, cfg.graph.family, cfg.graph.params,
                                             [s["graph"] for s in seeds],
                                             blocks_needed(cfg.iterations, net.topology.every))
    return World(graphs, world_edges, setups, seeds, torch.as_tensor(np.concatenate(byz), dtype=torch.long),
                 n0, present)


def _learner_byzantine(cfg: ExperimentConfig, scenario: ScenarioConfig, g, seed: int) -> np.ndarray:
    """Byzantine ids when ``[roles]`` names servers: listed ones must be learners; a count is
    placed among the learners only (at random, or on the learners of highest degree in the
    graph of learners: edges to servers do not count)."""
    n, key = g.number_of_nodes(), f"scenarios.{scenario.name}.byzantine"
    servers = set(cfg.roles.servers)
    learners = np.array([k for k in range(n) if k not in servers], dtype=np.int64)
    if isinstance(scenario.byzantine, int):
        if scenario.byzantine >= len(learners):
            raise ValueError(f"{key} = {scenario.byzantine}: at most {len(learners) - 1} of the {len(learners)} "
                             f"learners may be Byzantine (servers are trusted)")
        import networkx as nx

        nxg = g.to_networkx() if isinstance(g, EdgeListGraph) else g
        sub = nx.convert_node_labels_to_integers(nxg.subgraph(learners.tolist()), ordering="sorted")
        picked = choose_byzantine(scenario.byzantine, len(learners), seed, key, scenario.placement, sub)
        return np.sort(learners[picked])
    ids = choose_byzantine(scenario.byzantine, n, seed, key, scenario.placement, g)
    bad = sorted(set(ids.tolist()) & servers)
    if bad:
        raise ValueError(f"{key} = {scenario.byzantine}: {bad} are servers (roles.servers); servers are trusted, "
                         f"allowed: learner ids")
    return ids


def make_engine(cfg: ExperimentConfig, world: World, scenario: ScenarioConfig, rule_names: list[str]) -> GossipEngine:
    """One engine running every rule in ``rule_names`` as a lane over the same world."""
    task = TASKS.get(cfg.task.name)
    dtype = DTYPES[cfg.dtype] if cfg.dtype else task.default_dtype
    pop = task.for_world(cfg, world, len(rule_names), dtype)
    rules = [make_rule(r, nu=cfg.rules.nu, init_score=cfg.rules.init_score, **cfg.rules.params.get(r, {}))
             for r in rule_names]
    combines = [r.combine_step() or make_combine(cfg.rules.combine, **cfg.rules.combine_params) for r in rules]
    attacks = None
    if world.byzantine.numel():
        attacks = [make_attack(scenario.attack.name, **scenario.attack.params) for _ in rule_names]
    roles = None
    if cfg.roles is not None and cfg.roles.servers:
        from ..engine.roles import ServerRoles

        roles = ServerRoles(cfg.roles, world.edges, world.n, world.byzantine)
    kernel = cfg.kernel
    if kernel == "auto" and cfg.network is not None and cfg.network.protocol == "async":
        from ..kernels import wants_kernel

        kernel = "numba" if wants_kernel("auto", len(rules) * world.edges.num_edges, asynchronous=True) else "torch"
    return GossipEngine(pop, world.edges, rules, world.byzantine, attacks,
                        [s["attack"] for s in world.seeds], world.run_of_node, combines, roles, kernel=kernel)


def run_experiment(
    cfg: ExperimentConfig, out_dir: Path, progress: bool = True, figures: Optional[bool] = None,
    jobs: Optional[int] = None, *, overwrite: bool = False,
) -> dict:
    """Run every scenario x rule; returns the summary dict (also in ``out_dir/summary.json``).

    ``out_dir`` must not hold another run (:func:`p2pmtl.io.rundir.claim`) unless ``overwrite``;
    it is locked while the run lasts. Files are written as the run goes; Ctrl-C closes them
    cleanly (status ``interrupted``), draws the figures of what finished, then re-raises
    KeyboardInterrupt. Any other error marks the run ``failed`` with the error message in
    ``summary.json`` (what finished before stays readable) and is re-raised. With ``jobs > 1``
    scenarios run in parallel processes (one torch thread each), each writing a part directory
    that is merged into the run directory at the end. The run uses ``cfg.threads`` torch threads
    and leaves the caller's thread count as it found it.
    """
    from ..io.rundir import claim

    from .workers import UNGUARDED, in_worker_startup

    if in_worker_startup():
        raise SystemExit(f"error: {UNGUARDED}")
    out_dir = Path(out_dir)
    resolve_device(cfg.device)  # a GPU named but absent: an error before any file
    jobs = min(jobs or cfg.jobs, len(_job_names(cfg)))
    if jobs > 1:
        from .workers import check_importable

        check_importable(cfg)  # before any work or any file
    lock = claim(out_dir, overwrite=overwrite)
    try:
        (out_dir / "config.toml").write_text(dump_config(cfg))
        try:
            if jobs > 1:
                summary, interrupted = _run_parallel(cfg, out_dir, jobs, progress)
            else:
                caller_threads = torch.get_num_threads()  # the run sets cfg.threads; the caller keeps its own
                try:
                    summary, interrupted = _run_scenarios(cfg, out_dir, progress)
                finally:
                    torch.set_num_threads(caller_threads)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            _mark_failed(out_dir, e)
            raise
        if figures if figures is not None else cfg.output.figures:
            from ..io.figures import plot_run

            try:
                plot_run(out_dir)
            except Exception as e:
                _mark_failed(out_dir, e, stage="figures")
                raise
        if interrupted:
            raise KeyboardInterrupt
        return summary
    finally:
        lock.release()


def _mark_failed(out_dir: Path, e: BaseException, stage: str = "run") -> None:
    """Write ``status = failed`` (with the error) into ``summary.json``, keeping every result
    already summarised there; a run that failed before any scenario started gets a summary
    with no results. Best effort: if even this write fails (full disk), the caller's error
    is what the user sees."""
    from ..io.records import describe_error, set_status

    path = out_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    except (OSError, ValueError):
        summary = {"results": {}}
    set_status(summary, "failed", describe_error(e))
    summary["failed_stage"] = stage
    try:
        tmp = out_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
        tmp.replace(path)
    except OSError:
        pass


def _job_names(cfg: ExperimentConfig) -> list[str]:
    if cfg.mode == "server" and cfg.task.name == "federated_images":
        return [f"{s.name}/{m}" for s in cfg.scenarios for m in (s.methods or cfg.server.methods)]
    return [s.name for s in cfg.scenarios]


def _run_scenarios(cfg: ExperimentConfig, out_dir: Path, progress: bool, position: int = 0) -> tuple[dict, bool]:
    """All scenarios of ``cfg`` in this process; returns (summary, interrupted)."""
    if cfg.mode == "server":
        from ..server.run import run_server_scenarios

        return run_server_scenarios(cfg, out_dir, progress, position)
    torch.set_num_threads(cfg.threads)
    worlds = {s.name: build_world(cfg, s) for s in cfg.scenarios}  # all errors before any work
    rec = RunRecorder.from_output(out_dir, cfg.output)
    rules = cfg.rules.names
    bar = tqdm(total=len(cfg.scenarios) * len(rules) * cfg.iterations, disable=not progress,
               desc=cfg.name, unit="rule-it", position=position)
    with interruptible(rec, bar) as state, autograd_mode(cfg):
        for scenario in cfg.scenarios:
            world = worlds[scenario.name]
            _save_world(rec, scenario.name, world)
            engine = make_engine(cfg, world, scenario, rules)
            rec.summary["group_names"] = engine.pop.group_names
            normal = ~(engine.is_byzantine | engine.is_server).numpy()  # servers: not recorded
            blocks = [rec.open_block(scenario.name, r, normal, engine.pop.groups, cfg.runs, world.n) for r in rules]
            if cfg.network is None:
                _plain_rounds(cfg, rec, engine, blocks, world, bar)
            else:
                _network_rounds(cfg, rec, engine, blocks, world, bar)
            for j, (rule, block) in enumerate(zip(rules, blocks)):
                rec.end_block(block, cfg.output.window, _weight_stats(engine, j, world))
                _save_weights(rec, scenario.name, rule, engine.lane_weights(j), world)
    return rec.summary, state["interrupted"]


def autograd_mode(cfg: ExperimentConfig):
    """``torch.inference_mode()`` for a task that declares ``autograd = False`` (closed-form
    steps: the main job's rounds ran 25% faster, 400 -> 300 us, with the same numbers), else a
    no-op: rules, attacks and combine steps of such a task must not need autograd."""
    from contextlib import nullcontext

    return torch.inference_mode() if not getattr(TASKS.get(cfg.task.name), "autograd", True) else nullcontext()


def _host_metrics(engine: GossipEngine) -> dict:
    """The population's per-node metrics as numpy arrays, each converted once for all lanes
    (the recorder then takes numpy views of each lane: three torch calls per lane and metric
    fewer a record)."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in engine.pop.metrics().items()}


def _plain_rounds(cfg: ExperimentConfig, rec: RunRecorder, engine: GossipEngine, blocks: list, world: World, bar) -> None:
    """The plain synchronous clock: every round takes compute_time + latency (one hop; with
    servers, one latency per hop of the server phases)."""
    per_round_bytes = _bytes_per_round(world, engine)
    roles = engine.roles
    every = cfg.output.record_every

    def on_round(i: int, now: float) -> None:
        engine.step(i)
        if (i + 1) % every == 0 or i + 1 == cfg.iterations:
            metrics = _host_metrics(engine)
            for j, block in enumerate(blocks):
                rec.record(block, i, now, per_round_bytes * (i + 1),
                           {k: engine.lane_values(v, j) for k, v in metrics.items()})
        bar.update(len(blocks))

    SynchronousRounds(cfg.clock, cfg.iterations, on_round, roles.hops if roles is not None else 1).run()


def make_network(cfg: ExperimentConfig, world: World, engine: GossipEngine):
    from ..network.model import NetworkModel

    return NetworkModel(cfg.network, cfg.clock, world.graphs, world.edges, world.n, engine.pop.message_bytes,
                        [s["network"] for s in world.seeds], world.present)


def make_protocol(cfg: ExperimentConfig, world: World, engine: GossipEngine, on_record):
    """The gossip protocol of ``cfg.network`` (see :mod:`p2pmtl.network.protocols`)."""
    from ..network.protocols import AsyncGossip, SyncGossip

    net, nc = make_network(cfg, world, engine), cfg.network
    if nc.protocol == "sync":
        return SyncGossip(engine, net, cfg.iterations, nc.deadline, nc.topology.every, cfg.output.record_every,
                          on_record)
    return AsyncGossip(engine, net, cfg.iterations, nc.topology.every * cfg.clock.compute_time,
                       cfg.output.record_every, on_record)


def _network_rounds(cfg: ExperimentConfig, rec: RunRecorder, engine: GossipEngine, blocks: list, world: World,
                    bar) -> None:
    """A gossip protocol on the network model; per-agent network accounts are recorded as
    metrics next to the task's (bytes, simulated time, time computing / sending / waiting)."""
    last = [-1]

    def on_record(step: int, now: float, extras: dict) -> None:
        metrics = _host_metrics(engine)
        total = float(extras["bytes_sent"].sum()) / len(world.setups)
        for j, block in enumerate(blocks):  # the accounts are the world's: one dict shared by every lane
            rec.record(block, step, now, total, {k: engine.lane_values(v, j) for k, v in metrics.items()},
                       shared=extras)
        bar.update(len(blocks) * (step - last[0]))
        last[0] = step

    make_protocol(cfg, world, engine, on_record).run()


def _scenario_worker(cfg_data: dict, part_dir: str, progress: bool, position: int) -> str:
    """Child process: one scenario into its own part directory; returns its status (an error
    is recorded in the part's summary and re-raised to the parent)."""
    try:
        cfg = ExperimentConfig.model_validate(cfg_data)
        return "interrupted" if _run_scenarios(cfg, Path(part_dir), progress, position)[1] else "finished"
    except KeyboardInterrupt:  # stopped by the parent before or while it ran
        return "interrupted"


def _run_parallel(cfg: ExperimentConfig, out_dir: Path, jobs: int, progress: bool) -> tuple[dict, bool]:
    from concurrent.futures.process import BrokenProcessPool

    from .workers import broken_pool_error, call, process_pool, stop_pool

    jobs_cfg = _job_configs(cfg)  # every error before any work
    parts = [out_dir / "parts" / name for name, _ in jobs_cfg]
    interrupted, error = False, None
    t0 = time.perf_counter()
    pool, futures = None, []
    try:
        pool = process_pool(jobs, threads=cfg.threads, plugins=cfg.plugins)
        for i, ((_, job), part) in enumerate(zip(jobs_cfg, parts)):
            futures.append(pool.submit(call, _scenario_worker, job.model_dump(mode="json"), str(part), progress,
                                       i % jobs))
        for f in futures:
            try:
                interrupted |= f.result() == "interrupted"
            except BrokenProcessPool as e:  # workers died at start-up (e.g. an unguarded script)
                error = error or broken_pool_error(e)
            except Exception as e:  # a failed scenario: the others go on, the run fails
                error = error or e
    except KeyboardInterrupt:
        interrupted = True
        if pool is not None:
            stop_pool(pool, futures)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary = merge_parts(out_dir, parts, [name for name, _ in jobs_cfg])
    summary["wall_seconds"] = time.perf_counter() - t0
    status = "failed" if error is not None or summary["status"] == "failed" else (
        "interrupted" if interrupted or summary["status"] == "interrupted" else "finished")
    from ..io.records import describe_error, set_status

    set_status(summary, status, describe_error(error) if error is not None else None)
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    if error is not None:
        raise error
    return summary, status == "interrupted"


def _job_configs(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """The units run in parallel: gossip, one per scenario (its rules share one engine);
    server mode, one per (scenario, method). Worlds are built here to raise errors early."""
    if cfg.mode == "server" and cfg.task.name != "federated_images":
        from ..server.linear import LinearServer

        for s in cfg.scenarios:
            LinearServer(cfg, s, s.methods or cfg.server.methods, run_seeds(cfg.seed))
        return [(s.name, cfg.model_copy(update={"scenarios": [s]})) for s in cfg.scenarios]
    if cfg.mode == "server":
        from ..server.run import server_world

        seeds = run_seeds(cfg.seed)
        out = []
        for s in cfg.scenarios:
            server_world(cfg, s, seeds)
            for m in s.methods or cfg.server.methods:
                out.append((f"{s.name}__{m.replace('+', '_')}",
                            cfg.model_copy(update={"scenarios": [s.model_copy(update={"methods": [m]})]})))
        return out
    for s in cfg.scenarios:
        build_world(cfg, s)
    return [(s.name, cfg.model_copy(update={"scenarios": [s]})) for s in cfg.scenarios]


def merge_parts(out_dir: Path, parts: list[Path], names: Optional[list[str]] = None) -> dict:
    """Concatenate the part directories of parallel scenarios into ``out_dir`` (long-format
    CSVs, summaries, arrays) and remove them. ``summary["jobs"]`` gives each part's status
    (``not started`` when its worker never began)."""
    from ..io.records import METRICS_PARQUET, run_status

    summary: dict = {"status": "finished", "results": {}, "jobs": {}}
    statuses = []
    (out_dir / "arrays").mkdir(exist_ok=True)
    for name in ("metrics.csv", "curves.csv"):
        if name == "metrics.csv" and any((p / METRICS_PARQUET).is_dir() for p in parts):
            _merge_parquet_parts(out_dir, parts)
            continue
        with open(out_dir / name, "w") as out:
            for i, part in enumerate(p for p in parts if (p / name).is_file()):
                with open(part / name) as f:
                    header = f.readline()
                    if i == 0:
                        out.write(header)
                    shutil.copyfileobj(f, out)
    for k, part in enumerate(parts):
        name = names[k] if names else part.name
        try:
            s = json.loads((part / "summary.json").read_text())
        except (OSError, ValueError):
            s = None
        if s is None:
            status = "not started" if not part.exists() else "interrupted"
        else:
            status = run_status(s)
            if status == "running":  # its worker is gone (merging comes after the pool): killed
                status = "interrupted"
            for scenario, by_rule in s.get("results", {}).items():
                summary["results"].setdefault(scenario, {}).update(by_rule)
            summary.setdefault("group_names", s.get("group_names"))
            summary.setdefault("mode", s.get("mode", "gossip"))
            if s.get("error"):
                summary.setdefault("error", s["error"])
        summary["jobs"][name] = status
        statuses.append(status)
        for f in (part / "arrays").glob("*.npz") if (part / "arrays").is_dir() else []:
            shutil.move(str(f), out_dir / "arrays" / f.name)
    shutil.rmtree(out_dir / "parts", ignore_errors=True)
    status = ("failed" if "failed" in statuses else
              "interrupted" if any(s != "finished" for s in statuses) else "finished")
    from ..io.records import set_status

    return set_status(summary, status)


def _merge_parquet_parts(out_dir: Path, parts: list[Path]) -> None:
    """Move the Parquet parts of every job's ``metrics.parquet/`` into ``out_dir``'s, renumbered
    in job order (so the folder reads as the jobs' rows one after another)."""
    from ..io.records import METRICS_PARQUET

    dest = out_dir / METRICS_PARQUET
    dest.mkdir(exist_ok=True)
    k = 0
    for part in parts:
        for f in sorted((part / METRICS_PARQUET).glob("part-*.parquet")) if (part / METRICS_PARQUET).is_dir() else []:
            f.replace(dest / f"part-{k:05d}.parquet")
            k += 1


def _bytes_per_round(world: World, engine: GossipEngine) -> float:
    """Bytes sent per round per run: one model over every non-self edge (servers: one more over
    each of their out-edges, for the up, peer and down phases)."""
    non_self = int((world.edges.src != world.edges.dst).sum())
    if engine.roles is not None:
        non_self += engine.roles.extra_messages_per_run * len(world.setups)
    return non_self * engine.pop.message_bytes / len(world.setups)


def _weight_stats(engine: GossipEngine, lane: int, world: World) -> dict:
    """Share of each normal agent's weight on honest senders of its own task group, and on
    Byzantine senders (final weights of the lane's rule; servers are neither normal agents nor
    honest senders of a group)."""
    e, w = world.edges, engine.lane_weights(lane)
    groups = torch.as_tensor(engine.pop.groups)
    byz = engine.is_byzantine
    normal = ~(byz | engine.is_server)
    same = (groups[e.src] == groups[e.dst]) & normal[e.src]
    in_group = e.segment_sum(torch.where(same, w, torch.zeros_like(w)))[normal]
    on_byz = e.segment_sum(torch.where(byz[e.src], w, torch.zeros_like(w)))[normal]
    return {
        "weight_in_group": float(in_group.mean()),
        "weight_in_group_min": float(in_group.min()),
        "weight_in_group_per_agent": [round(float(v), 6) for v in in_group] if len(in_group) <= 1000 else None,
        "weight_on_byzantine": float(on_byz.mean()),
    }


def _first_run(world: World) -> torch.Tensor:
    return world.edges.dst < world.n


def _save_world(rec: RunRecorder, scenario: str, world: World) -> None:
    """Run 0's graph, drawing positions (the graph's, else a spring layout), groups and
    Byzantine agents, for the network figure."""
    g = world.graphs[0]
    pos = positions(g)
    if pos is None and g.number_of_nodes() <= 2000:
        import networkx as nx

        pos = nx.spring_layout(g.to_networkx() if isinstance(g, EdgeListGraph) else g, seed=0)
    elif pos is None:  # too many nodes for a spring layout: uniform in the unit square
        pos = np.random.default_rng(0).random((g.number_of_nodes(), 2))
    byz = world.byzantine[world.byzantine < world.n].numpy()
    edges = None
    if world.present is None:  # a static graph: run 0's edges are the world's first (dst-sorted) ones
        e, stop = world.edges, int(world.edges.offsets[world.n])
        edges = EdgeIndex(e.src[:stop], e.dst[:stop], e.self_edge[:world.n], world.n)
    rec.save_world(scenario, g, pos, world.setups[0].group, byz, edges)


def _save_weights(rec: RunRecorder, scenario: str, rule: str, weights: torch.Tensor, world: World) -> None:
    sel = _first_run(world)
    e = world.edges
    rec.save_arrays(f"weights__{scenario}__{rule}", src=e.src[sel].numpy(), dst=e.dst[sel].numpy(),
                    w=weights[sel].double().numpy(), n=np.array(world.n))
