"""Benchmarks of the network model (``p2pmtl bench --only network``); figures are printed,
never asserted.

- Synchronous overhead: the plain engine step against the same step driven by
  :class:`~p2pmtl.network.protocols.SyncGossip` (per-agent timelines, FIFO links, accounts), with the
  network switched to zero latency, and switched fully on.
- Asynchronous speed: agent steps (events) per second for 1,000 agents on a random geometric
  graph, our lookahead batching (a bound per agent and link, see
  :class:`~p2pmtl.network.protocols.AsyncGossip`) against one global window of the smallest
  delay (the batching it replaced) and the naive one-event-at-a-time simulation (the same
  protocol with the lookahead set to 0, so only agents at the very same instant are batched).
"""
from __future__ import annotations

import time

from ..experiments.config import load_config
from ..experiments.runner import build_world, make_engine, make_protocol
from .common import bench_config


def _setup(n: int, network: dict, rules: list[str], byzantine: int = 0, iterations: int = 1, kernel: str = "auto"):
    base = bench_config(n, byzantine)
    data = base.model_dump(mode="json")
    data.update(iterations=iterations, network=network, rules={"names": rules}, kernel=kernel)
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, rules)
    return cfg, world, engine


def sync_overhead(iters: int = 300, repeats: int = 7) -> list[dict]:
    """ms per synchronous iteration (100 agents, 20 Byzantine, 4 rules as lanes), best of
    ``repeats`` interleaved batches of ``iters`` iterations (order reversed every other
    repeat). A second copy of the plain engine shows the noise floor of the comparison."""
    rules = ["noncoop", "average", "loss", "distance"]
    settings = {
        "plain engine (no network model)": None,
        "plain engine, second copy (noise floor)": None,
        "network model, zero latency, equal speeds": {},
        "latency 10 ms + 1 MB/s + lognormal speeds + 10% stragglers": {
            "latency": 0.01, "bandwidth": 1e6, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3},
            "stragglers": {"fraction": 0.1}},
        "same + 5% message loss + deadline 1.5 s": {
            "latency": 0.01, "bandwidth": 1e6, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3},
            "stragglers": {"fraction": 0.1}, "loss": 0.05, "deadline": 1.5},
    }
    runners = {}
    for name, net in settings.items():
        cfg, world, engine = _setup(100, net or {}, rules, byzantine=20, iterations=10**9)
        if net is None:
            runners[name] = engine.step
        else:
            proto = make_protocol(cfg, world, engine, lambda *a: None)
            runners[name] = proto.round
    best = {k: float("inf") for k in settings}
    counter = {k: 0 for k in settings}
    for rep in range(repeats):
        order = list(runners.items())
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            for _ in range(iters):
                fn(counter[name])
                counter[name] += 1
            best[name] = min(best[name], (time.perf_counter() - t) / iters)
    plain = best["plain engine (no network model)"]
    return [{"setting": k, "ms": v * 1e3, "overhead": v / plain - 1} for k, v in best.items()]


def async_events(n: int = 1000, iterations: int = 30, naive_iterations: int = 2, repeats: int = 3) -> list[dict]:
    """Events (agent steps) per second, asynchronous gossip, loss rule, lognormal speeds
    (sigma 0.3) and 50 ms links; ours (the firing agents' combination compiled, or the
    torch ops over the whole world) vs one global window [t, t + min delay) (the batching before
    the bound per link) and one event at a time. Each batched row is the best of ``repeats``
    runs (fresh worlds, the same numbers); the naive one runs once."""
    net = {"protocol": "async", "latency": 0.05, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3}}
    out = []
    # (row, iterations, kernel, bound per link, lookahead: None keeps the network's, 0 = the naive way)
    for name, its, kernel, per_link, lookahead in (("lookahead per link, compiled", iterations, "numba", True, None),
                                                   ("one global window, compiled", iterations, "numba", False, None),
                                                   ("lookahead per link, torch ops", iterations, "torch", True, None),
                                                   ("one event at a time (naive)", naive_iterations, "torch", True, 0.0)):
        if kernel == "numba":  # untimed: numba's import and the kernels' load from its cache, once a process
            make_protocol(*_setup(n, net, ["loss"], iterations=1, kernel=kernel)[:3], lambda *a: None).run()
        best = None
        for _ in range(1 if lookahead is not None else repeats):
            cfg, world, engine = _setup(n, net, ["loss"], iterations=its, kernel=kernel)
            proto = make_protocol(cfg, world, engine, lambda *a: None)
            proto.bound_per_link = per_link
            if lookahead is not None:
                proto.lookahead = lookahead
            t = time.perf_counter()
            proto.run()
            dt = time.perf_counter() - t
            if best is None or dt < best[0]:
                best = (dt, world, engine, proto)
        dt, world, engine, proto = best
        out.append({"setting": name, "agents": n, "edges": world.edges.num_edges, "events": proto.events,
                    "batches": proto.batches, "seconds": dt, "events_per_s": proto.events / dt,
                    "messages_per_s": float(proto.acc.sent.sum() / engine.pop.message_bytes) / dt})
    return out


def main() -> None:
    print("\nnetwork model, synchronous: target localization, 100 agents, 20 Byzantine, 4 rules as lanes, 1 thread")
    print(f"{'setting':<62} {'ms/it':>7} {'overhead':>9}")
    for r in sync_overhead():
        print(f"{r['setting']:<62} {r['ms']:>7.3f} {100 * r['overhead']:>8.1f}%")
    print("\nnetwork model, asynchronous: 1,000 agents, random geometric graph, loss rule, lognormal speeds, 50 ms links")
    print(f"{'setting':<31} {'edges':>7} {'events':>7} {'calls':>6} {'s':>7} {'events/s':>9} {'messages/s':>11}")
    for r in async_events():
        print(f"{r['setting']:<31} {r['edges']:>7} {r['events']:>7} {r['batches']:>6} {r['seconds']:>7.2f} "
              f"{r['events_per_s']:>9.0f} {r['messages_per_s']:>11.0f}")


if __name__ == "__main__":
    main()
