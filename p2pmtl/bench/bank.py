"""The digits round per model layout and device: per-agent modules (CPU) against the batched
``torch.func`` bank (CPU or GPU), from 10 to thousands of CNN agents.

One round is what the gossip engine asks of the population each iteration under the loss rule:
every agent's mini-batch (64 images) and local Adam step, the loss of every edge's message on
the receiver's 64-image scoring batch, and the combination. Images are random (the cost does
not depend on their content), so any number of agents can be timed without a dataset; the
graph is random 10-regular with self loops (11 scored messages per agent).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Optional

import networkx as nx
import numpy as np
import torch

from ..core.device import resolve_device
from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..experiments.config import load_config


def bank_population(agents: int, bank: str, device: str, degree: int = 10, seed: int = 0):
    """A digits population of ``agents`` CNN agents on random images (64 train, 32 test each)."""
    from ..tasks.digits import ImageClassification

    gen = torch.Generator().manual_seed(seed)
    train = torch.rand((agents, 64, 1, 28, 28), generator=gen)
    test = torch.rand((agents, 32, 1, 28, 28), generator=gen)
    ytr, yte = torch.randint(0, 10, (agents, 64), generator=gen), torch.randint(0, 10, (agents, 32), generator=gen)
    setup = SimpleNamespace(group=np.zeros(agents, dtype=np.int64), image_shape=(1, 28, 28), num_classes=10,
                            train=list(zip(train, ytr)), test=list(zip(test, yte)))
    graph = nx.random_regular_graph(min(degree, agents - 1), agents, seed=seed)
    cfg = load_config(data={"graph": {"family": "complete", "n": 4}, "device": device,
                            "task": {"name": "digits", "batch_size": 64, "score_batch": 64, "score_chunk": 64,
                                     "bank": bank}})
    edges = EdgeIndex.from_graph(graph)
    pop = ImageClassification(cfg.task, [setup], [seed], [seed + 1], edges, torch.tensor([], dtype=torch.long),
                              dtype=torch.float32, lanes=1, device=device)
    return pop, edges


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bank_round(agents: int, bank: str, device: str = "cpu", repeats: int = 2) -> dict:
    """Seconds of the fastest of ``repeats`` rounds (after one warm-up round), split into the
    local step, the scoring of every edge and the combination, and of one evaluation of every
    agent on its 32 test images."""
    dev = resolve_device(device)
    pop, edges = bank_population(agents, bank, device)
    weights = torch.full((edges.num_edges,), 1.0) / torch.bincount(edges.dst, minlength=agents)[edges.dst]
    best = {"adapt_s": float("inf"), "score_s": float("inf"), "combine_s": float("inf"),
            "metrics_s": float("inf"), "round_s": float("inf")}
    for it in range(repeats + 1):
        t0 = time.perf_counter()
        pop.sample(it)
        psi = pop.adapt()
        _sync(dev)
        t1 = time.perf_counter()
        msgs = Messages(psi, edges, 1, torch.tensor([], dtype=torch.long))
        pop.edge_losses(msgs, 0)
        _sync(dev)
        t2 = time.perf_counter()
        pop.combine(msgs, weights.to(psi.dtype))
        _sync(dev)
        t3 = time.perf_counter()
        pop.metrics()
        _sync(dev)
        t4 = time.perf_counter()
        if it:  # the first round warms up (allocator, kernels, vmap tracing)
            for k, v in (("adapt_s", t1 - t0), ("score_s", t2 - t1), ("combine_s", t3 - t2),
                         ("metrics_s", t4 - t3), ("round_s", t3 - t0)):
                best[k] = min(best[k], v)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return {"agents": agents, "edges": edges.num_edges, "bank": bank, "device": str(dev), "device_name": name,
            "threads": torch.get_num_threads(), "params": pop.bank.num_params, **best}


def main(sizes: list[int], device: str = "cpu", repeats: int = 2, layouts: Optional[list[str]] = None) -> list[dict]:
    """Prints one line per (agents, bank): per-agent modules only on the CPU."""
    dev = resolve_device(device)
    banks = ["modules", "batched"] if dev.type == "cpu" else ["batched"]
    banks = [b for b in banks if not layouts or b in layouts]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\nbank: one digits round (local Adam step on 64 images, loss of every edge on the receiver's 64 "
          f"images, combination), random 10-regular graph with self loops, on {name}")
    print(f"{'agents':>7} {'edges':>7} {'bank':<8} {'round s':>8} {'step s':>7} {'score s':>8} {'combine s':>9} "
          f"{'eval s':>7} {'agents/s':>9}")
    rows = []
    for n in sizes:
        for bank in banks:
            r = bank_round(n, bank, device, repeats)
            rows.append(r)
            print(f"{n:>7} {r['edges']:>7} {bank:<8} {r['round_s']:>8.3f} {r['adapt_s']:>7.3f} {r['score_s']:>8.3f} "
                  f"{r['combine_s']:>9.3f} {r['metrics_s']:>7.3f} {n / r['round_s']:>9.1f}")
    by = {(r["agents"], r["bank"]): r for r in rows}
    for n in sizes:
        if (n, "modules") in by and (n, "batched") in by:
            print(f"  {n} agents: batched / modules round time = "
                  f"{by[n, 'batched']['round_s'] / by[n, 'modules']['round_s']:.2f}")
    return rows
