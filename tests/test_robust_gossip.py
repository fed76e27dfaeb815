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


# --------------------------------------------------------------------------- robust gossip rules
# (p2pmtl/rules/robust_gossip.py): each rule equals a plain per-node loop written from its formula
# (float64; Fractions for the weight comparisons), on hand cases and on a random small graph with
# missing messages and ties.

from fractions import Fraction

import networkx as nx
import pytest

from p2pmtl.robust.aggregators import make_aggregator

NEW_RULES = ("clipped_gossip", "cs_plus", "ios", "bridge_trimmed_mean", "bridge_median", "node_aggregator")


def _combine(name, edges, msgs, valid, own, **params):
    """The engine's path for one lane: scores -> normalise -> the rule's combine step."""
    rule = RULES.get(name)(**params)
    ctx = RuleContext(0, 0, edges, None, valid, messages=lambda: msgs, own=lambda: own)
    w = normalise_scores(edges, rule.scores(ctx), valid)
    return rule.combine_step().combine(CombineContext(edges, msgs, valid, w, own))


def _hood(edges, valid, msgs):
    """Per receiver: [(edge, sender)] of the present in-edges (valid, finite; own edge always)."""
    out = {k: [] for k in range(edges.num_nodes)}
    for e in range(edges.num_edges):
        k, l = int(edges.dst[e]), int(edges.src[e])
        ok = (valid is None or bool(valid[e])) and bool(torch.isfinite(msgs[e]).all())
        if ok or l == k:
            out[k].append((e, l))
    return out


def _mixing(edges, mixing):
    """Nominal W per edge, exact: Metropolis 1/(1+max(d_k,d_l)) or uniform 1/(1+d_k); self 1 - sum."""
    deg = {k: sum(1 for e in range(edges.num_edges) if int(edges.dst[e]) == k) - 1 for k in range(edges.num_nodes)}
    w = {}
    for e in range(edges.num_edges):
        k, l = int(edges.dst[e]), int(edges.src[e])
        if l != k:
            w[e] = Fraction(1, 1 + (max(deg[k], deg[l]) if mixing == "metropolis" else deg[k]))
    for e in range(edges.num_edges):
        k, l = int(edges.dst[e]), int(edges.src[e])
        if l == k:
            w[e] = 1 - sum(w[f] for f in w if int(edges.dst[f]) == k and int(edges.src[f]) != k)
    return w


def _clip_loop(edges, msgs, valid, own, b, mixing, kind):
    """Adaptive ClippedGossip ("he") or CS+ ("cs_plus") per receiver, from the formulas."""
    wn = _mixing(edges, mixing)
    hood = _hood(edges, valid, msgs)
    out = own.clone()
    for k, items in hood.items():
        nbrs = [(e, l) for e, l in items if l != k]
        w = {e: wn[e] for e, _ in nbrs}
        w_self = 1 - sum(w.values())  # missing shares stay home
        allw = {**w, **{e: w_self for e, l in items if l == k}}
        d = {e: float(torch.linalg.vector_norm(msgs[e] - own[k])) if l != k else 0.0 for e, l in items}
        delta = sum(sorted(w.values(), reverse=True)[:b], Fraction(0))
        beyond = {e: sum((allw[j] for j in d if d[j] > d[e]), Fraction(0)) for e in d}
        if kind == "he":
            if delta == 0:
                tau = math.inf
            else:
                tau = math.sqrt(sum(float(allw[e]) * d[e] ** 2 for e in d if beyond[e] >= delta) / float(delta))
        else:
            tau = max([d[e] for e in d if beyond[e] >= 2 * delta], default=0.0)
        x = own[k].clone()
        for e, l in nbrs:
            z = msgs[e] - own[k]
            x = x + float(w[e]) * z * (min(1.0, tau / d[e]) if d[e] > 0 else 1.0)
        out[k] = x
    return out


