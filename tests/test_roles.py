"""Servers as a node role in the gossip engine ([roles]): the two-phase round equals a plain
per-node float64 loop, robust servers hold against a far Byzantine client, config errors
name the key, and without [roles] nothing changes."""
import warnings

import pytest
import torch

import p2pmtl
from p2pmtl.experiments.config import ConfigError, dump_config, load_config
from p2pmtl.experiments.runner import build_world, make_engine


def _engine(d):
    cfg = load_config(data=d)
    scenario = cfg.scenarios[0]
    world = build_world(cfg, scenario)
    return cfg, make_engine(cfg, world, scenario, cfg.rules.names), world


def _cfg(graph, roles, rules=("average",), byzantine=0, attack=None, iterations=5, targets=((1.0, 1.0),)):
    sc = {"name": "s", "byzantine": byzantine}
    if attack is not None:
        sc["attack"] = attack
    return {"name": "roles", "iterations": iterations, "graph": graph, "roles": roles,
            "task": {"targets": [list(t) for t in targets], "mu": 0.2},
            "rules": {"names": list(rules)}, "output": {"window": 1}, "scenarios": [sc]}


def _adapt(theta, q, mu):
    """pseudo_observation local step of one node: theta + mu (q - theta)."""
    return theta + mu * (q - theta)


def _mean(rows):
    out = torch.zeros_like(rows[0])
    for r in rows:
        out = out + r
    return out / len(rows)


def _hand_loop(engine, rounds, parent, children, peers, neighbours, servers):
    """The semantics of docs/concepts.md, one node at a time: learners adapt, servers aggregate
    (mean) their children's messages from the deepest level up, average with same-level peer
    servers, then clients and child servers take the mean of their parents' models; learners
    without a server combine with the average rule. A second population draws the same data."""
    pop = engine.pop
    d = pop.theta.shape[1]
    theta = {k: pop.theta[k].clone() for k in range(pop.world_nodes)}
    levels = {}
    for s in servers:
        lv, p = 0, s
        while parent.get(p) is not None and p in servers and parent[p] in servers:
            lv, p = lv + 1, parent[p]
        levels[s] = lv
    out = []
    for i in range(rounds):
        pop.sample(i)
        psi = {k: (theta[k].clone() if k in servers else _adapt(theta[k], pop.q[k], pop.mu)) for k in theta}
        new = {}
        for k in theta:  # the rule's combine (average over self and in-neighbours)
            new[k] = _mean([psi[k]] + [psi[l] for l in neighbours[k]])
        up = {}
        for lv in sorted(set(levels.values()), reverse=True):
            agg = {}
            for s in [s for s in servers if levels[s] == lv]:
                msgs = [psi[c] if c not in servers else up[c] for c in children[s]]
                agg[s] = _mean(msgs)
            for s in agg:
                up[s] = _mean([agg[s]] + [agg[p] for p in peers.get(s, [])])
        final = dict(up)
        for lv in sorted(set(levels.values()))[1:]:
            for s in [s for s in servers if levels[s] == lv]:
                final[s] = final[parent[s]]
        for k in theta:
            if k in servers:
                new[k] = final[k]
            else:
                ps = [l for l in neighbours[k] if l in servers]
                if ps:
                    new[k] = _mean([final[p] for p in ps])
        theta = new
        out.append(torch.stack([theta[k] for k in range(pop.world_nodes)])[:, :d])
    return out


def _engine_rounds(engine, rounds):
    out = []
    for i in range(rounds):
        engine.step(i)
        out.append(engine.pop.theta[: engine.pop.world_nodes].clone())
    return out


def _check(d, parent, children, peers, neighbours, servers, rounds=4):
    _, eng_a, _ = _engine(d)
    _, eng_b, _ = _engine(d)
    got = _engine_rounds(eng_a, rounds)
    want = _hand_loop(eng_b, rounds, parent, children, peers, neighbours, servers)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float64
        assert torch.allclose(g, w, rtol=1e-12, atol=1e-12), (i, g, w)


def test_star_with_a_mean_server_equals_a_plain_loop():
    n = 6
    neighbours = {0: list(range(1, n)), **{k: [0] for k in range(1, n)}}
    d = _cfg({"family": "star", "n": n}, {"servers": [0], "aggregator": "mean"})
    _check(d, parent={k: 0 for k in range(1, n)}, children={0: list(range(1, n))}, peers={},
           neighbours=neighbours, servers={0})


