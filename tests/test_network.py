"""The network model and the gossip protocols on it (SPEC sec. 7)."""
import numpy as np
import pytest
import torch

from p2pmtl.io.records import NETWORK_METRICS
from p2pmtl.experiments.config import load_config
from p2pmtl.experiments.runner import build_world, make_engine, make_network, make_protocol, run_experiment
from p2pmtl.network.protocols import AsyncGossip, SyncGossip


def _two_nodes(network: dict, rules=("average",), iterations=3):
    data = {"name": "two", "iterations": iterations, "graph": {"family": "complete", "n": 2},
            "task": {"targets": [[5.0, 5.0]]}, "rules": {"names": list(rules)},
            "clock": {"compute_time": 1.0}, "network": network, "output": {"figures": False}}
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    return cfg, world, make_engine(cfg, world, sc, cfg.rules.names)


def test_two_node_arrival_is_latency_plus_bytes_over_bandwidth():
    cfg, world, engine = _two_nodes({"latency": 0.25, "bandwidth": 64.0})
    net = make_network(cfg, world, engine)
    assert engine.pop.message_bytes == 16  # two float64 coordinates
    eid = np.flatnonzero(net.src != net.dst)
    arrival, lost = net.send(np.array([1.0, 1.0]), eid)
    assert np.array_equal(arrival, [1.0 + 0.25 + 16 / 64] * 2) and not lost.any()
    # inside the synchronous protocol: round 1 ends when the neighbour's model has arrived
    cfg, world, engine = _two_nodes({"latency": 0.25, "bandwidth": 64.0})
    proto = SyncGossip(engine, make_network(cfg, world, engine), 3, None, 1, 1, lambda *a: None)
    done = proto.round(0)
    assert np.array_equal(done, [1.5, 1.5])
    assert np.array_equal(proto.acc.compute, [1.0, 1.0])
    assert np.array_equal(proto.acc.send, [0.5, 0.5]) and np.array_equal(proto.acc.wait, [0.0, 0.0])
    assert np.array_equal(proto.acc.sent, [16, 16]) and np.array_equal(proto.acc.received, [16, 16])


@pytest.mark.parametrize("delay,held", [(1.0, True), (1.0 + 1e-9, False)])
def test_async_message_is_held_exactly_from_its_arrival(delay, held):
    """Both agents finish steps at t = 1, 2, ...; a message sent at t = 1 that arrives at
    1 + delay is combined at t = 2 only if it has arrived by then."""
    cfg, world, engine = _two_nodes({"protocol": "async", "latency": delay})
    proto = AsyncGossip(engine, make_network(cfg, world, engine), 2, 1.0, 1, lambda *a: None)
    proto.run()
    assert proto.events == 4
    w = engine.lane_weights(0)
    others = engine.world_edges.src != engine.world_edges.dst
    if held:
        assert torch.allclose(w[others], torch.full((2,), 0.5, dtype=w.dtype))
        assert np.array_equal(proto.acc.staleness, [1.0, 1.0])  # the sender has stepped once since
    else:
        assert torch.all(w[others] == 0)


def test_lost_and_late_messages_are_not_combined():
    """Every message lost (or past the deadline): averaging is exactly non-cooperation."""
    for network in ({"loss": 1.0}, {"latency": 2.0, "deadline": 1.5}):
        cfg, world, engine = _two_nodes(network, rules=("noncoop", "average"), iterations=5)
        proto = SyncGossip(engine, make_network(cfg, world, engine), 5, network.get("deadline"), 1, 1,
                           lambda *a: None)
        proto.run()
        theta = engine.pop.theta
        assert torch.equal(theta[:2], theta[2:])
        others = engine.world_edges.src != engine.world_edges.dst
        assert torch.all(engine.lane_weights(1)[others] == 0)
        assert proto.acc.received.sum() == 0 and proto.acc.sent.sum() == 2 * 5 * 16
    # the deadline case: each round ends at the deadline, not at the late arrival
    assert np.allclose(proto.acc.now, 5 * 1.5)