def _ios_loop(edges, msgs, valid, own, b, mixing):
    wn = _mixing(edges, mixing)
    out = own.clone()
    for k, items in _hood(edges, valid, msgs).items():
        keep = [(e, l) for e, l in items]
        mean = lambda: sum(float(wn[e]) * msgs[e] for e, _ in keep) / sum(float(wn[e]) for e, _ in keep)  # noqa: E731
        for _ in range(b):
            cand = [(e, l) for e, l in keep if l != k]
            if not cand:
                break
            m = mean()
            far = max(cand, key=lambda el: (float(torch.linalg.vector_norm(msgs[el[0]] - m)), -el[1]))
            keep.remove(far)
        out[k] = mean()
    return out


def _coordinate_loop(edges, msgs, valid, own, kind, b=0):
    out = own.clone()
    for k, items in _hood(edges, valid, msgs).items():
        vals = [msgs[e] for e, _ in items]
        n = len(vals)
        if kind == "trim" and n <= 2 * b:
            continue
        for j in range(own.shape[1]):
            col = sorted(float(v[j]) for v in vals)
            if kind == "trim":
                out[k, j] = sum(col[b:n - b]) / (n - 2 * b)
            else:
                out[k, j] = col[n // 2] if n % 2 else 0.5 * col[n // 2 - 1] + 0.5 * col[n // 2]
    return out


def _aggregator_loop(edges, msgs, valid, own, name, **params):
    agg = make_aggregator(name, **params)
    out = own.clone()
    for k, items in _hood(edges, valid, msgs).items():
        try:
            out[k] = agg(torch.stack([msgs[e] for e, _ in items]))
        except ValueError:
            pass
    return out


def _star():
    """Receiver 0 hears 1, 2, 3, 4 (the docstrings' worked examples); the others hear no one."""
    return EdgeIndex.from_arrays(np.array([1, 2, 3, 4]), np.array([0, 0, 0, 0]), 5)


def _star_ctx(values, weights=0.2):
    edges = _star()
    own = torch.tensor(values, dtype=torch.float64)
    msgs = own[edges.src]
    w = torch.where(edges.dst == 0, torch.tensor(weights, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    return edges, msgs, own, w


@pytest.mark.parametrize("step, params, expected", [
    ("clipped_adaptive", {"b": 1}, (6 + math.sqrt(14)) / 5),
    ("cs_plus", {"b": 1}, 1.4),
    ("cs_plus", {"b": 0}, 3.2),
    ("ios", {"b": 1}, 1.5),
    ("ios", {"b": 2}, 1.0),
    ("ios", {"b": 9}, 0.0),  # fewer than b neighbours: all dropped, own model kept
    ("bridge_trimmed_mean", {"b": 1}, 2.0),
    ("bridge_trimmed_mean", {"b": 3}, 0.0),  # 5 values <= 2b: own model kept
    ("bridge_median", {}, 2.0),
    ("node_aggregator", {"aggregator": "trimmed_mean", "aggregator_params": {"f": 1}}, 2.0),
])
def test_worked_examples_of_the_docstrings(step, params, expected):
    from p2pmtl.rules.combine import make_combine

    import warnings

    edges, msgs, own, w = _star_ctx([[0.0], [1.0], [2.0], [3.0], [10.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # trimmed_mean refuses the lone receivers
        got = make_combine(step, **params).combine(CombineContext(edges, msgs, None, w, own))
    assert got[0, 0].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert torch.equal(got[1:], own[1:])  # receivers without neighbours keep their model


def test_worked_examples_in_two_dimensions():
    from p2pmtl.rules.combine import make_combine

    edges, msgs, own, w = _star_ctx([[0.0, 5.0], [1.0, 1.0], [2.0, -10.0], [3.0, 2.0], [10.0, 3.0]])
    for step, params in (("bridge_trimmed_mean", {"b": 1}), ("bridge_median", {})):
        got = make_combine(step, **params).combine(CombineContext(edges, msgs, None, w, own))
        assert got[0].tolist() == [2.0, 2.0]
    lost = torch.ones(edges.num_edges, dtype=torch.bool)
    lost[(edges.src == 4) & (edges.dst == 0)] = False  # the (10, 3) message is missing
    got = make_combine("bridge_median").combine(CombineContext(edges, msgs, lost, w, own))
    assert got[0].tolist() == [1.5, 1.5]


def _random_case(seed, n=12, d=3, p=0.45):
    """A random graph, integer messages (exact distances: ties between different vectors),
    duplicated messages (ties in every distance), some missing edges, one non-finite message
    (valid=None path) and garbage on missing edges (must never enter)."""
    g = nx.gnp_random_graph(n, p, seed=seed)
    g.add_edge(0, n - 1)
    edges = EdgeIndex.from_graph(g)
    gen = torch.Generator().manual_seed(seed)
    own = torch.randint(-3, 4, (n, d), generator=gen).to(torch.float64)
    own[5] = own[3]
    own[7] = own[3]
    own[n - 1, 0] = 40.0  # a far sender
    msgs = own[edges.src].clone()
    other = edges.src != edges.dst
    valid = (torch.rand(edges.num_edges, generator=gen) > 0.2) | ~other
    msgs[~valid] = 1e9  # a rule that used them would be far off
    return edges, msgs, valid, own


CASES = [(rule, params) for rule, params in [
    ("clipped_gossip", {"tau": "adaptive", "b": 1, "mixing": "metropolis"}),
    ("clipped_gossip", {"tau": "adaptive", "b": 2, "mixing": "uniform"}),
    ("clipped_gossip", {"tau": "adaptive", "b": 0, "mixing": "uniform"}),
    ("cs_plus", {"b": 1, "mixing": "metropolis"}),
    ("cs_plus", {"b": 2, "mixing": "uniform"}),
    ("cs_plus", {"b": 0}),
    ("ios", {"b": 1, "mixing": "metropolis"}),
    ("ios", {"b": 3, "mixing": "uniform"}),
    ("ios", {"b": 0}),
    ("bridge_trimmed_mean", {"b": 1}),
    ("bridge_trimmed_mean", {"b": 2}),
    ("bridge_median", {}),
    ("node_aggregator", {"aggregator": "krum", "f": 1}),
    ("node_aggregator", {"aggregator": "geometric_median", "aggregator_params": {"nu": 1e-6}}),
]]


def _reference(rule, params, edges, msgs, valid, own):
    p = dict(params)
    if rule == "clipped_gossip":
        return _clip_loop(edges, msgs, valid, own, p["b"], p.get("mixing", "metropolis"), "he")
    if rule == "cs_plus":
        return _clip_loop(edges, msgs, valid, own, p["b"], p.get("mixing", "metropolis"), "cs_plus")
    if rule == "ios":
        return _ios_loop(edges, msgs, valid, own, p["b"], p.get("mixing", "metropolis"))
    if rule == "bridge_trimmed_mean":
        return _coordinate_loop(edges, msgs, valid, own, "trim", p["b"])
    if rule == "bridge_median":
        return _coordinate_loop(edges, msgs, valid, own, "median")
    name = p.pop("aggregator")
    return _aggregator_loop(edges, msgs, valid, own, name, **p.pop("aggregator_params", {}), **p)


@pytest.mark.parametrize("rule, params", CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)])
def test_each_rule_equals_a_plain_loop_on_a_random_graph(rule, params):
    import warnings

    for seed in (0, 1, 2):
        edges, msgs, valid, own = _random_case(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # krum refuses small neighbourhoods
            got = _combine(rule, edges, msgs, valid, own, **params)
            want = _reference(rule, params, edges, msgs, valid, own)
        assert torch.isfinite(got).all()
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), (rule, params, seed, (got - want).abs().max())


@pytest.mark.parametrize("rule, params", CASES[::3], ids=[r for r, _ in CASES[::3]])
def test_a_non_finite_message_is_absent_even_when_valid_is_not_given(rule, params):
    import warnings

    edges, msgs, _, own = _random_case(3)
    msgs = own[edges.src].clone()
    hit = int(torch.nonzero((edges.src != edges.dst)).flatten()[4])
    msgs[hit, 1] = float("inf")
    missing = torch.ones(edges.num_edges, dtype=torch.bool)
    missing[hit] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = _combine(rule, edges, msgs, None, own, **params)
        want = _reference(rule, params, edges, torch.where(missing.unsqueeze(1), msgs, 0.0), missing, own)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_fixed_tau_clipped_gossip_is_the_clipped_combine_step_bit_for_bit():
    from p2pmtl.rules.combine import SelfCentredClipping

    edges, msgs, valid, own = _random_case(4)
    msgs = torch.where(valid.unsqueeze(1), msgs, 0.0)
    rule = RULES.get("clipped_gossip")(tau=0.7, mixing="metropolis")
    assert type(rule.combine_step()) is SelfCentredClipping and rule.combine_step().tau == 0.7
    ctx = RuleContext(0, 0, edges, None, valid, messages=lambda: msgs, own=lambda: own)
    w = normalise_scores(edges, rule.scores(ctx), valid)
    # the former formula of ClippedGossip.scores, verbatim
    is_self = edges.src == edges.dst
    deg = (edges.in_degree() - 1).to(torch.float64)
    w0 = torch.where(is_self, 0.0, 1.0 / (1.0 + torch.maximum(deg[edges.dst], deg[edges.src])))
    w0 = torch.where(valid, w0, 0.0)
    w0 = torch.where(is_self, (1.0 - edges.segment_sum(w0))[edges.dst], w0)
    assert torch.equal(rule.scores(ctx), w0)
    assert torch.equal(rule.combine_step().combine(CombineContext(edges, msgs, valid, w, own)),
                       SelfCentredClipping(tau=0.7).combine(CombineContext(edges, msgs, valid, w, own)))
    from p2pmtl.rules.robust_gossip import ClippedGossip

    assert ClippedGossip is RULES.get("clipped_gossip")


@pytest.mark.parametrize("rule, params, match", [
    ("clipped_gossip", {"tau": "auto"}, r"clipped_gossip: tau = 'auto'; allowed: a real > 0 .* or 'adaptive'"),
    ("clipped_gossip", {"tau": 1.0, "b": 1}, r"clipped_gossip: b = 1; allowed only with tau = 'adaptive'"),
    ("clipped_gossip", {"tau": "adaptive", "b": -1}, r"clipped_gossip: b = -1; allowed: an integer >= 0"),
    ("cs_plus", {"b": 1.5}, r"cs_plus: b = 1.5; allowed: an integer >= 0"),
    ("cs_plus", {"mixing": "max"}, r"cs_plus: mixing = 'max'; allowed: 'metropolis', 'uniform'"),
    ("ios", {"b": True}, r"ios: b = True; allowed: an integer >= 0"),
    ("ios", {"mixing": "lazy"}, r"ios: mixing = 'lazy'; allowed: 'metropolis', 'uniform'"),
    ("bridge_trimmed_mean", {"b": -2}, r"bridge_trimmed_mean: b = -2; allowed: an integer >= 0"),
    ("node_aggregator", {}, r"node_aggregator: aggregator = None; allowed: .*krum"),
    ("node_aggregator", {"aggregator": "kroom"}, r"node_aggregator: aggregator = 'kroom'; allowed: .*geometric_median"),
    ("node_aggregator", {"aggregator": "krum"}, r"node_aggregator: 'krum' needs parameter\(s\) f"),
    ("node_aggregator", {"aggregator": "krum", "f": 1, "g": 2}, r"node_aggregator: unknown parameter\(s\) g .*accepted"),
])
def test_parameters_are_checked_when_the_config_loads(rule, params, match):
    with pytest.raises(p2pmtl.ConfigError, match=f"rules.params.{rule}: {match}"):
        p2pmtl.load_config({"graph": {"family": "ring", "n": 5},
                            "rules": {"names": [rule], "params": {rule: params}}})


@pytest.mark.parametrize("rule, params, accepted", [
    ("bridge_median", {"b": 1}, r"b; accepted: \(none\)"),
    ("ios", {"bb": 1}, "bb; accepted: b, mixing"),
    ("clipped_gossip", {"taus": 1}, "taus; accepted: tau, mixing, b"),
])
def test_an_unknown_parameter_is_refused_with_the_accepted_ones(rule, params, accepted):
    with pytest.raises(p2pmtl.ConfigError, match=f"rules.params.{rule}: rule '{rule}': unknown parameter\\(s\\) {accepted}"):
        p2pmtl.load_config({"graph": {"family": "ring", "n": 5}, "rules": {"names": [rule], "params": {rule: params}}})


def _byzantine_run(attack, iterations=30):
    return p2pmtl.run({"name": "rg", "iterations": iterations,
                       "graph": {"family": "watts_strogatz", "n": 16, "k": 6, "p": 0.0},
                       "task": {"targets": [[10.0, 10.0]]},
                       "rules": {"names": ["average", "loss", *NEW_RULES],
                                 "params": {"clipped_gossip": {"tau": "adaptive", "b": 1},
                                            "node_aggregator": {"aggregator": "krum", "f": 1}}},
                       "output": {"window": 10},
                       "scenarios": [{"name": "attacked", "byzantine": 2, "attack": attack}]})


def test_robust_rules_run_as_lanes_beside_loss_on_target_localization():
    res = _byzantine_run({"name": "uniform", "low": 1e3, "high": 1e3})
    assert res.status == "finished"
    msd = res.table("msd").loc["attacked"]
    assert all(math.isfinite(msd[r]) for r in ("loss", *NEW_RULES)), msd
    for r in NEW_RULES:  # far values barely move them; averaging is dragged off by ~1e5
        assert msd[r] < 1e-4 * msd["average"] and msd[r] < 5.0, msd


def test_dissensus_attack_runs_against_each_robust_rule():
    res = _byzantine_run({"name": "dissensus", "eps": 1.5}, iterations=20)
    msd = res.table("msd").loc["attacked"]
    assert all(math.isfinite(msd[r]) and msd[r] < 0.1 * msd["average"] for r in ("loss", *NEW_RULES)), msd


@pytest.mark.parametrize("network", [{"latency": 0.05, "loss": 0.2},
                                     {"protocol": "async", "latency": 0.05, "loss": 0.1,
                                      "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3}}])
def test_robust_gossip_rules_run_on_the_network_model(network):
    """The robust gossip rules run as lanes beside the loss rule on a lossy synchronous network
    and under asynchronous gossip (stale and missing messages): finite, converging, and the
    robust lanes hold against far values where averaging does not."""
    rules = ["average", "loss", "clipped_gossip", "ios", "bridge_median", "cs_plus"]
    res = p2pmtl.run({"name": "rgn", "iterations": 80, "graph": {"family": "complete", "n": 12},
                      "task": {"targets": [[10.0, 10.0]]},
                      "rules": {"names": rules, "params": {"clipped_gossip": {"tau": "adaptive", "b": 2},
                                                           "ios": {"b": 2}, "cs_plus": {"b": 2}}},
                      "network": network, "output": {"window": 20},
                      "scenarios": [{"name": "far", "byzantine": 2,
                                     "attack": {"name": "uniform", "low": 1e3, "high": 1e3}}]})
    msd = res.table("msd").loc["far"]
    for rule in rules[2:]:
        assert msd[rule] < 1.0 and msd[rule] < 1e-3 * msd["average"], (rule, msd)
