"""Benchmark: the batched engine against the per-agent numpy loop of the published reference
code (:mod:`p2pmtl.engine.reference`), in the same process, then scaling to large graphs.

Run with ``p2pmtl bench``. Figures are printed, never asserted (timings belong here, not in
tests). Each scaling size runs in a fresh subprocess so its peak memory (max RSS) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.device import resolve_device
from ..experiments.config import load_config
from ..resources import resolve_config
from ..validation import ConfigError
from .common import bench_config, best_time
from ..experiments.runner import build_world, make_engine
from ..engine.reference import ReferenceDiffusion
from ..tasks.target_localization import COMPILED_NOISE_MIN_AGENTS

RULES = ["noncoop", "average", "loss", "distance"]


def _time(fn, iters: int, repeats: int = 5) -> float:
    """Seconds per call: the best of ``repeats`` timed batches of ``iters`` calls (the timeit
    convention: the minimum is the least disturbed by other load on the machine)."""
    fn(0)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(iters):
            fn(i)
        best = min(best, (time.perf_counter() - t) / iters)
    return best


def reference_vs_batched(iters: int) -> list[dict]:
    """Per-rule time per iteration at 100 agents (20 Byzantine), reference vs batched."""
    cfg = bench_config(100, 20)
    scenario = cfg.scenarios[0]
    world = build_world(cfg, scenario)
    e, s = world.edges, world.setups[0]
    neigh = [[] for _ in range(world.n)]
    for src, dst in zip(e.src.tolist(), e.dst.tolist()):
        neigh[dst].append(src)
    byz = set(world.byzantine.tolist())
    probe = make_engine(cfg, world, scenario, ["noncoop"])
    data = []  # identical streaming data for the reference loop
    for i in range(50):
        probe.step(i)
        data.append((probe.pop.u.numpy().copy(), probe.pop.d.numpy().copy()))
    byz_msgs = {k: probe.sent[k].numpy().copy() for k in byz}
    rows = []
    for rule in RULES:
        ref = ReferenceDiffusion(rule, s.pos, neigh, byz, s.theta0, cfg.task.mu, cfg.rules.nu, cfg.rules.init_score)
        t_ref = _time(lambda i: ref.step(*data[i % 50], byz_msgs), max(10, iters // 10))
        eng = make_engine(cfg, world, scenario, [rule])
        t_ours = _time(eng.step, iters)
        rows.append({"rule": rule, "reference_ms": 1e3 * t_ref, "batched_ms": 1e3 * t_ours})
    eng = make_engine(cfg, world, scenario, RULES)
    t_lanes = _time(eng.step, iters) / len(RULES)
    runs = 10
    cfg10 = bench_config(100, 20, runs=runs)
    world10 = build_world(cfg10, cfg10.scenarios[0])
    eng10 = make_engine(cfg10, world10, cfg10.scenarios[0], RULES)
    t_runs = _time(eng10.step, max(10, iters // 4)) / (len(RULES) * runs)
    ref_mean = float(np.mean([r["reference_ms"] for r in rows]))
    rows.append({"rule": "mean of the 4 rules, one engine each", "reference_ms": ref_mean,
                 "batched_ms": float(np.mean([r["batched_ms"] for r in rows]))})
    rows.append({"rule": "4 rules as lanes of one engine (per rule)", "reference_ms": ref_mean,
                 "batched_ms": 1e3 * t_lanes})
    rows.append({"rule": f"4 rules x {runs} seeds batched (per rule and seed)", "reference_ms": ref_mean,
                 "batched_ms": 1e3 * t_runs})
    return rows


def memory_floor(edges, rows: torch.Tensor, repeats: int = 5) -> float:
    """CPU seconds (of this thread: time-slicing on a shared machine does not count) of the
    memory traffic no synchronous ATC iteration on ``edges`` (the engine's destination-sorted
    edge list, E edges, N nodes) with models ``rows [N, D]`` can avoid, measured in this
    process: the best of ``repeats`` runs of exactly three passes, each into a tensor allocated
    before the timing:

    1. the local step's write of every node's message: ``psi = theta + mu (q - theta)``
       (``lerp`` of two ``[N, D]`` tensors into a third);
    2. every message onto its edge: ``index_select`` of ``psi [N, D]`` by the senders into an
       ``[E, D]`` tensor (:func:`~p2pmtl.core.ops.gather_rows`, the engine's own gather: one
       16-byte element per row);
    3. every receiver's sum: the segment reduction of that ``[E, D]`` tensor into the new
       models ``[N, D]`` (:func:`~p2pmtl.core.ops.segment_sum_into`, as the engine does).

    Nothing else: no weights or edge losses (the per-edge ``[E]`` work of Li2020 eqs. 4, 9-10),
    no streaming data and no noise draws, which the measured iteration does on top."""
    from ..core.ops import gather_rows, segment_sum_into

    theta, target = torch.rand_like(rows), torch.rand_like(rows)
    psi, new = torch.empty_like(rows), torch.empty_like(rows)
    per_edge = torch.empty((edges.num_edges, rows.shape[1]), dtype=rows.dtype)

    def once() -> None:
        torch.lerp(theta, target, 0.1, out=psi)
        gather_rows(psi, edges.src, out=per_edge)
        segment_sum_into(per_edge, edges.offsets, out=new)

    return best_time(once, repeats, clock=time.thread_time)


def noise_draw_times(n: int, threads: int, repeats: int = 7) -> dict:
    """One step of the target task's noise at ``n`` agents (``3 n`` float64 normals), the
    fastest of ``repeats`` wall-clock calls each, on ``threads`` threads: torch's ``normal_``
    (serial: uniforms, then the Box-Muller transform of each block of 16) against
    :func:`~p2pmtl.kernels.normal_draws.normal_fill_` (the same numbers, the transform on the
    threads). Also whether the two drew the same numbers."""
    from ..kernels.normal_draws import normal_fill_

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = 3 * n // 16 * 16
        a, b = torch.empty(size, dtype=torch.float64), torch.empty(size, dtype=torch.float64)
        g_a, g_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        naive = best_time(lambda: a.normal_(generator=g_a), repeats)
        threaded = best_time(lambda: normal_fill_(b, g_b), repeats)
        return {"agents": n, "threads": threads, "normal_ms": 1e3 * naive, "threaded_ms": 1e3 * threaded,
                "same": bool(torch.equal(a, b))}
    finally:
        torch.set_num_threads(before)


def scale_child(n: int, iters: int, kernel: str = "auto", threads: int = 1, rules: str = "loss",
                loss: float = 0.0) -> dict:
    """One size in this process: build time; loss-rule time per iteration, the mean over
    ``iters`` iterations (noise draws included), as wall time and as CPU time of the process
    (all its threads); minor page faults per iteration after the first; the memory floor of one
    iteration on the same edge list (:func:`memory_floor`, on one thread, the better of one
    measurement before and one after the iterations) and the ratio of the wall time per
    iteration to it; peak RSS. ``kernel``: the config's ``kernel`` (``auto``, ``numba`` or
    ``torch``); ``threads``: torch's (and the kernel's) threads; ``rules``: the weight rules,
    comma-separated, run as lanes of one engine (ms/it is per iteration of all lanes); ``loss``:
    above 0, the synchronous network model drops each message with this probability (the
    rounds of :class:`~p2pmtl.network.protocols.SyncGossip`, masked)."""
    torch.set_num_threads(1)
    t = time.perf_counter()
    cfg = bench_config(n, n // 5).model_copy(update={"kernel": kernel})
    if loss > 0:
        cfg = load_config(data={**cfg.model_dump(mode="json"), "network": {"loss": loss}})
    world = build_world(cfg, cfg.scenarios[0])
    eng = make_engine(cfg, world, cfg.scenarios[0], rules.split(","))
    step = eng.step
    if loss > 0:
        from ..experiments.runner import make_protocol

        step = make_protocol(cfg, world, eng, lambda *a: None).round
    build = time.perf_counter() - t
    floor = memory_floor(eng.edges, eng.pop.theta)
    torch.set_num_threads(threads)
    t, cpu = time.perf_counter(), time.process_time()
    step(0)  # the first iteration also faults in the tensors the engine keeps (and loads the kernel)
    first = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(1, iters):
        step(i)
    per_it, cpu_it = (time.perf_counter() - t) / max(1, iters - 1), (time.process_time() - cpu) / max(1, iters - 1)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(1, iters - 1)
    torch.set_num_threads(1)
    floor = min(floor, memory_floor(eng.edges, eng.pop.theta))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"agents": n, "edges": world.edges.num_edges, "kernel": eng.kernel, "threads": threads, "rules": rules,
            "loss": loss,
            "build_s": build, "first_s": first, "ms_per_iteration": 1e3 * per_it,
            "cpu_ms_per_iteration": 1e3 * cpu_it, "floor_ms": 1e3 * floor, "floor_ratio": per_it / floor,
            "faults_per_iteration": faults, "total_s": first + per_it * (iters - 1), "iterations": iters,
            "peak_rss_mb": rss_mb}


def digits_round(repeats: int = 3) -> dict:
    """One loss-based round of the digits case study (10 agents, complete graph, batch 64, every
    receiver scores every neighbour on its 64 images): our engine step against the naive
    per-agent, per-edge loop of the reference code (NCHW modules, one forward pass per edge,
    parameter-by-parameter weighted sums) on the same models and batches."""
    from ..tasks.models import DigitCNN
    from ..engine.reference import naive_cnn_round

    cfg = load_config(data={
        "name": "bench_digits", "iterations": 1, "graph": {"topology": "complete10"},
        "task": {"name": "digits", "batch_size": 64, "score_batch": 64, "score_chunk": 64},
        "rules": {"names": ["loss"], "nu": 0.05, "init_score": 1.0},
        "scenarios": [{"name": "clean"}],
    })
    world = build_world(cfg, cfg.scenarios[0])
    eng = make_engine(cfg, world, cfg.scenarios[0], ["loss"])
    pop = eng.pop
    naive_models = []
    for i in range(pop.world_nodes):
        m = DigitCNN()
        with torch.no_grad():
            for p, c in zip(m.parameters(), torch.split(pop.theta[i], pop.bank.sizes)):
                p.copy_(c.view(p.shape))
        naive_models.append(m)
    naive_opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in naive_models]
    scores = [[1.0] * pop.world_nodes for _ in range(pop.world_nodes)]
    pop.sample(0)
    batches = [(x.contiguous(), y) for x, y in pop.batch]
    t_ours, t_naive = float("inf"), float("inf")
    for i in range(repeats):  # interleaved, best of `repeats` each
        t = time.perf_counter()
        eng.step(i)
        t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter()
        naive_cnn_round(naive_models, naive_opts, batches, scores, 0.05, 64)
        t_naive = min(t_naive, time.perf_counter() - t)
    return {"naive_s": t_naive, "ours_s": t_ours, "params": pop.bank.num_params}


def table2_config(clients: int = 100):
    """The bundled ``br_mtrl_table2`` config with ``clients`` clients (a ConfigError naming the
    setting that the count breaks, e.g. too few clients for Krum's f)."""
    return load_config(resolve_config("br_mtrl_table2"), [f"graph.n={clients + 1}"] if clients != 100 else [])


def server_round(rounds: int = 3, device: str = "cpu",
                 methods: tuple[str, ...] = ("fedavg", "fedper+krum", "fedrep", "br-mtrl+gm", "br-mtrl+krum"),
                 clients: int = 100, bank: str = "auto") -> list[dict]:
    """Seconds per round of each scheme at the Table II scale of ``experiments/br_mtrl_table2.toml``
    (100 clients, alpha 0.2, 20 Byzantine sending phi + N(0, I)), clients training on ``device``
    in the layout ``bank`` (``task.bank``: per-client modules, or one stacked tensor)."""
    from ..robust.attacks import make_attack
    from ..server.federated import Clients, FederatedRun, Method
    from ..server.aggregation import build_aggregator
    from ..server.run import server_world
    from ..engine.world import run_seeds

    cfg = table2_config(clients)
    seeds = run_seeds(cfg.seed)
    scenario = cfg.scenarios[-1]
    _, setup, byz = server_world(cfg, scenario, seeds)
    rows = []
    for name in methods:
        m = Method.parse(name)
        c = Clients(cfg.task.model_copy(update={"bank": bank}), setup.clients, setup.num_classes,
                    setup.image_shape, seeds["setup"], device=resolve_device(device))
        run = FederatedRun(m, cfg.server, c, build_aggregator(m, cfg.server, c.rep_sizes, c.all_sizes),
                           byz, make_attack(scenario.attack.name, **scenario.attack.params), seeds["data"])
        t = time.perf_counter()
        for r in range(rounds):
            run.round(r)
        if c.device.type == "cuda":
            torch.cuda.synchronize(c.device)
        rows.append({"method": name, "seconds_per_round": (time.perf_counter() - t) / rounds, "clients": c.n,
                     "device": str(c.device), "bank": "batched" if getattr(run, "bank", None) is not None else "modules"})
    return rows


def process_time(repeats: int = 5, config: str = "target_localization") -> dict:
    """Whole-process wall time of ``p2pmtl run CONFIG --no-figures -q`` against a bare
    ``python -c "import torch"``, and of the same run on the network model with its realism off
    (``--set network={}``: zero latency, equal speeds) and with every metrics.csv row formatted
    in the simulation's process (``--set output.csv_writer=inline``, the way before the helper
    process), the five alternated ``repeats`` times (so a change of load on the machine hits
    all alike): the medians, their ratios and the spread (max - min) of the plain runs, the
    noise a network overhead is compared with. Each alternation starts with the next process
    in turn, and the disk caches are written back before each timed process (the runs write
    47 MB: a run that follows another used to pay for its predecessor's write-back, which made
    the network and inline variants, always after the plain run, look 0.3 s slower). The ``p2pmtl`` command skips the interpreter's
    teardown of its modules (:func:`p2pmtl.cli.fast_exit`), which a bare torch process pays:
    a bare process that ends the same way is timed beside them (``torch_fast_s``), the bound
    without that difference. ``paired``: the network and inline-writer runs minus the plain
    run of the same alternation (less noisy than a difference of medians)."""
    import statistics
    import tempfile

    bare = [sys.executable, "-c", "import torch"]
    bare_fast = [sys.executable, "-c", "import torch, atexit, os, sys; atexit._run_exitfuncs(); sys.stdout.flush(); "
                                       "os._exit(0)"]
    times: dict[str, list[float]] = {"import torch": [], "p2pmtl run": [], "network": [], "inline": [],
                                     "fast": []}
    with tempfile.TemporaryDirectory(prefix="p2pmtl-bench-") as tmp:
        run = [sys.executable, "-m", "p2pmtl", "run", config, "--no-figures", "-q", "--out", str(Path(tmp) / "run"),
               "--overwrite"]
        procs = [("import torch", bare), ("p2pmtl run", run), ("network", run + ["--set", "network={}"]),
                 ("inline", run + ["--set", "output.csv_writer=inline"]), ("fast", bare_fast)]
        for i in range(repeats):
            for key, cmd in procs[i % len(procs):] + procs[:i % len(procs)]:  # each starts an alternation in turn
                if hasattr(os, "sync"):
                    os.sync()  # the last run's 47 MB of files written back now, not during the next timed one
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times[key].append(time.perf_counter() - t)
    torch_s, run_s = statistics.median(times["import torch"]), statistics.median(times["p2pmtl run"])
    net_s, spread = statistics.median(times["network"]), max(times["p2pmtl run"]) - min(times["p2pmtl run"])
    inline_s, fast_s = statistics.median(times["inline"]), statistics.median(times["fast"])
    return {"config": config, "repeats": repeats, "torch_s": torch_s, "run_s": run_s, "ratio": run_s / torch_s,
            "network_s": net_s, "network_overhead": net_s / run_s - 1, "run_spread_s": spread,
            "inline_s": inline_s, "inline_ratio": inline_s / torch_s, "torch_fast_s": fast_s,
            "fast_ratio": run_s / fast_s,
            "best_s": {k: min(v) for k, v in times.items()},  # each process's fastest run: the least noisy view
            "best_ratio": min(times["p2pmtl run"]) / min(times["import torch"]),
            "best_fast_ratio": min(times["p2pmtl run"]) / min(times["fast"]),
            "paired": {k: _paired(times[k], times["p2pmtl run"]) for k in ("network", "inline")}}


def _paired(other: list[float], base: list[float]) -> dict:
    """``other - base`` alternation by alternation (the two ran back to back, so a change of
    load hits both): median, range, and in how many alternations ``other`` was slower."""
    import statistics

    d = [a - b for a, b in zip(other, base)]
    return {"median_s": statistics.median(d), "min_s": min(d), "max_s": max(d), "slower": sum(x > 0 for x in d),
            "of": len(d)}


def scale_process_time(n: int = 100_000, iterations: int = 500, repeats: int = 3, threads: int = 1) -> dict:
    """Whole-process wall time of ``p2pmtl run`` on the scaling world (:func:`bench_config`: n
    agents, 20% Byzantine, loss rule, ``iterations`` iterations, means-only records every 50
    iterations, no figures) against a bare ``python -c "import torch"``, alternated ``repeats``
    times: the medians. The command is returned so that it can be rerun by hand."""
    import statistics
    import tempfile

    box = 3.0 * (n / 100) ** 0.5
    sets = {"graph.family": "random_geometric", "graph.n": n, "graph.radius": 1.0, "graph.box": box,
            "graph.max_neighbors": 9, "graph.directed": "true", "task.box": box, "iterations": iterations,
            "rules.names": '["loss"]', "output.per_agent": "false", "output.record_every": 50,
            "output.window": 50, "threads": threads,
            "scenarios": f'[{{name="attack", byzantine={n // 5}, attack={{name="uniform", low=15.0, high=16.0}}}}]'}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    times: dict[str, list[float]] = {"import torch": [], "p2pmtl run": []}
    with tempfile.TemporaryDirectory(prefix="p2pmtl-bench-") as tmp:
        run = [sys.executable, "-m", "p2pmtl", "run", "target_localization", "--no-figures", "-q",
               "--out", str(Path(tmp) / "run"), "--overwrite", *args]
        for _ in range(repeats):
            for key, cmd in (("import torch", [sys.executable, "-c", "import torch"]), ("p2pmtl run", run)):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times[key].append(time.perf_counter() - t)
    return {"agents": n, "iterations": iterations, "threads": threads, "torch_s": statistics.median(times["import torch"]),
            "run_s": statistics.median(times["p2pmtl run"]),
            "command": "p2pmtl run target_localization --no-figures -q " + " ".join(
                f"--set '{k}={v}'" for k, v in sets.items())}


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    parts = set(args.only or ["linear", "scale", "graphs", "digits", "server", "aggregators", "network", "resam",
                              "process"])
    if "bank" in parts and args.bank_clients:  # a client count the config refuses stops before any timing
        try:
            table2_config(args.bank_clients)
        except ConfigError as e:
            raise ConfigError(f"--bank-clients {args.bank_clients}: the BR-MTRL server round cannot run with that "
                              f"many clients: {e}") from None
    if "linear" in parts:
        print(f"torch {torch.__version__}, 1 thread; target localization, 100 agents, 20 Byzantine")
        print(f"{'rule':<48} {'reference ms/it':>15} {'batched ms/it':>14} {'speed-up':>9}")
        for r in reference_vs_batched(args.iterations):
            print(f"{r['rule']:<48} {r['reference_ms']:>15.3f} {r['batched_ms']:>14.4f} "
                  f"{r['reference_ms'] / r['batched_ms']:>8.1f}x")
    if "bank" in parts:
        from .bank import main as bank_main

        on_gpu = resolve_device(args.device).type == "cuda"
        torch.set_num_threads(args.bank_threads)
        bank_main(args.bank_sizes or ([10, 100, 1000] if on_gpu else [10]), args.device, layouts=args.bank_layouts)
        if args.bank_clients:
            for layout in ["modules", "batched"] if not on_gpu else ["batched"]:
                if args.bank_layouts and layout not in args.bank_layouts:
                    continue
                rs = server_round(2, args.device, ("br-mtrl+gm",), args.bank_clients, layout)
                print(f"  BR-MTRL (br-mtrl+gm) server round, {rs[0]['clients']} clients (alpha 0.2), clients on "
                      f"{rs[0]['device']} as {rs[0]['bank']}, {torch.get_num_threads()} thread(s): "
                      f"{rs[0]['seconds_per_round']:.2f} s/round")
        torch.set_num_threads(1)
    if "graphs" in parts:
        from .graphs import main as graphs_main

        graphs_main(args.graph_sizes, args.graph_networkx_max)
    if "digits" in parts:
        r = digits_round()
        print(f"\ndigits: one loss-based round, 10 CNN agents ({r['params']:,} parameters each), batch 64, "
              f"complete graph, 1 thread")
        print(f"  naive per-agent, per-edge loop (NCHW): {r['naive_s']:.2f} s")
        print(f"  p2pmtl (channels_last, each sender scored once on its receivers' batches): {r['ours_s']:.2f} s")
        print(f"  speed-up: {r['naive_s'] / r['ours_s']:.2f}x")
    if "server" in parts:
        print("\nserver mode: one round at the Table II scale (100 clients, alpha 0.2, 20 Byzantine), 1 thread")
        for r in server_round():
            print(f"  {r['method']:<14} {r['seconds_per_round']:.2f} s/round")
    if "aggregators" in parts:
        from .aggregators import benchmark_aggregators, format_table

        print(f"\naggregators: {args.agg_n} clients x {args.agg_dim:,} parameters, 20% far outliers, "
              f"f = {args.agg_n // 10}, {args.agg_threads} thread(s), best of {args.agg_repeats}")
        print(format_table(benchmark_aggregators(n=args.agg_n, dim=args.agg_dim, f=args.agg_n // 10,
                                                 threads=args.agg_threads, repeats=args.agg_repeats)))
        from .aggregators import node_aggregator_rows

        old_threads = torch.get_num_threads()
        torch.set_num_threads(args.agg_threads)
        try:
            rows = node_aggregator_rows(repeats=args.agg_repeats)
        finally:
            torch.set_num_threads(old_threads)
        print(f"\nnode_aggregator (robust gossip) at every receiver of G(1000, p), mean degree 10, 1,000 float32 "
              f"parameters, {args.agg_threads} thread(s), best of {args.agg_repeats}: one call per receiver "
              f"against one batched call per neighbourhood size")
        print(f"{'aggregator':<20} {'per receiver s':>15} {'batched s':>10} {'speed-up':>9}")
        for r in rows:
            print(f"{r['aggregator']:<20} {r['per_receiver_s']:>15.3f} {r['batched_s']:>10.4f} "
                  f"{r['per_receiver_s'] / r['batched_s']:>8.1f}x")
    if "network" in parts:
        from .network import main as network_main

        network_main()
    if "resam" in parts:
        from .resam import main as resam_main

        resam_main()
    if "process" in parts:
        r = process_time(getattr(args, "process_repeats", 5))
        print(f"\nprocess: `p2pmtl run {r['config']} --no-figures -q` against a bare `python -c \"import torch\"`, "
              f"alternated {r['repeats']} times (medians)")
        print(f"  import torch: {r['torch_s']:.2f} s")
        print(f"  p2pmtl run:   {r['run_s']:.2f} s")
        print(f"  ratio:        {r['ratio']:.2f}x")
        print(f"  with network = {{}} (realism off): {r['network_s']:.2f} s, {100 * r['network_overhead']:+.1f}% "
              f"(spread of the plain runs: {r['run_spread_s']:.2f} s)")
        print(f"  metrics.csv formatted inline (output.csv_writer = 'inline'): {r['inline_s']:.2f} s, "
              f"{r['inline_ratio']:.2f}x")
        print(f"  a bare torch process ending as p2pmtl does (no module teardown): {r['torch_fast_s']:.2f} s; "
              f"p2pmtl run against it: {r['fast_ratio']:.2f}x")
        for key, what in (("network", "network = {}"), ("inline", "inline writer")):
            p = r["paired"][key]
            print(f"  paired, {what} minus the plain run: median {p['median_s']:+.2f} s (from {p['min_s']:+.2f} to "
                  f"{p['max_s']:+.2f} s), slower in {p['slower']} of {p['of']} alternations")
        b = r["best_s"]
        print(f"  fastest of each: import torch {b['import torch']:.2f} s, p2pmtl run {b['p2pmtl run']:.2f} s "
              f"({r['best_ratio']:.2f}x), network {b['network']:.2f} s, inline {b['inline']:.2f} s, bare torch "
              f"ending as p2pmtl does {b['fast']:.2f} s (run against it: {r['best_fast_ratio']:.2f}x)")
    if "scale" in parts and getattr(args, "process_agents", 0):
        reps = min(3, getattr(args, "process_repeats", 3))
        r = scale_process_time(args.process_agents, args.process_iterations, reps, args.scale_threads)
        print(f"\nscaling, whole process: {r['agents']:,} agents x {r['iterations']} iterations of the loss rule "
              f"(build, run, means-only records, kernel auto, {r['threads']} thread(s)), medians of {reps} "
              f"alternated runs")
        print(f"  import torch: {r['torch_s']:.2f} s")
        print(f"  p2pmtl run:   {r['run_s']:.2f} s   ({r['command']})")
    if "scale" in parts and args.sizes:
        rules = ",".join(args.scale_rules)
        lost = f", the network model dropping {args.scale_loss:.0%} of the messages" if args.scale_loss > 0 else ""
        print(f"\nscaling: random geometric (density of Li2020, cap 9), 20% Byzantine, rules {rules} "
              f"(as lanes of one engine){lost}, {args.scale_iterations} iterations, {args.scale_threads} thread(s)")
        print("  kernel: torch ops, or the compiled round (p2pmtl.kernels.fused_round, the same numbers);\n"
              "  first s: the first iteration (faults in the kept tensors, loads or compiles the kernel);\n"
              "  ms/it: wall time per later iteration; cpu ms/it: CPU time of the process (all threads);\n"
              "  floor: one thread's CPU time of the memory traffic no implementation avoids (the local step's\n"
              "  write, the sent rows gathered onto the edges, their segment sum into the new models:\n"
              "  bench.main.memory_floor), measured in the same process; x floor = ms/it / floor ms;\n"
              "  faults/it: minor page faults per iteration after the first")
        print(f"{'agents':>8} {'edges':>9} {'kernel':>6} {'build s':>8} {'first s':>8} {'ms/it':>9} {'cpu ms/it':>10} "
              f"{'floor ms':>9} {'x floor':>8} {'faults/it':>10} {'total s':>8} {'peak RSS MB':>12}")
        for n in args.sizes:
            for kernel in args.scale_kernels:
                out = subprocess.run([sys.executable, "-m", "p2pmtl.bench.main", "child", str(n),
                                      str(args.scale_iterations), kernel, str(args.scale_threads), rules,
                                      str(args.scale_loss)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{r['agents']:>8} {r['edges']:>9} {r['kernel']:>6} {r['build_s']:>8.2f} {r['first_s']:>8.2f} "
                      f"{r['ms_per_iteration']:>9.2f} {r['cpu_ms_per_iteration']:>10.2f} {r['floor_ms']:>9.2f} "
                      f"{r['floor_ratio']:>8.2f} {r['faults_per_iteration']:>10.0f} {r['total_s']:>8.2f} "
                      f"{r['peak_rss_mb']:>12.0f}")
        r = noise_draw_times(max(args.sizes), args.scale_threads)
        print(f"  noise of one step at {r['agents']:,} agents (float64 normals), best of 7: torch's normal_ "
              f"{r['normal_ms']:.1f} ms, uniforms + Box-Muller on {r['threads']} thread(s) (kernels.normal_draws, "
              f"used from {COMPILED_NOISE_MIN_AGENTS:,} agents) {r['threaded_ms']:.1f} ms "
              f"({r['normal_ms'] / r['threaded_ms']:.2f}x), same numbers: {r['same']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) in (4, 6, 7, 8) and sys.argv[1] == "child":
        extra = (sys.argv[4], int(sys.argv[5]), *sys.argv[6:7], *map(float, sys.argv[7:8])) if len(sys.argv) >= 6 else ()
        print(json.dumps(scale_child(int(sys.argv[2]), int(sys.argv[3]), *extra)))
    else:
        sys.exit("usage: p2pmtl bench [--only PART ...]  (this module's own entry point only runs scale children)")
