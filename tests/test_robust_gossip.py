"""Robust gossip rules as lanes beside the loss rule: ClippedGossip equals a plain per-node
loop, and holds against far values where averaging does not."""
import math

import numpy as np
import torch

import p2pmtl
from p2pmtl.core.edges import EdgeIndex
from p2pmtl.rules.combine import CombineContext
from p2pmtl.rules.weights import RULES, RuleContext, normalise_scores


def _edges():
    src = np.array([0, 1, 2, 0, 1, 3, 1, 2, 3, 2], dtype=np.int64)
    dst = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3], dtype=np.int64)
    # self loops 0,1,2,3 are present (0->0, 1->1, 2->2, 3->3)
    return EdgeIndex.from_arrays(src, dst, 4)


def _loop(psi, edges, valid, tau, mixing):
    """ClippedGossip per receiver, straight from the formula (float64)."""
    out = psi.clone()
    n = edges.num_nodes
    nbrs = {k: [int(edges.src[e]) for e in range(edges.num_edges) if int(edges.dst[e]) == k] for k in range(n)}
    deg = {k: len(nbrs[k]) - 1 for k in range(n)}
    for k in range(n):
        ids = [e for e in range(edges.num_edges) if int(edges.dst[e]) == k]
        w = {}
        for e in ids:
            l = int(edges.src[e])
            if l == k:
                continue
            ok = valid is None or bool(valid[e])
            w[e] = (1.0 / (1 + max(deg[k], deg[l])) if mixing == "metropolis" else 1.0 / len(ids)) if ok else 0.0
        x = psi[k].clone()
        for e, we in w.items():
            z = psi[int(edges.src[e])] - psi[k]
            x = x + we * z * min(1.0, tau / float(z.norm()))
        out[k] = x
    return out


def test_clipped_gossip_equals_a_plain_loop():
    edges = _edges()
    psi = torch.tensor([[0.0, 0.0], [3.0, 4.0], [-1.0, 0.5], [10.0, -10.0]], dtype=torch.float64)
    for mixing in ("metropolis", "uniform"):
        for valid in (None, torch.tensor([True, True, False, True, True, True, True, True, True, True])):
            rule = RULES.get("clipped_gossip")(tau=1.0, mixing=mixing)
            ctx = RuleContext(0, 0, edges, None, valid, messages=lambda: psi[edges.src], own=lambda: psi)
            w = normalise_scores(edges, rule.scores(ctx), valid)
            got = rule.combine_step().combine(CombineContext(edges, psi[edges.src], valid, w, psi))
            assert torch.allclose(got, _loop(psi, edges, valid, 1.0, mixing)), (mixing, valid)


def test_worked_example_of_the_docstring():
    edges = EdgeIndex.from_arrays(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    psi = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    rule = RULES.get("clipped_gossip")(tau=1.0, mixing="uniform")
    ctx = RuleContext(0, 0, edges, None, None, messages=lambda: psi[edges.src], own=lambda: psi)
    w = normalise_scores(edges, rule.scores(ctx), None)
    got = rule.combine_step().combine(CombineContext(edges, psi[edges.src], None, w, psi))
    assert torch.allclose(got[0], torch.tensor([0.3, 0.4], dtype=torch.float64))


def test_clipped_gossip_holds_against_far_values_beside_loss_and_average():
    res = p2pmtl.run({"name": "cg", "iterations": 60, "graph": {"family": "ring", "n": 20},
                      "task": {"targets": [[10.0, 10.0]]},
                      "rules": {"names": ["average", "loss", "clipped_gossip"], "params": {"clipped_gossip": {"tau": 0.5}}},
                      "output": {"window": 20},
                      "scenarios": [{"name": "far", "byzantine": 2,
                                     "attack": {"name": "uniform", "low": 1e3, "high": 1e3}}]})
    msd = res.table("msd").loc["far"]
    assert msd["clipped_gossip"] < 0.01 * msd["average"], msd
    assert math.isfinite(msd["loss"])


def test_clipped_gossip_parameters_are_checked_when_the_config_loads():
    import pytest

    with pytest.raises(p2pmtl.ConfigError, match="rules.params.clipped_gossip: .*tau = -1"):
        p2pmtl.load_config({"graph": {"family": "ring", "n": 5}, "rules": {"names": ["clipped_gossip"],
                                                                            "params": {"clipped_gossip": {"tau": -1}}}})