def test_two_level_hierarchy_and_a_learner_outside_equal_a_plain_loop(tmp_path):
    # cloud 0 -> edge servers 1, 2 -> clients 3, 4, 5 (of 1) and 6 (of 2); learner 7 talks to 6 only
    edges = [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (6, 7)]
    path = tmp_path / "h.edgelist"
    path.write_text("\n".join(f"{a} {b}" for a, b in edges) + "\n")
    neighbours = {k: sorted({b for a, b in edges if a == k} | {a for a, b in edges if b == k}) for k in range(8)}
    d = _cfg({"family": "file", "path": str(path)}, {"servers": [0, 1, 2], "aggregator": "mean"})
    _check(d, parent={1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 2}, children={0: [1, 2], 1: [3, 4, 5], 2: [6]},
           peers={}, neighbours=neighbours, servers={0, 1, 2})


def test_peer_servers_average_after_aggregating():
    # hierarchy without a cloud: edge servers 0, 1 linked (both roots), clients 2, 3 | 4, 5, 6
    d = _cfg({"family": "hierarchy", "clusters": 2, "clients": 2, "cloud": False},
             {"servers": [0, 1], "roots": [0, 1], "aggregator": "mean"})
    neighbours = {0: [1, 2, 3], 1: [0, 4, 5], 2: [0], 3: [0], 4: [1], 5: [1]}
    _check(d, parent={2: 0, 3: 0, 4: 1, 5: 1}, children={0: [2, 3], 1: [4, 5]}, peers={0: [1], 1: [0]},
           neighbours=neighbours, servers={0, 1})


def test_default_levels_and_byzantine_only_among_learners():
    cfg, eng, world = _engine(_cfg({"topology": "hierarchical"}, {"servers": [0, 1, 2, 3, 4]}, byzantine=6,
                                   attack={"name": "uniform", "low": 5.0, "high": 6.0}))
    assert eng.roles.by_level == [[0], [1, 2, 3, 4]]
    assert len(world.byzantine) == 6 and int(world.byzantine.min()) >= 5
    assert not eng.is_server[world.byzantine].any()


def _final_clients(aggregator, byzantine, attack, params=None):
    d = _cfg({"family": "hierarchy", "clusters": 3, "clients": 5},
             {"servers": [0, 1, 2, 3], "aggregator": aggregator, "aggregator_params": params or {}},
             byzantine=byzantine, attack=attack, iterations=30)
    _, eng, world = _engine(d)
    for i in range(30):
        eng.step(i)
    honest = [k for k in range(4, world.n) if k not in set(world.byzantine.tolist())]
    return eng.pop.theta[honest], world.byzantine