def _metrics(out):
    import csv

    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] in ("loss", "msd")]
    return [(r["scenario"], r["rule"], r["step"], r["agent"], r["metric"], r["value"]) for r in rows]


@pytest.mark.parametrize("protocol", ["sync", "async"])
def test_zero_latency_equal_speeds_equals_plain_engine(tmp_path, tiny_dict, protocol):
    plain = load_config(data=tiny_dict)
    net = load_config(data={**tiny_dict, "network": {"protocol": protocol}})
    run_experiment(plain, tmp_path / "plain", progress=False, figures=False)
    run_experiment(net, tmp_path / "net", progress=False, figures=False)
    a, b = _metrics(tmp_path / "plain"), _metrics(tmp_path / "net")
    assert a == b and len(a) > 100


HETERO = {"protocol": "async", "latency": {"kind": "uniform", "low": 0.1, "high": 0.4}, "latency_per_message": True,
          "bandwidth": 2000.0, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.4},
          "stragglers": {"fraction": 0.2, "slowdown": 5.0, "mode": "random"}, "loss": 0.1,
          "churn": {"fraction": 0.3, "mean_online": 10.0, "mean_offline": 5.0}}


def test_async_runs_are_deterministic_for_a_seed(tmp_path, tiny_dict):
    cfg = load_config(data={**tiny_dict, "network": HETERO})
    outs = []
    for name in ("a", "b"):
        run_experiment(cfg, tmp_path / name, progress=False, figures=False)
        outs.append((tmp_path / name / "metrics.csv").read_text() + (tmp_path / name / "curves.csv").read_text())
    assert outs[0] == outs[1]
    other = load_config(data={**tiny_dict, "seed": 1, "network": HETERO})
    run_experiment(other, tmp_path / "c", progress=False, figures=False)
    assert (tmp_path / "c" / "metrics.csv").read_text() != outs[0]
    # the network accounts: per group in curves.csv by default, per agent on request
    curves = (tmp_path / "a" / "curves.csv").read_text().splitlines()
    assert {r.split(",")[2] for r in curves if ",staleness," in r} == {"all"}  # one row per record, all agents
    assert len({r.split(",")[2] for r in curves if ",loss," in r}) > 1  # the task's metrics: per group too
    assert ",staleness," not in (tmp_path / "a" / "metrics.csv").read_text()
    per_agent = load_config(data={**tiny_dict, "network": HETERO, "output": {"network_per_agent": True}})
    run_experiment(per_agent, tmp_path / "d", progress=False, figures=False)
    table = (tmp_path / "d" / "metrics.csv").read_text()
    assert ",staleness," in table and ",bytes_received," in table
    # the same run: the task's rows are those of the default run
    task_rows = [r for r in table.splitlines() if not any(f",{m}," in r for m in NETWORK_METRICS)]
    assert "\n".join(task_rows) + "\n" == (tmp_path / "a" / "metrics.csv").read_text()


def test_async_lookahead_batches_agents_and_keeps_causality(tiny_dict):
    """With a minimum delay the protocol batches many agents per call; every model an agent
    combines was sent at least that delay before (staleness >= 0, no message from the future)."""
    cfg = load_config(data={**tiny_dict, "iterations": 20,
                            "network": {"protocol": "async", "latency": 0.3,
                                        "speed": {"kind": "uniform", "low": 0.5, "high": 1.5}}})
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, cfg.rules.names)
    proto = make_protocol(cfg, world, engine, lambda *a: None)
    proto.run()
    assert proto.events >= 20 * world.edges.num_nodes
    assert proto.batches < proto.events / 2
    assert (proto.acc.staleness >= 0).all()


