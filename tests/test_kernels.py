"""The compiled synchronous round (issue 14, p2pmtl.kernels): bit-identical to the torch path
on every case it takes (both lerp branches, lanes of every fused rule kind, several runs,
infinite losses, non-finite messages it hands back), chosen as the config says, and the same
files from a whole run."""
import hashlib

import pytest
import torch

pytest.importorskip("numba")

from p2pmtl.bench.common import bench_config  # noqa: E402
from p2pmtl.experiments.config import ConfigError, load_config  # noqa: E402
from p2pmtl.experiments.runner import build_world, make_engine, run_experiment  # noqa: E402
from p2pmtl import kernels  # noqa: E402


def _engines(cfg, rules, **update):
    cfg = cfg.model_copy(update=update)
    world = build_world(cfg, cfg.scenarios[0])
    return [make_engine(cfg.model_copy(update={"kernel": k}), world, cfg.scenarios[0], rules) for k in ("torch", "numba")]


def _same_after(cfg, rules, steps=40, **update):
    ref, fused = _engines(cfg, rules, **update)
    assert (ref.kernel, fused.kernel) == ("torch", "numba")
    for i in range(steps):
        ref.step(i)
        fused.step(i)
        assert torch.equal(ref.pop.theta, fused.pop.theta), i
        assert torch.equal(ref.weights, fused.weights), i
        assert torch.equal(ref.rule_set.phi, fused.rule_set.phi), i
    return ref, fused


def _kernel_rounds(engine):
    return engine._fused.rounds


def _attack(attack, n=200, byz=40):
    data = bench_config(n, byz).model_dump(mode="json")
    data.update(iterations=40, output={"window": 10})
    data["scenarios"][0]["attack"] = attack
    return load_config(data=data)


@pytest.mark.parametrize("nu", [0.1, 0.7])  # torch's lerp has two formulas: |nu| < 0.5 and not
def test_loss_rule_is_bit_identical(nu):
    cfg = bench_config(300, 60)
    cfg = cfg.model_copy(update={"rules": cfg.rules.model_copy(update={"nu": nu})})
    assert _kernel_rounds(_same_after(cfg, ["loss"])[1]) == 40


@pytest.mark.parametrize("nu", [0.1, 0.7])
def test_fused_lanes_and_runs_are_bit_identical(nu):
    """All four built-in rules as lanes (noncoop: self only; average: no statistic; distance:
    unfiltered squared distances; loss: filtered), two runs, LMS."""
    cfg = bench_config(150, 30, runs=2)
    cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"adapt": "lms"}),
                                 "rules": cfg.rules.model_copy(update={"nu": nu})})
    assert _kernel_rounds(_same_after(cfg, ["noncoop", "average", "loss", "distance"])[1]) == 40


@pytest.mark.parametrize("rules", [["average"], ["noncoop"], ["distance"], ["noncoop", "average"]])
def test_rules_alone_are_bit_identical(rules):
    """Each rule alone, and lanes without any statistic (the torch path's cached weights)."""
    assert _kernel_rounds(_same_after(bench_config(120, 24), rules, steps=20)[1]) == 20


def test_infinite_losses_keep_their_scores():
    """Forged rows of 1e200 are finite but their losses overflow: those edges keep their scores
    and get weight 0, as on the torch path's masked branch."""
    ref, fused = _same_after(_attack({"name": "uniform", "low": 1e200, "high": 2e200}), ["loss", "average", "distance"],
                             steps=10)
    assert _kernel_rounds(fused) == 10
    byz_edges = ref.byz_edges[: ref.world_byz_edges.numel()]
    assert torch.equal(fused.weights[byz_edges], torch.zeros(byz_edges.numel(), dtype=torch.float64))


def test_non_finite_messages_take_the_masked_kernel():
    """A forged inf row: the masked kernel drops those edges, as the torch path does."""
    ref, fused = _same_after(_attack({"name": "inf"}), ["loss", "distance", "average"], steps=5)
    assert _kernel_rounds(fused) == 5
    honest = ~fused.is_byzantine.repeat(3)
    assert torch.isfinite(fused.pop.theta[honest]).all()