@pytest.mark.parametrize("attack", [{"name": "uniform", "low": 1e3, "high": 1e3}, {"name": "inf"}])
def test_robust_servers_hold_against_a_far_byzantine_client(attack):
    far = [5]  # a client of edge server 1
    clean, _ = _final_clients("geometric_median", 0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no server refuses: the non-finite row is simply left out
        robust, byz = _final_clients("geometric_median", far, attack)
    assert byz.tolist() == far
    honest_clean = clean[[k for k in range(clean.shape[0]) if k != far[0] - 4]]
    assert torch.isfinite(robust).all()
    assert float((robust - honest_clean).norm(dim=1).max()) < 0.3
    plain, _ = _final_clients("mean", far, attack)
    if attack["name"] == "uniform":
        assert float((plain - honest_clean).norm(dim=1).min()) > 10.0  # thrown far
    else:
        assert torch.isfinite(plain).all()  # mean drops the non-finite row too


@pytest.mark.parametrize("roles, key", [
    ({"servers": [0, 99]}, "roles.servers"),
    ({"servers": list(range(37))}, "leave at least one learner"),
    ({"servers": [0], "aggregator": "nope"}, "roles.aggregator = 'nope'"),
    ({"servers": [0], "aggregator": "krum", "aggregator_params": {"g": 1}}, "roles.aggregator_params"),
    ({"servers": [0, 1], "roots": [2]}, "roles.roots"),
])
def test_config_errors_name_the_key(roles, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("(", r"\(")):
        load_config(data=_cfg({"topology": "hierarchical"}, roles))


def test_servers_are_not_byzantine_and_only_in_gossip_mode():
    with pytest.raises(ConfigError, match=r"scenarios.s.byzantine .*servers"):
        load_config(data=_cfg({"topology": "hierarchical"}, {"servers": [0, 1]}, byzantine=[1, 7]))
    with pytest.raises(ConfigError, match="roles: works in mode = 'gossip' only"):
        load_config(data={**_cfg({"family": "star", "n": 5}, {"servers": [0]}), "mode": "server",
                          "server": {"methods": ["fedavg"], "alpha": 1.0}})


def test_without_roles_nothing_changes(tiny_dict):
    tiny_dict["iterations"] = 10
    base = load_config(data=tiny_dict)
    assert base.roles is None and "roles" not in dump_config(base)
    results = [p2pmtl.run(d).table("msd") for d in (tiny_dict, {**tiny_dict, "roles": None},
                                                      {**tiny_dict, "roles": {"servers": []}})]
    for r in results[1:]:
        assert r.equals(results[0])


def test_a_run_records_learners_only():
    res = p2pmtl.run(_cfg({"topology": "hierarchical"}, {"servers": [0, 1, 2, 3, 4],
                                                          "aggregator": "geometric_median"}, iterations=5))
    m = res.metrics
    assert set(m["agent"].unique()) == set(range(5, 37))


# ----------------------------------------------------------------- one server on a star == server mode


class _StarView(p2pmtl.Population if hasattr(p2pmtl, "Population") else object):
    """The population of a server-mode run (``LinearServer.pop``: n clients, one lane) seen as
    a star of n + 1 nodes whose node 0 is the server: clients 1..n are the server's clients
    0..n-1 and draw exactly its data; node 0 holds a model and no data."""

    def __init__(self, inner):
        self.inner = inner
        n = inner.world_nodes
        self.lanes, self.world_nodes, self.runs, self.dtype = 1, n + 1, 1, inner.dtype
        self.groups = __import__("numpy").r_[-1, inner.groups]
        self.group_names, self.metric_names = inner.group_names, inner.metric_names
        self.theta = torch.cat([inner.theta[:1], inner.theta])

    def sample(self, step, active=None):
        self.inner.sample(step)

    def adapt(self, active=None):
        self.inner.theta = self.theta[1:].clone()
        psi = self.inner.adapt()
        out = self.theta.clone()
        if active is None:
            out[1:] = psi
        else:
            out[1:] = torch.where(active[1:].unsqueeze(1), psi, self.theta[1:])
        return out

    def edge_losses(self, msgs, lane):
        raise AssertionError("not used by the averaging rule")

    def edge_sq_dists(self, msgs, lane):
        raise AssertionError("not used by the averaging rule")

    def combine(self, msgs, weights):
        self.theta = msgs.edges.segment_sum(weights.unsqueeze(1) * msgs.per_edge())

    def metrics(self):
        return {}

    @property
    def message_bytes(self):
        return self.inner.message_bytes


@pytest.mark.parametrize("method,aggregator,params,byzantine", [
    ("fedavg", "mean", {}, 0),
    ("fedavg+geometric_median", "geometric_median", {}, 2),
    ("fedavg+krum", "krum", {"f": 2}, 2),
    ("fedavg+trimmed_mean", "trimmed_mean", {"f": 2}, 2),
])
def test_one_server_star_equals_server_mode(method, aggregator, params, byzantine):
    """A star whose hub is a [roles] server, run by the gossip engine, takes the same steps as
    mode = "server" (FedAvg with one local step, every client every round): on the same data,
    the same Byzantine uploads (U[15, 16] from the same seed) and the same aggregator, the
    server's model and every client's model agree with the server-mode harness at every round
    (float64; the rows reach the aggregator in the same order)."""
    from p2pmtl.core.edges import EdgeIndex
    from p2pmtl.engine.gossip import GossipEngine
    from p2pmtl.engine.roles import RolesConfig, ServerRoles
    from p2pmtl.engine.world import run_seeds
    from p2pmtl.robust.attacks import make_attack
    from p2pmtl.rules.weights import Average
    from p2pmtl.server.linear import LinearServer
    import networkx as nx

    n = 9
    sc = {"name": "s", "byzantine": byzantine}
    if byzantine:
        sc["attack"] = {"name": "uniform", "low": 15.0, "high": 16.0}
    d = {"name": "star_eq", "mode": "server", "iterations": 30, "graph": {"family": "star", "n": n + 1},
         "task": {"targets": [[1.0, 1.0]], "mu": 0.2},
         "server": {"alpha": 1.0, "f": 2, "methods": [method]}, "output": {"window": 1}, "scenarios": [sc]}
    cfg = load_config(data=d)
    seeds = run_seeds(cfg.seed)
    reference = LinearServer(cfg, cfg.scenarios[0], [method], seeds)  # today's server mode
    source = LinearServer(cfg, cfg.scenarios[0], [method], seeds)  # the same data, for the star
    pop = _StarView(source.pop)
    star = nx.star_graph(n)
    edges = EdgeIndex.from_graph(star)
    byz = torch.as_tensor(reference.byzantine + 1, dtype=torch.long)  # client i is star node i + 1
    roles = ServerRoles(RolesConfig(servers=[0], aggregator=aggregator, aggregator_params=params), edges, n + 1,
                        byz)
    attacks = [make_attack("uniform", low=15.0, high=16.0)] if byzantine else None
    engine = GossipEngine(pop, edges, [Average()], byz, attacks, [seeds["attack"]], roles=roles)
    assert roles.child_edges[0].numel() == n
    for t in range(cfg.iterations):
        reference.round(t)
        engine.step(t)
        torch.testing.assert_close(pop.theta[0], reference.pop.theta[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pop.theta[1:], reference.pop.theta, rtol=1e-12, atol=1e-12)
    if byzantine:  # the robust server held against the far uploads (a mean would sit near 4.4)
        assert float((reference.pop.theta[0] - torch.tensor([1.0, 1.0], dtype=torch.float64)).norm()) < 1.0


# ----------------------------------------------------------------- servers on the network model


def _curve(res, metric="msd"):
    c = res.curves
    return c[(c.group == "all") & (c.metric == metric)].reset_index(drop=True)


def test_roles_on_a_perfect_network_give_the_same_models_and_charge_every_hop():
    """[network] with no realism (constant latency, no loss) changes nothing but the clock:
    the same msd as the plain clock, and both charge compute + latency per hop of the round
    (learners -> edge servers -> cloud -> edge servers -> clients: 4 hops)."""
    d = _cfg({"topology": "hierarchical"}, {"servers": [0, 1, 2, 3, 4], "aggregator": "geometric_median"},
             byzantine=2, attack={"name": "uniform", "low": 15.0, "high": 16.0}, iterations=12)
    d["clock"] = {"compute_time": 1.0, "latency": 0.25}
    plain = _curve(p2pmtl.run(d))
    net = _curve(p2pmtl.run({**d, "network": {"latency": 0.25}}))
    assert list(plain["mean"]) == list(net["mean"])
    assert list(plain["time"]) == pytest.approx([2.0 * (i + 1) for i in range(12)])
    assert list(net["time"]) == pytest.approx(list(plain["time"]))
    # bytes: one model per directed edge of the tree (2 x 36), one more per server out-edge
    # (cloud -> 4 edge servers, each edge server -> cloud and -> 8 clients: 40)
    assert list(plain["bytes"]) == pytest.approx([(72 + 40) * 16 * (i + 1) for i in range(12)])


def test_a_lost_down_message_leaves_the_client_with_its_own_combination():
    """roles.hop_ok (set each round by the network protocol): a client whose server's message
    did not arrive keeps what its rule combined; the other clients take the server's model."""
    n = 5
    d = _cfg({"family": "star", "n": n}, {"servers": [0], "aggregator": "mean"}, iterations=1)
    cfg, engine, world = _engine(d)
    roles = engine.roles
    ok = torch.ones(world.edges.num_edges, dtype=torch.bool)
    lost = int(roles.down_eids[0])  # server 0 -> its first client
    ok[lost] = False
    roles.hop_ok = ok
    client = int(world.edges.dst[lost])
    engine.step(0)
    theta = engine.pop.theta
    others = [k for k in range(1, n) if k != client]
    for k in others:
        assert torch.equal(theta[k], theta[0])
    assert not torch.allclose(theta[client], theta[0])
    # what it kept is the averaging rule's combination of its own and the server's messages
    psi = engine.sent
    assert torch.allclose(theta[client], 0.5 * (psi[client] + psi[0]))


def test_lossy_network_with_servers_runs_and_counts_the_server_hops():
    d = _cfg({"topology": "hierarchical"}, {"servers": [0, 1, 2, 3, 4], "aggregator": "geometric_median"},
             iterations=20)
    res = p2pmtl.run({**d, "network": {"latency": 0.1, "loss": 0.3}})
    c = _curve(res)
    assert c["mean"].notna().all() and float(c["mean"].iloc[-1]) < float(c["mean"].iloc[0])
    assert float(c["time"].iloc[-1]) >= 20 * (1.0 + 4 * 0.1) - 1e-9  # every round waits for its hops


def test_roles_refuse_asynchronous_gossip():
    with pytest.raises(ConfigError, match=r"network.protocol = 'async' is not allowed with \[roles\]"):
        load_config(data={**_cfg({"family": "star", "n": 5}, {"servers": [0]}), "network": {"protocol": "async"}})