ORDERED = {"protocol": "async", "latency": {"kind": "uniform", "low": 0.05, "high": 0.3}, "latency_per_message": True,
           "bandwidth": 800.0, "loss": 0.1, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.5},
           "stragglers": {"fraction": 0.2, "slowdown": 3.0, "mode": "random"}}


@pytest.mark.parametrize("kernel,per_message,per_link", [("torch", True, True), ("numba", True, True),
                                                        ("torch", False, True), ("numba", False, True),
                                                        ("numba", False, False)])
def test_async_agents_combine_exactly_what_arrived_by_their_time(tiny_dict, kernel, per_message, per_link):
    """Causality, checked message by message: every time an agent combines (at its finishing
    time t), the model it holds on each in-link is the one of the last message that reached it
    on that link by t (lost messages never), and it holds none if none did. The reference is
    rebuilt from a log of every message sent (link, arrival, sender's step). Batches of agents
    span more than one lookahead window (each agent is bounded by its own in-neighbours), so
    the per-agent bound and the per-agent delivery cutoff both matter here; with latencies
    drawn per link (not per message) each link's bound is its own latency. The benchmark's
    baseline, one global window (``bound_per_link = False``), keeps causality too, in more calls."""
    network = {**ORDERED, "latency_per_message": per_message}
    cfg = load_config(data={**tiny_dict, "iterations": 25, "network": network,
                            "graph": {"family": "random_geometric", "n": 40, "radius": 1.0, "box": 3.0},
                            "kernel": kernel})
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, ["loss"])
    proto = make_protocol(cfg, world, engine, lambda *a: None)
    proto.bound_per_link = per_link
    assert proto.lookahead == pytest.approx(0.05 + 16 / 800.0 if per_message else proto.net.latency[
        ~proto.is_self].min() + 16 / 800.0)
    la = proto.link_lookahead[~proto.is_self]
    assert (la.max() > 2 * la.min()) != per_message  # per link: each its own latency's bound
    sent, combined, spans = [], [], []
    send = proto.net.send

    def logged_send(times, eids):
        arrival, lost = send(times, eids)
        sent.append((eids.copy(), arrival.copy(), lost.copy(), proto.iters[proto.src[eids]].astype(float)))
        return arrival, lost

    def snapshot(fire):
        at = proto.next_fire[fire].copy()  # their finishing times (moved on after the combination)
        spans.append(float(at.max() - at.min()))
        for k, t in zip(fire.tolist(), at.tolist()):
            edges = np.arange(proto.in_offsets[k], proto.in_offsets[k + 1])
            edges = edges[~proto.is_self[edges]]
            combined.append((t, edges, proto.has[edges].copy(), proto.held_iter[edges].copy()))

    proto.net.send = logged_send
    if kernel == "numba":
        consume = engine.consume_held

        def consume_held(sent_rows, fire, has, inbox):
            snapshot(fire)
            return consume(sent_rows, fire, has, inbox)
        engine.consume_held = consume_held
    else:
        consume = proto._consume_torch

        def consume_torch(fire, *rest):
            snapshot(fire)
            return consume(fire, *rest)
        proto._consume_torch = consume_torch
    proto.run()

    edge = np.concatenate([e for e, *_ in sent])
    arrival = np.concatenate([a for _, a, _, _ in sent])
    lost = np.concatenate([x for *_, x, _ in sent])
    step = np.concatenate([s for *_, s in sent])
    checked = held = 0
    for t, edges, has, held_iter in combined:
        for e, h, it in zip(edges.tolist(), has.tolist(), held_iter.tolist()):
            mine = np.flatnonzero((edge == e) & ~lost & (arrival <= t))  # in send order; FIFO links
            assert h == bool(len(mine)), (t, e)
            if len(mine):
                assert it == step[mine[-1]], (t, e)
                held += 1
            checked += 1
    assert proto.events >= 25 * 40 and checked > 5000 and held > checked // 2
    assert (max(spans) > proto.lookahead) == per_link  # batches wider than one global window


