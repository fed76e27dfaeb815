"""Benchmark of one RESAM round (``p2pmtl bench --only resam``): where the time of a
distributed-SGD round with worker momentum goes, for 26 workers (5 Byzantine, ALIE) on the
digits CNN with offline MNIST, batch 25, one thread.

Phases, timed separately on the same round (best of ``repeats``): the workers' minibatch
gradients (one backward pass per worker, the CPU default, and the batched ``vmap`` path beside
it), the momentum update, the attack, and NNM + each aggregator of the family. Figures are
printed, never asserted; the question is whether the round is dominated by the gradients
(the bound: a round cannot cost less than its gradient computation).
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.world import run_seeds
from ..experiments.config import load_config
from ..resources import resolve_config
from ..robust.attacks import AttackContext, make_attack
from ..server.aggregation import build_aggregator
from ..server.dsgd import DSGDRun
from ..server.federated import Clients, Method
from ..server.run import server_world
from .common import best_time

AGGREGATORS = ("trimmed_mean", "coordinate_median", "krum", "geometric_median", "mda", "meamed")


def resam_round(workers: int = 26, byzantine: int = 5, repeats: int = 3) -> dict:
    """Seconds per phase of one round (dict of phase -> seconds) and the model size."""
    cfg = load_config(resolve_config("resam"), overrides=[f"graph.n={workers + 1}", f"server.f={byzantine}",
                                          "task.train_per_client=150", "task.test_per_client=20",
                                          f"scenarios.0.byzantine={byzantine}"])
    seeds = run_seeds(cfg.seed)
    _, setup, byz = server_world(cfg, cfg.scenarios[0], seeds)
    clients = Clients(cfg.task, setup.clients, setup.num_classes, setup.image_shape, seeds["setup"])
    method = Method.parse("dsgd-worker0.9+trimmed_mean")
    run = DSGDRun(method, cfg.server, clients, build_aggregator(method, cfg.server, clients.rep_sizes,
                                                                clients.all_sizes), byz, None, seeds["data"])
    chosen = np.arange(run.n)
    rows = torch.from_numpy(chosen)
    out = {"params": run.global_state.numel()}
    out["gradients (per-worker backward)"] = best_time(lambda: run.gradients(chosen), repeats)
    run.batched = True
    out["gradients (vmap, batched)"] = best_time(lambda: run.gradients(chosen), repeats)
    run.batched = False
    grads = run.gradients(chosen)
    out["momentum update"] = best_time(lambda: run.momentum.uploads(rows, grads), repeats)
    up = run.momentum.uploads(rows, grads)
    attack = make_attack("alie", scope="all")
    byz_rows = torch.as_tensor(sorted(int(b) for b in byz), dtype=torch.long)
    ctx = AttackContext(0, up, byz_rows, torch.zeros(len(up), dtype=torch.long), [torch.Generator()], None)
    out["attack (alie)"] = best_time(lambda: attack.forge(ctx), repeats)
    for name in AGGREGATORS:
        m = Method.parse(f"dsgd+{name}")
        agg = build_aggregator(m, cfg.server, clients.rep_sizes, clients.all_sizes)
        out[f"nnm + {name}"] = best_time(lambda: agg(up), repeats)
    return out


def main(repeats: int = 3) -> None:
    torch.set_num_threads(1)
    r = resam_round(repeats=repeats)
    grad = r["gradients (per-worker backward)"]
    print(f"\nRESAM round: 26 workers (5 Byzantine, ALIE), digits CNN ({r['params']:,} parameters), batch 25, "
          f"1 thread; best of {repeats}")
    print(f"{'phase':<36} {'ms':>9} {'/ gradients':>12}")
    for k, v in r.items():
        if k == "params":
            continue
        print(f"{k:<36} {1e3 * v:>9.1f} {v / grad:>11.2f}x")
    rest = r["momentum update"] + r["attack (alie)"]
    for name in AGGREGATORS:
        total = grad + rest + r[f"nnm + {name}"]
        print(f"  round with nnm + {name:<18}: gradients are {100 * grad / total:.0f}% of {1e3 * total:.0f} ms")