def test_kernel_applies_only_where_it_can():
    cfg = bench_config(50, 0).model_copy(update={"kernel": "numba"})
    world = build_world(cfg, cfg.scenarios[0])
    assert make_engine(cfg, world, cfg.scenarios[0], ["loss"]).kernel == "numba"
    assert make_engine(cfg, world, cfg.scenarios[0], ["loss", "distance"]).kernel == "numba"
    cfg_clip = cfg.model_copy(update={"rules": cfg.rules.model_copy(update={"combine": "clipped"})})
    assert make_engine(cfg_clip, world, cfg.scenarios[0], ["loss"]).kernel == "torch"  # another combine step
    assert make_engine(cfg.model_copy(update={"dtype": "float32"}), world, cfg.scenarios[0], ["loss"]).kernel == "torch"
    auto = cfg.model_copy(update={"kernel": "auto"})
    assert make_engine(auto, world, cfg.scenarios[0], ["loss"]).kernel == "torch"  # 50 agents: not worth it
    assert kernels.wants_kernel("auto", kernels.AUTO_MIN_EDGES)
    assert not kernels.wants_kernel("torch", 10**9)
    # asynchronous gossip: `auto` compiles from AUTO_MIN_EDGES_ASYNC edges
    data = {**bench_config(600, 0).model_dump(mode="json"), "network": {"protocol": "async"}, "iterations": 2,
            "output": {"window": 1}}
    world = build_world(load_config(data=data), load_config(data=data).scenarios[0])
    assert world.edges.num_edges >= kernels.AUTO_MIN_EDGES_ASYNC
    assert make_engine(load_config(data=data), world, cfg.scenarios[0], ["loss"]).kernel == "numba"
    sync = {**data, "network": None}
    assert make_engine(load_config(data=sync), world, cfg.scenarios[0], ["loss"]).kernel == "torch"


def test_thread_count_changes_no_number():
    cfg = bench_config(400, 80).model_copy(update={"kernel": "numba"})
    world = build_world(cfg, cfg.scenarios[0])
    threads = torch.get_num_threads()
    thetas = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            eng = make_engine(cfg, world, cfg.scenarios[0], ["loss"])
            for i in range(15):
                eng.step(i)
            assert torch.get_num_threads() == t  # the kernel's threads leave torch's alone
            thetas.append(eng.pop.theta.clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*thetas)


def test_bad_kernel_is_an_early_error(monkeypatch):
    with pytest.raises(ConfigError, match=r"kernel = 'cuda': allowed: auto, torch, numba"):
        load_config(data={"graph": {"family": "ring", "n": 5}, "kernel": "cuda"})
    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    with pytest.raises(ConfigError, match="kernel = 'numba' needs the numba package"):
        load_config(data={"graph": {"family": "ring", "n": 5}, "kernel": "numba"})


def _files_of_both_kernels(data: dict, out) -> list[list]:
    """metrics.csv and curves.csv (md5) and every rule's last weights of the run ``data`` on
    torch and on the compiled round."""
    import numpy as np

    digests = []
    for kernel in ("torch", "numba"):
        cfg = load_config(data={**data, "kernel": kernel})
        run_experiment(cfg, out / kernel, progress=False, figures=False)
        digests.append([hashlib.md5((out / kernel / f).read_bytes()).hexdigest() for f in ("metrics.csv", "curves.csv")]
                       + [np.load(w)["w"].tobytes() for w in sorted((out / kernel / "arrays").glob("weights__*"))])
    return digests


def test_a_whole_run_writes_the_same_files(tmp_path):
    data = {"name": "k", "iterations": 60, "graph": {"topology": "li2020_target"},
            "rules": {"names": ["noncoop", "average", "loss", "distance"]},
            "scenarios": [{"name": "b20", "byzantine": 20, "attack": {"name": "uniform", "low": 15.0, "high": 16.0}}]}
    a, b = _files_of_both_kernels(data, tmp_path)
    assert a == b and len(a) == 6