def test_async_bound_per_link_takes_fewer_calls_than_one_window(tiny_dict):
    """The same run, the same number of steps: the bound per agent and link batches more agents
    per call than one global window of the smallest delay."""
    cfg = load_config(data={**tiny_dict, "iterations": 25, "network": {**ORDERED, "latency_per_message": False},
                            "graph": {"family": "random_geometric", "n": 40, "radius": 1.0, "box": 3.0}})
    calls = {}
    for per_link in (True, False):
        world = build_world(cfg, cfg.scenarios[0])
        proto = make_protocol(cfg, world, make_engine(cfg, world, cfg.scenarios[0], ["loss"]), lambda *a: None)
        proto.bound_per_link = per_link
        proto.run()
        assert proto.events >= 25 * 40
        calls[per_link] = proto.batches
    assert calls[False] > 1.3 * calls[True], calls


def test_ready_agents_by_hand_and_compiled():
    """A path 0 - 1 - 2 and an isolated agent 3, due at 1, 2, 3.5 and 9. Lookahead 1: agent 0
    is bounded by agent 1's 2 + 1, agent 1 by min(1, 3.5) + 1 = 2, not after its own 2 (waits),
    agent 2 by agent 1's 3 (waits), agent 3 has no in-neighbour (ready). Lookahead 1.2: agent 1's
    bound is 2.2 (ready), agent 2's 3.2 (still waits)."""
    from p2pmtl.kernels.delivery import ready_agents as compiled
    from p2pmtl.network.protocols import ready_agents

    # in-edges from other agents, sorted by receiver: 0<-1, 1<-0, 1<-2, 2<-1 (3 has none)
    src = np.array([1, 0, 2, 1])
    offsets = np.array([0, 1, 3, 4, 4])
    next_fire = np.array([1.0, 2.0, 3.5, 9.0])
    for f in (ready_agents, compiled):
        assert f(next_fire, offsets, src, np.full(4, 1.0)).tolist() == [0, 3]
        assert f(next_fire, offsets, src, np.full(4, 1.2)).tolist() == [0, 1, 3]
        assert f(next_fire, offsets, src, np.full(4, 1.6)).tolist() == [0, 1, 2, 3]
        # per link: only the link 0 -> 1 slow (1.2), the rest 1.0: agent 1 is bounded by
        # min(1 + 1.2, 3.5 + 1) = 2.2 (ready), agent 2 by 2 + 1 = 3 (waits)
        assert f(next_fire, offsets, src, np.array([1.0, 1.2, 1.0, 1.0])).tolist() == [0, 1, 3]
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        e = rng.integers(0, n, size=(int(rng.integers(0, 4 * n)), 2))
        e = e[e[:, 0] != e[:, 1]]
        e = e[np.lexsort((e[:, 0], e[:, 1]))]
        offsets = np.searchsorted(e[:, 1], np.arange(n + 1))
        times = rng.random(n).round(1)  # ties
        for la in (0.05, 0.3):
            per_link = la * (1.0 + rng.random(len(e)).round(1))  # ties
            want = ready_agents(times, offsets, e[:, 0], per_link)
            assert np.array_equal(compiled(times, offsets, e[:, 0].copy(), per_link), want)
            assert times.argmin() in want
            by_hand = [k for k in range(n) if all(times[k] < times[a] + d for (a, b), d in zip(e, per_link) if b == k)]
            assert want.tolist() == by_hand


def test_churned_agents_freeze_then_rejoin_and_catch_up():
    """Agents 0-3 are offline for the first 60 rounds: their models stay exactly their initial
    ones (no compute, no messages), then, back online, the loss-based rule pulls them to their
    group: within 30 rounds their error is that of agents that never left."""
    data = {"name": "churn", "seed": 3, "iterations": 100, "graph": {"family": "complete", "n": 20},
            "rules": {"names": ["loss"]}, "clock": {"compute_time": 1.0},
            "network": {"churn": {"fraction": 0.2}}, "output": {"figures": False}}
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, ["loss"])
    net = make_network(cfg, world, engine)
    away = np.arange(20) < 4
    net.online = lambda times: ~away | (np.asarray(times) >= 60.0)  # a fixed churn schedule
    proto = SyncGossip(engine, net, 100, None, 1, 1, lambda *a: None)
    theta0 = engine.pop.theta.clone()
    msd = []
    for r in range(100):
        proto.round(r)
        msd.append(engine.pop.metrics()["msd"].numpy().copy())
        if r == 59:
            assert torch.equal(engine.pop.theta[:4], theta0[:4])
            assert proto.acc.sent[:4].sum() == 0 and proto.acc.received[:4].sum() == 0
    msd = np.array(msd)
    stayed = np.median(msd[89, 4:])
    assert msd[59, :4].min() > 100 * stayed  # far behind when they rejoin
    assert msd[89, :4].max() < 3 * max(stayed, 1e-3)


def test_churn_model_alternates_online_and_offline_periods():
    cfg, world, engine = _two_nodes({"churn": {"fraction": 1.0, "mean_online": 3.0, "mean_offline": 1.0}})
    net = make_network(cfg, world, engine)
    states = np.array([net.online(t).copy() for t in np.arange(0.0, 4000.0, 0.5)])
    assert abs((~states).mean() - 0.25) < 0.05  # offline a quarter of the time
    switches = (states[1:] != states[:-1]).sum(0)
    assert (switches > 500).all()