def test_the_scale_bench_times_both_kernels():
    """`p2pmtl bench --only scale` children: the kernel asked for is the one timed."""
    from p2pmtl.bench.main import scale_child

    threads = torch.get_num_threads()
    try:
        rows = [scale_child(300, 3, kernel, 1, "loss,distance") for kernel in ("torch", "numba")]
    finally:
        torch.set_num_threads(threads)
    assert [r["kernel"] for r in rows] == ["torch", "numba"]
    assert all(r["ms_per_iteration"] > 0 and r["floor_ms"] > 0 and r["rules"] == "loss,distance" for r in rows)


ASYNC = {"protocol": "async", "latency": {"kind": "uniform", "low": 0.05, "high": 0.8}, "latency_per_message": True,
         "loss": 0.1, "bandwidth": {"kind": "constant", "value": 200.0},
         "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.5},
         "churn": {"fraction": 0.3, "mean_online": 4.0, "mean_offline": 2.0}}


@pytest.mark.parametrize("attack,serial_max", [({"name": "uniform", "low": 15.0, "high": 16.0}, 20_000),
                                               ({"name": "uniform", "low": 15.0, "high": 16.0}, 0),
                                               ({"name": "inf"}, 20_000),
                                               ({"name": "uniform", "low": 1e200, "high": 2e200}, 20_000),
                                               ({"name": "two_faced", "low": 15.0, "high": 16.0}, 20_000)])
def test_asynchronous_gossip_is_bit_identical(tmp_path, attack, serial_max, monkeypatch):
    """Asynchronous gossip with per-message latencies, losses, bandwidth and churn, all four
    rules as lanes: the compiled round over the firing agents' held messages (serial for small
    batches, parallel with ``serial_max = 0``) writes the torch path's files, under forged,
    infinite and overflowing messages and per-edge forgeries (two-faced senders)."""
    from conftest import tiny_config_dict
    from p2pmtl.kernels import fused_round

    monkeypatch.setattr(fused_round, "SERIAL_MAX_EDGES", serial_max)

    data = tiny_config_dict(iterations=25, network=ASYNC,
                            scenarios=[{"name": "a", "byzantine": 4, "attack": attack}])
    a, b = _files_of_both_kernels(data, tmp_path)
    assert a == b and len(a) == 6


@pytest.mark.parametrize("net", [{"protocol": "async", "latency": 0.2},
                                 {"protocol": "async", "latency": 2.0, "speed": {"kind": "uniform", "low": 0.2,
                                                                                  "high": 0.4}}])
def test_asynchronous_gossip_before_the_first_delivery_is_bit_identical(tmp_path, net):
    """Equal speeds (every agent fires together, twice before any message arrives) and steps
    much shorter than the latency: until the first delivery an agent holds only its own row.
    The compiled round once read its neighbours' current rows there (no inbox yet)."""
    from conftest import tiny_config_dict

    a, b = _files_of_both_kernels(tiny_config_dict(iterations=20, network=net), tmp_path)
    assert a == b and len(a) == 10


SYNC_NET = {"latency": {"kind": "uniform", "low": 0.05, "high": 0.4}, "bandwidth": 2000.0, "loss": 0.2,
            "deadline": 1.3, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.4},
            "stragglers": {"fraction": 0.2, "slowdown": 5.0, "mode": "random"},
            "churn": {"fraction": 0.3, "mean_online": 4.0, "mean_offline": 2.0}}


@pytest.mark.parametrize("attack", [{"name": "uniform", "low": 15.0, "high": 16.0}, {"name": "inf"}])
def test_synchronous_network_rounds_are_bit_identical(tmp_path, attack):
    """The synchronous protocol with losses, a deadline, stragglers and churn (messages lost,
    agents absent or cut off): the masked kernel writes the torch path's files."""
    from conftest import tiny_config_dict

    data = tiny_config_dict(iterations=25, network=SYNC_NET,
                            scenarios=[{"name": "a", "byzantine": 4, "attack": attack}])
    a, b = _files_of_both_kernels(data, tmp_path)
    assert a == b and len(a) == 6