def test_time_varying_topology_uses_only_present_edges(tiny_dict):
    data = {**tiny_dict, "iterations": 6, "graph": {"family": "erdos_renyi", "n": 12, "p": 0.3},
            "network": {"topology": {"kind": "redraw", "every": 2}}}
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    assert world.present is not None and len(world.present) == 3
    engine = make_engine(cfg, world, sc, ["average"])
    net = make_network(cfg, world, engine)
    proto = SyncGossip(engine, net, 6, None, 2, 1, lambda *a: None)
    e = world.edges
    for r in range(6):
        proto.round(r)
        absent = ~torch.from_numpy(net.present(r // 2))
        assert torch.all(engine.lane_weights(0)[absent] == 0)
    # different blocks use different edges
    assert not np.array_equal(net.present(0), net.present(1))
    assert e.num_edges > len(world.present[0])


def test_network_config_errors_name_field_and_allowed(tiny_dict):
    from p2pmtl.experiments.config import ConfigError

    for bad, words in ((("network.protocol", "'x'"), ("network.protocol", "sync")),
                       (("network.latency.kind", "'pareto'"), ("network.latency.kind", "lognormal")),
                       (("network.loss", "1.5"), ("network.loss",)),
                       (("network.bandwidth", "0"), ("network.bandwidth.value = 0.0", ">= 1"))):
        data = {**tiny_dict, "network": {}}
        with pytest.raises(ConfigError) as e:
            load_config(data=data, overrides=[f"{bad[0]}={bad[1]}"])
        for w in words:
            assert w in str(e.value), str(e.value)


def test_static_fast_path_equals_general_round():
    """The precomputed path for fixed timing gives the general max-plus round's numbers."""
    net_cfg = {"latency": {"kind": "uniform", "low": 0.1, "high": 0.5}, "bandwidth": 100.0, "deadline": 100.0,
               "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3}, "stragglers": {"fraction": 0.2}}
    data = {"name": "fast", "iterations": 15, "graph": {"family": "random_geometric", "n": 20, "radius": 1.5,
            "box": 3.0, "max_neighbors": 5}, "network": net_cfg, "output": {"figures": False}}
    runs = []
    for static in (True, False):
        cfg = load_config(data=data)
        sc = cfg.scenarios[0]
        world = build_world(cfg, sc)
        engine = make_engine(cfg, world, sc, ["noncoop", "average", "loss"])
        proto = make_protocol(cfg, world, engine, lambda *a: None)
        assert proto.static
        proto.static = static
        proto.deadline = float(proto.net.compute_times().max()) + 0.2  # every step finishes, some messages are late
        proto.run()
        runs.append((engine.pop.theta.clone(), {k: v.copy() for k, v in proto.acc.extras().items()}))
    assert torch.equal(runs[0][0], runs[1][0])
    for k in runs[0][1]:
        assert np.allclose(runs[0][1][k], runs[1][1][k], rtol=0, atol=1e-12), k
    assert runs[0][1]["bytes_received"].sum() < runs[0][1]["bytes_sent"].sum()  # the deadline dropped some


def _star_timing(placement, network, clients=4, message_bytes=100.0):
    import networkx as nx

    from p2pmtl.network.config import ClockConfig, NetworkConfig
    from p2pmtl.core.edges import EdgeIndex
    from p2pmtl.network.model import NetworkModel
    from p2pmtl.network.protocols import ServerRounds

    g = nx.star_graph(clients)
    net = NetworkModel(NetworkConfig(**network), ClockConfig(compute_time=1.0), [g], EdgeIndex.from_graph(g),
                       clients + 1, message_bytes, [0])
    return ServerRounds(net, placement, network.get("deadline"))


def test_server_round_time_parallel_vs_sequential_clients():
    """BR-MTRL Table I's contrast: clients in parallel finish a round in one training time,
    clients on one machine in the sum of them. Link: 0.1 s + 100 B / 1000 B/s = 0.2 s."""
    chosen = np.arange(4)
    par = _star_timing("parallel", {"latency": 0.1, "bandwidth": 1000.0})
    assert par.arrives(chosen).all()
    assert par.round_time == pytest.approx(0.2 + 1.0 + 0.2)
    seq = _star_timing("sequential", {"latency": 0.1, "bandwidth": 1000.0})
    assert seq.arrives(chosen).all()
    assert seq.round_time == pytest.approx(0.2 + 4 * 1.0 + 0.2)
    s = seq.summary()
    assert s["phase_train_mean"] == pytest.approx(4.0) and par.summary()["phase_train_mean"] == pytest.approx(1.0)
    assert np.array_equal(par.acc.sent, [100.0] * 4) and np.array_equal(par.acc.received, [100.0] * 4)


def test_server_deadline_drops_stragglers_from_the_aggregate():
    from test_federated import small_clients
    from p2pmtl.robust.aggregators import make_aggregator
    from p2pmtl.server.config import ServerConfig
    from p2pmtl.server.federated import FederatedRun, Method

    timing = _star_timing("parallel", {"latency": 0.1, "deadline": 3.0,
                                       "stragglers": {"fraction": 0.5, "slowdown": 10.0}})
    slow = timing.net.straggler[1:]
    assert slow.any() and not slow.all()
    clients, _ = small_clients()
    run = FederatedRun(Method.parse("fedavg"), ServerConfig(methods=["fedavg"], alpha=1.0, tau_joint=1), clients,
                       make_aggregator("mean"), np.array([], dtype=int), None, 0)
    uploads = []
    orig = run.aggregator
    run.aggregator = lambda up: (uploads.append(up.clone()), orig(up))[1]
    run.round(0, timing.arrives)
    assert len(uploads[0]) == int((~slow).sum())  # only the on-time uploads were aggregated
    assert timing.round_time == pytest.approx(3.0) and timing.dropped == int(slow.sum())
    fast = _star_timing("parallel", {"latency": 0.1, "stragglers": {"fraction": 0.5, "slowdown": 10.0}})
    assert fast.arrives(np.arange(4)).all() and fast.round_time == pytest.approx(0.1 + 10.0 + 0.1)


def test_server_mode_records_network_accounts(tmp_path):
    from test_federated import server_config_dict

    data = server_config_dict()
    data["network"] = {"latency": 0.05, "bandwidth": 1e6}
    data["output"] = {"figures": False}
    cfg = load_config(data=data)
    s = run_experiment(cfg, tmp_path, progress=False, figures=False)
    res = s["results"]["clean"]["fedavg"]
    assert res["round_time_mean"] > 1.0 and res["uploads_dropped"] == 0
    assert res["bytes_sent"]["final_mean"] > 0


def test_step_cut_by_the_deadline_is_abandoned():
    """A straggler whose step outlasts the deadline sends nothing and combines its old model
    with what it received: its round (and its neighbours') lasts exactly the deadline."""
    cfg, world, engine = _two_nodes({"deadline": 2.0, "stragglers": {"fraction": 0.5, "slowdown": 10.0}},
                                    rules=("average",), iterations=1)
    net = make_network(cfg, world, engine)
    net.straggler = slow = np.array([False, True])  # agent 1 computes 10 s, agent 0 1 s
    proto = SyncGossip(engine, net, 1, 2.0, 1, 1, lambda *a: None)
    assert not proto.static
    theta0 = engine.pop.theta.clone()
    done = proto.round(0)
    assert np.allclose(done, [2.0, 2.0])  # agent 0 waits for agent 1 until the deadline
    k, other = int(np.flatnonzero(slow)[0]), int(np.flatnonzero(~slow)[0])
    assert proto.acc.sent[k] == 0 and proto.acc.received[k] == 16  # it heard its neighbour
    w = engine.lane_weights(0)
    e = engine.world_edges
    into_fast = (e.dst == other) & (e.src == k)
    assert float(w[into_fast]) == 0.0  # nothing from the straggler
    # the straggler averaged its OLD model with the neighbour's new one
    psi_other = engine.sent[other]
    assert torch.allclose(engine.pop.theta[k], 0.5 * (theta0[k] + psi_other))


def test_latency_from_an_edge_attribute_and_a_schedule_of_graphs(tmp_path):
    import networkx as nx

    from p2pmtl.network.config import ClockConfig, NetworkConfig
    from p2pmtl.core.edges import EdgeIndex
    from p2pmtl.network.model import NetworkModel

    g = nx.path_graph(3)
    g[0][1]["delay"] = 0.7
    e = EdgeIndex.from_graph(g)
    net = NetworkModel(NetworkConfig(latency={"kind": "edge_attr", "attr": "delay", "default": 0.2}),
                       ClockConfig(), [g], e, 3, 8.0, [0])
    lat = {(int(s), int(d)): float(x) for s, d, x in zip(e.src, e.dst, net.latency)}
    assert lat[(0, 1)] == lat[(1, 0)] == 0.7 and lat[(1, 2)] == lat[(2, 1)] == 0.2 and lat[(0, 0)] == 0.0
    with pytest.raises(ValueError, match="default"):
        NetworkModel(NetworkConfig(latency={"kind": "edge_attr", "attr": "delay"}), ClockConfig(), [g], e, 3, 8.0, [0])
    # a schedule: ring, then complete, in turn every 2 rounds
    data = {"name": "sched", "iterations": 8, "graph": {"family": "ring", "n": 6}, "rules": {"names": ["average"]},
            "network": {"topology": {"kind": "schedule", "every": 2, "schedule": [
                {"family": "ring", "n": 6}, {"family": "complete", "n": 6}]}}, "output": {"figures": False}}
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, ["average"])
    net = make_network(cfg, world, engine)
    proto = SyncGossip(engine, net, 8, None, 2, 1, lambda *a: None)
    for r in range(8):
        proto.round(r)
        w = engine.lane_weights(0)
        assert torch.allclose(w[w > 0], torch.full_like(w[w > 0], 1 / (3 if (r // 2) % 2 == 0 else 6)))


def test_a_link_transmits_one_message_at_a_time():
    """Bandwidth is a capacity: a message sent while the link is still busy waits for it."""
    cfg, world, engine = _two_nodes({"latency": 0.25, "bandwidth": 16.0})  # 16 bytes: 1 s on the wire
    net = make_network(cfg, world, engine)
    e = np.flatnonzero(net.src != net.dst)[:1]
    a1, _ = net.send(np.array([0.0]), e)
    a2, _ = net.send(np.array([0.1]), e)
    a3, _ = net.send(np.array([5.0]), e)
    assert a1[0] == pytest.approx(1.25) and a2[0] == pytest.approx(2.25) and a3[0] == pytest.approx(6.25)


def test_async_skips_models_while_a_link_is_busy():
    """Steps of 1 s, 4 s on the wire: each link carries one model in four; bytes count only
    what was sent."""
    cfg, world, engine = _two_nodes({"protocol": "async", "bandwidth": 4.0})
    proto = AsyncGossip(engine, make_network(cfg, world, engine), 8, 1.0, 1, lambda *a: None)
    proto.run()
    assert proto.events == 16
    assert np.array_equal(proto.acc.sent, [32.0, 32.0])  # steps 1 and 5 of each agent


def test_async_vectorized_delivery_equals_a_per_message_loop(tiny_dict):
    """At every delivery of a run with per-message latencies, losses, churn and bandwidth, the
    vectorized pass leaves the inbox, the held flags, the senders' step counts and the bytes
    received exactly as delivering the due messages one by one in (arrival, send) order does."""
    from p2pmtl.network.protocols import AsyncGossip

    checked = []

    class Checked(AsyncGossip):
        def _deliver(self, t, cutoff):
            fl = self.flight
            inbox = None if self.inbox is None else self.inbox.clone()
            has, held, received = self.has.copy(), self.held_iter.copy(), self.acc.received.copy()
            order = sorted(range(fl.size), key=lambda i: (fl.arrival[i], fl.call[i]))
            for i in order:  # the reference: one message at a time
                e = int(fl.edge[i])
                k = int(self.dst[e])
                if fl.arrival[i] > t or fl.arrival[i] > cutoff[k] or fl.arrival[i] < self.rejoined[k]:
                    continue
                values, size = fl.values[int(fl.call[i])], fl.sizes[int(fl.call[i])]
                if inbox is None:
                    inbox = torch.zeros(self.m * self.e0, values.shape[1], dtype=values.dtype)
                for lane in range(self.m):
                    inbox[e + lane * self.e0] = values[int(fl.pos[i]) + lane * size]
                has[e], held[e] = True, fl.sender_step[i]
                received[k] += self.net.message_bytes
            left = int(((fl.arrival > t) | (fl.arrival > cutoff[self.dst[fl.edge]])).sum()) if fl.size else 0
            super()._deliver(t, cutoff)
            assert self.flight.size == left
            assert np.array_equal(self.has, has) and np.array_equal(self.held_iter, held)
            assert np.array_equal(self.acc.received, received)
            assert (inbox is None and self.inbox is None) or torch.equal(self.inbox, inbox)
            checked.append(len(order))

    net = {"protocol": "async", "latency": {"kind": "uniform", "low": 0.05, "high": 0.8},
           "latency_per_message": True, "loss": 0.1, "bandwidth": {"kind": "constant", "value": 200.0},
           "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.5},
           "churn": {"fraction": 0.3, "mean_online": 4.0, "mean_offline": 2.0}}
    cfg = load_config(data={**tiny_dict, "iterations": 15, "network": net})
    sc = cfg.scenarios[-1]
    world = build_world(cfg, sc)
    engine = make_engine(cfg, world, sc, cfg.rules.names)
    base = make_protocol(cfg, world, engine, lambda *a: None)
    proto = Checked(engine, base.net, base.iterations, base.block_seconds, base.record_every, lambda *a: None)
    proto.run()
    assert len(checked) > 10 and sum(checked) > 100  # many deliveries, many messages in flight