def test_asynchronous_gossip_runs_the_compiled_round():
    from p2pmtl.experiments.runner import make_protocol
    from conftest import tiny_config_dict

    cfg = load_config(data=tiny_config_dict(iterations=10, network=ASYNC, kernel="numba"))
    world = build_world(cfg, cfg.scenarios[-1])
    engine = make_engine(cfg, world, cfg.scenarios[-1], cfg.rules.names)
    proto = make_protocol(cfg, world, engine, lambda *a: None)
    proto.run()
    assert engine._fused.rounds == proto.batches > 10


@pytest.mark.filterwarnings("ignore::p2pmtl.validation.ConfigWarning")
@pytest.mark.parametrize("_", [0])
def test_generated_worlds_are_bit_identical(_):
    """Generated settings (graph size, radius, cap, runs, step, nu, initial score, rules as
    lanes, Byzantine share and forged magnitudes up to overflow): the compiled round gives the
    torch path's models, weights and scores after every step."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rules_st = st.lists(st.sampled_from(["noncoop", "average", "loss", "distance"]), min_size=1, max_size=4,
                        unique=True)

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(n=st.integers(8, 60), radius=st.floats(0.6, 3.0), cap=st.one_of(st.none(), st.integers(1, 9)),
           runs=st.integers(1, 2), adapt=st.sampled_from(["pseudo_observation", "lms"]),
           nu=st.floats(0.01, 1.0), init=st.floats(1e-3, 1e3), rules=rules_st, byz=st.floats(0.0, 0.5),
           magnitude=st.sampled_from([1.0, 1e3, 1e150, 1e200, 1e300]))
    def check(n, radius, cap, runs, adapt, nu, init, rules, byz, magnitude):
        count = int(byz * n)
        data = {"name": "g", "runs": runs, "iterations": 6, "output": {"window": 2},
                "graph": {"family": "random_geometric", "n": n, "radius": radius, "box": 3.0, "max_neighbors": cap},
                "task": {"adapt": adapt}, "rules": {"names": rules, "nu": nu, "init_score": init},
                "scenarios": [{"name": "s", "byzantine": count,
                               "attack": {"name": "uniform", "low": magnitude, "high": 2 * magnitude}}]}
        try:
            cfg = load_config(data=data)
            world = build_world(cfg, cfg.scenarios[0])
        except (ConfigError, ValueError):  # e.g. a disconnected graph: nothing to compare
            return
        ref, fused = [make_engine(cfg.model_copy(update={"kernel": k}), world, cfg.scenarios[0], rules)
                      for k in ("torch", "numba")]
        for i in range(6):
            ref.step(i)
            fused.step(i)
            assert torch.equal(ref.pop.theta, fused.pop.theta) or torch.allclose(
                ref.pop.theta, fused.pop.theta, equal_nan=True, rtol=0, atol=0), i
            assert torch.equal(ref.weights, fused.weights), i
            assert torch.equal(ref.rule_set.phi, fused.rule_set.phi), i

    check()


def test_compiled_flight_store_delivers_as_one_message_at_a_time():
    """The compiled flight store of asynchronous gossip (:mod:`p2pmtl.kernels.delivery`) on
    random flights (FIFO links with several messages each, many equal arrival times, receivers'
    cutoffs, agents back online, lost messages, two lanes): after each delivery the inbox, held
    flags, senders' step counts, bytes sent and received and the messages left in flight are
    those of delivering the due messages one by one in (arrival, send) order."""
    import numpy as np

    from p2pmtl.kernels.delivery import CompiledFlight

    rng = np.random.default_rng(0)
    n, e0, lanes, dim, mb = 7, 20, 2, 3, 16.0
    dst, src = rng.integers(0, n, e0), rng.integers(0, n, e0)
    compared = 0
    for trial in range(150):
        fl = CompiledFlight(n, e0, lanes)
        ref = []  # (arrival, position, edge, sender step, rows [lanes, dim])
        acc_sent, want_sent = np.zeros(n), np.zeros(n)
        link_last = np.full(e0, -np.inf)
        for call in range(int(rng.integers(1, 5))):
            eids = rng.choice(e0, int(rng.integers(1, e0)), replace=False)
            arrival = np.maximum(np.round(rng.uniform(0, 4, eids.size), 1), link_last[eids])  # FIFO links
            link_last[eids] = arrival
            lost = rng.random(eids.size) < 0.2
            iters = rng.integers(0, 50, n)
            sent = rng.standard_normal((lanes * n, dim))
            start, stop = fl.add(eids, arrival, lost, src, iters, sent, mb, acc_sent)
            want_sent += mb * np.bincount(src[eids], minlength=n)
            kept = eids[~lost]
            assert stop - start == kept.size
            for j, e in enumerate(kept):
                rows = np.stack([sent[src[e] + n * lane] for lane in range(lanes)])
                ref.append((arrival[~lost][j], len(ref), e, float(iters[src[e]]), rows))
        assert np.array_equal(acc_sent, want_sent)
        has, held = rng.random(e0) < 0.3, rng.uniform(0, 9, e0)
        inbox, received = rng.standard_normal((lanes * e0, dim)), rng.uniform(0, 100, n)
        rejoined = np.where(rng.random(n) < 0.3, rng.uniform(0, 3, n), -np.inf)
        cutoff = np.where(rng.random(n) < 0.5, rng.uniform(0, 4, n), np.inf)
        t = float(rng.uniform(0, 4))
        want = has.copy(), held.copy(), inbox.copy(), received.copy()
        counts = np.zeros(n, dtype=np.int64)
        left = []
        for a, pos, e, step, rows in sorted(ref, key=lambda m: (m[0], m[1])):  # the reference: one at a time
            k = dst[e]
            if a > t or a > cutoff[k]:
                left.append(pos)
                continue
            if a < rejoined[k]:
                continue
            want[0][e], want[1][e] = True, step
            for lane in range(lanes):
                want[2][e + e0 * lane] = rows[lane]
            counts[k] += 1
        want[3][:] += mb * counts  # the numpy path's accounts: bytes of all messages received, added once
        any_due = fl.deliver(dst, cutoff, t, rejoined, has, held, inbox, received, mb)
        assert any_due == (len(left) < len(ref))
        for got, exp in zip((has, held, inbox, received), want):
            assert np.array_equal(got, exp)
        assert fl.size == len(left)
        left = sorted(left)  # kept in sending order
        assert np.array_equal(fl.edge[:fl.size], [ref[p][2] for p in left])
        assert np.array_equal(fl.arrival[:fl.size], [ref[p][0] for p in left])
        assert np.array_equal(fl.sender_step[:fl.size], [ref[p][3] for p in left])
        assert np.array_equal(fl.values[:fl.size], np.array([ref[p][4] for p in left]).reshape(-1, lanes, dim))
        assert (fl._last == -1).all() and (fl._count == 0).all()
        compared += len(ref) - len(left)
    assert compared > 500


def test_the_kernel_never_takes_an_engine_off_the_cpu():
    """An engine whose models live on another device (a plugin task's linear models on a GPU;
    the built-in linear tasks stay on the CPU; here the meta device stands in) is left to
    torch: the kernel reads its arrays through numpy."""
    from p2pmtl.kernels.fused_round import applies

    cfg = _attack({"name": "uniform", "low": 15.0, "high": 16.0})
    world = build_world(cfg, cfg.scenarios[0])
    engine = make_engine(cfg.model_copy(update={"kernel": "numba"}), world, cfg.scenarios[0], ["loss"])
    assert applies(engine) is None and engine.kernel == "numba"
    engine.pop.theta = engine.pop.theta.to("meta")
    assert "on the CPU" in applies(engine)

