"""The attacks of p2pmtl.robust.attack_family: mimic, inf, alie_opt, ipm_opt (hand cases, the
search against brute force, the hostile-input path in server and gossip mode, validation)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from p2pmtl.core.edges import EdgeIndex
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.experiments.runner import run_experiment
from p2pmtl.robust.aggregators import make_aggregator
from p2pmtl.robust.attack_family import top_direction_target
from p2pmtl.robust.attacks import ATTACKS, ALittleIsEnoughAttack, Attack, AttackContext, make_attack


def ctx_of(honest, byzantine, edges=None, previous=None, runs=None, aggregator=None):
    honest = torch.as_tensor(honest, dtype=torch.float64)
    run_of = torch.zeros(honest.shape[0], dtype=torch.long) if runs is None else torch.as_tensor(runs)
    gens = [torch.Generator().manual_seed(r) for r in range(int(run_of.max()) + 1)]
    prev = None if previous is None else torch.as_tensor(previous, dtype=torch.float64)
    return AttackContext(0, honest, torch.as_tensor(byzantine), run_of, gens, edges, prev, None, 0,
                         aggregator=aggregator)


def undirected(pairs, n):
    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    return EdgeIndex.from_arrays(np.array(src), np.array(dst), n)


def test_registered_with_descriptions_and_listed(capsys):
    from p2pmtl.cli import main

    for name in ("mimic", "inf", "alie_opt", "ipm_opt"):
        assert name in ATTACKS and not ATTACKS.get(name).gossip_only
        assert len(ATTACKS.get(name).__doc__) > 150
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mimic", "inf", "alie_opt", "ipm_opt"):
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert "[knows:" in line, line


# ---------------------------------------------------------------- mimic


def test_mimic_first_copies_the_lowest_honest_row():
    honest = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]
    attack = make_attack("mimic", target="first")
    assert torch.equal(attack.forge(ctx_of(honest, [1, 3])), torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64))
    assert torch.equal(attack.forge(ctx_of(honest, [0, 2])), torch.tensor([[3.0, 4.0], [3.0, 4.0]], dtype=torch.float64))
    assert attack.last_targets.tolist() == [1, 1]


def test_mimic_max_variance_by_hand_and_against_svd():
    # honest x-deviations from their mean (-0.125): 0.125, 1.125, -2.875, 1.625: the top
    # principal direction is about the x axis, the largest |projection| is row 2
    honest = [[0.0, 0.0], [1.0, 0.0], [-3.0, 0.2], [1.5, 0.0], [100.0, 100.0]]
    out = make_attack("mimic", target="max_variance").forge(ctx_of(honest, [4]))
    assert torch.equal(out, torch.tensor([[-3.0, 0.2]], dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    rows = torch.randn((9, 6), generator=g, dtype=torch.float64) * torch.tensor([5.0, 1, 1, 1, 1, 1])
    a = rows - rows.mean(0)
    z = torch.linalg.svd(a, full_matrices=False).Vh[0]
    assert top_direction_target(rows) == int((a @ z).abs().argmax())
    assert top_direction_target(torch.ones(4, 3)) == 0  # no variance: the first


def test_mimic_per_run_in_gossip_mode():
    """Two batched runs: each run's Byzantine agents copy an honest agent of their own run; a
    run without honest agents sends its own models."""
    honest = [[0.0], [1.0], [9.0], [50.0], [2.0], [8.0], [70.0], [71.0]]
    runs = [0, 0, 0, 0, 1, 1, 2, 2]
    edges = undirected([(0, 1), (1, 2), (2, 3), (4, 5), (6, 7)], 8)
    ctx = ctx_of(honest, [3, 5, 6, 7], edges=edges, runs=runs)
    out = make_attack("mimic", target="first").forge(ctx)
    assert out.flatten().tolist() == [0.0, 2.0, 70.0, 71.0]
    out = make_attack("mimic", target="max_variance").forge(ctx)
    assert out.flatten().tolist() == [9.0, 2.0, 70.0, 71.0]  # run 0: 9 is furthest from the mean 10/3


# ---------------------------------------------------------------- inf


def test_inf_values():
    ctx = ctx_of(torch.zeros(4, 3), [0, 2])
    assert torch.equal(make_attack("inf").forge(ctx), torch.full((2, 3), math.inf, dtype=torch.float64))
    assert torch.equal(make_attack("inf", sign=-1).forge(ctx), torch.full((2, 3), -math.inf, dtype=torch.float64))
    assert torch.isnan(make_attack("inf", nan=True).forge(ctx)).all()


def _linear_server_dict(attack: dict, methods=("fedavg+trimmed_mean", "fedavg")) -> dict:
    return {"name": "tl_family", "mode": "server", "iterations": 3, "graph": {"family": "star", "n": 11},
            "server": {"methods": list(methods), "alpha": 1.0, "f": 2},
            "output": {"window": 2, "figures": False},
            "scenarios": [{"name": "attacked", "byzantine": 2, "attack": attack}]}


def test_inf_uploads_are_dropped_by_the_server(tmp_path):
    run_experiment(load_config(data=_linear_server_dict({"name": "inf"})), tmp_path, progress=False, figures=False)
    res = json.loads((tmp_path / "summary.json").read_text())["results"]["attacked"]
    for m in ("fedavg+trimmed_mean", "fedavg"):
        assert res[m]["uploads_dropped_nonfinite"] == 6  # 2 Byzantine clients x 3 rounds
        assert res[m]["rounds_without_update"] == 0
        assert math.isfinite(res[m]["msd"]["last_window_mean"])


def test_inf_messages_get_no_weight_in_gossip(tiny_dict):
    from p2pmtl.experiments.runner import build_world, make_engine

    tiny_dict["scenarios"][1]["attack"] = {"name": "inf", "sign": -1}
    cfg = load_config(data=tiny_dict)
    sc = cfg.scenarios[1]
    world = build_world(cfg, sc)
    eng = make_engine(cfg, world, sc, ["average"])
    for t in range(3):
        eng.step(t)
    e, byz = world.edges, eng.is_byzantine
    from_byz = byz[e.src] & ~byz[e.dst] & (e.src != e.dst)
    assert from_byz.any() and (eng.lane_weights(0)[from_byz] == 0).all()
    assert torch.isfinite(eng.pop.theta[~byz]).all()


# ---------------------------------------------------------------- alie_opt, ipm_opt


def _honest_stack(n=20, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn((n, d), generator=g, dtype=torch.float64)


def _distance(agg, up, byz):
    honest = torch.ones(len(up), dtype=torch.bool)
    honest[byz] = False
    out = agg(up)
    return float((out - up[honest].mean(0)).norm()) if torch.isfinite(out).all() else math.nan


def _brute_force(agg, honest, byz, plain: str, factors, previous=None):
    """(best factor, its distance, distance of each factor) by forging with the plain attack at
    each factor and aggregating the full stack (first maximum on ties)."""
    key = "z" if plain == "alie" else "eps"
    dist = []
    for c in factors:
        up = honest.clone()
        ctx = ctx_of(honest, byz, previous=previous)
        up[byz] = make_attack(plain, scope="all", **{key: c}).forge(ctx)
        d = _distance(agg, up, byz)
        dist.append(-math.inf if math.isnan(d) else d)
    best = int(np.argmax(dist))
    return factors[best], dist[best], dist


@pytest.mark.parametrize("rule", [("trimmed_mean", {"f": 4}), ("krum", {"f": 4}), ("coordinate_median", {})])
def test_alie_opt_picks_the_argmax_of_its_grid_and_beats_plain_alie(rule):
    honest, byz = _honest_stack(), torch.arange(16, 20)
    agg = make_aggregator(rule[0], **rule[1])
    attack = make_attack("alie_opt", num=10)
    forged = attack.forge(ctx_of(honest, byz, aggregator=agg))  # the server's aggregator, from the context
    z_paper = float(ALittleIsEnoughAttack.paper_z(torch.tensor([20]), torch.tensor([4])))
    factors = sorted(set(attack.grid.tolist()) | {z_paper})
    assert attack.last_search[0]["candidates"].tolist() == factors
    best, best_dist, _ = _brute_force(agg, honest, byz, "alie", factors)
    assert attack.last_factors.tolist() == [best] * 4
    up = honest.clone()
    up[byz] = forged
    assert _distance(agg, up, byz) == pytest.approx(best_dist, rel=1e-12)
    _, _, plain = _brute_force(agg, honest, byz, "alie", [z_paper])
    assert best_dist >= plain[0]


@pytest.mark.parametrize("rule", [("trimmed_mean", {"f": 4}), ("krum", {"f": 4}), ("mean", {})])
def test_ipm_opt_picks_the_argmax_of_its_grid_and_beats_plain_ipm(rule):
    honest, byz = _honest_stack(seed=1), torch.arange(16, 20)
    previous = torch.full_like(honest, 0.5)
    agg = make_aggregator(rule[0], **rule[1])
    factors = [0.0, 0.05, 0.3, 1.0, 4.0, 20.0]
    attack = make_attack("ipm_opt", factors=factors)
    forged = attack.forge(ctx_of(honest, byz, previous=previous, aggregator=agg))
    cands = sorted(set(factors) | {0.1})
    best, best_dist, _ = _brute_force(agg, honest, byz, "ipm", cands, previous=previous)
    assert attack.last_factors.tolist() == [best] * 4
    up = honest.clone()
    up[byz] = forged
    assert _distance(agg, up, byz) == pytest.approx(best_dist, rel=1e-12)
    _, _, plain = _brute_force(agg, honest, byz, "ipm", [0.1], previous=previous)
    assert best_dist >= plain[0]
    if rule[0] == "mean":
        assert best == 20.0  # the mean moves without bound: the largest factor


def test_own_aggregator_model_wins_and_nonfinite_candidates_are_skipped():
    honest, byz = _honest_stack(n=10, d=5), torch.arange(8, 10)
    attack = make_attack("alie_opt", factors=[1.0, 2.0, 3.0], baseline=False, aggregator="mean")
    attack.forge(ctx_of(honest, byz, aggregator=lambda x: torch.full((x.shape[1],), math.nan)))
    assert attack.last_factors.tolist() == [3.0, 3.0]  # against its own model (the mean), not the context's

    calls = []

    def flaky(x):  # the aggregate is non-finite unless the forgery is the one of z = 2
        calls.append(1)
        return x.mean(0) if len(calls) == 2 else torch.full((x.shape[1],), math.inf)

    attack = make_attack("alie_opt", factors=[1.0, 2.0, 3.0], baseline=False)
    attack.forge(ctx_of(honest, byz, aggregator=flaky))
    assert len(calls) == 3 and attack.last_factors.tolist() == [2.0, 2.0]
    assert torch.isnan(attack.last_search[0]["distances"][[0, 2]]).all()

    # too few inputs for the modelled aggregator (Krum, f = 4, needs 11): the plain attack's z
    attack = make_attack("alie_opt", aggregator="krum", f=4)
    out = attack.forge(ctx_of(honest, byz))
    z = float(ALittleIsEnoughAttack.paper_z(torch.tensor([10]), torch.tensor([2])))
    assert attack.last_factors.tolist() == [z, z]
    assert torch.equal(out, make_attack("alie", scope="all").forge(ctx_of(honest, byz)))


def test_gossip_mode_needs_an_aggregator_and_searches_per_neighbourhood():
    # path 0 - 1 - 2 - 3 - 4, Byzantine 2 and 4: 2's group is {1, 2, 3}, 4's is {3, 4}
    honest = [[0.0, 1.0], [2.0, 3.0], [9.0, 9.0], [4.0, -1.0], [7.0, 7.0]]
    edges = undirected([(0, 1), (1, 2), (2, 3), (3, 4)], 5)
    with pytest.raises(ValueError, match="alie_opt attack: no aggregator.*parameter aggregator"):
        make_attack("alie_opt").forge(ctx_of(honest, [2, 4], edges=edges))
    attack = make_attack("alie_opt", aggregator="mean", factors=[0.5, 1.0, 2.0], baseline=False)
    out = attack.forge(ctx_of(honest, [2, 4], edges=edges))
    # 2: the mean moves furthest with the largest z; 4: its forgery is 3's model whatever z (sigma
    # 0), a tie at distance 0, which goes to the smallest factor
    assert attack.last_factors.tolist() == [2.0, 0.5]
    assert len(attack.last_search) == 2
    # agent 2: honest neighbours 1 and 3: mu = (3, 1), sigma = (1, 2); agent 4: only 3, sigma 0
    assert torch.equal(out, torch.tensor([[1.0, -3.0], [4.0, -1.0]], dtype=torch.float64))
    plain = make_attack("alie", z=2.0).forge(ctx_of(honest, [2, 4], edges=edges))
    assert torch.equal(out, plain)


def test_server_harnesses_pass_their_aggregator():
    from p2pmtl.engine.world import run_seeds
    from p2pmtl.server.linear import LinearServer

    cfg = load_config(data=_linear_server_dict({"name": "alie_opt", "num": 4}))
    srv = LinearServer(cfg, cfg.scenarios[0], ["fedavg+trimmed_mean", "fedavg"], run_seeds(0))
    seen = []

    class Recorder(Attack):
        """Test only."""

        def forge(self, ctx):
            seen.append(ctx.aggregator)
            return ctx.honest[ctx.byzantine]

    srv.round(0)
    assert all(a.last_factors is not None for a in srv.attacks)  # alie_opt ran against each lane's aggregator
    assert srv.attacks[1].last_factors[0] == srv.attacks[1].grid.max()  # the mean lane: the largest z
    srv.attacks = [Recorder(), Recorder()]
    srv.round(1)
    assert seen == srv.aggregators

    from p2pmtl.server.federated import Clients, FederatedRun, Method
    from p2pmtl.server.aggregation import build_aggregator

    data = {"mode": "server", "iterations": 1, "graph": {"family": "star", "n": 6},
            "task": {"name": "federated_images", "datasets": ["synthetic"], "synthetic_images": 100,
                     "train_per_client": 4, "test_per_client": 2, "batch_size": 4, "optimizer": "sgd", "lr": 0.05},
            "server": {"methods": ["fedavg+coordinate_median"], "alpha": 1.0, "tau_joint": 1, "f": 1,
                       "meta_test": {"clients": 0}},
            "output": {"window": 1, "figures": False}, "scenarios": [{"name": "a"}]}
    cfg = load_config(data=data)
    gen = torch.Generator().manual_seed(0)
    clients = [((torch.rand((4, 1, 8, 8), generator=gen), torch.randint(0, 10, (4,), generator=gen)),) * 2
               for _ in range(5)]
    clients = Clients(cfg.task, clients, 10, (1, 8, 8), init_seed=1)
    m = Method.parse("fedavg+coordinate_median")
    agg = build_aggregator(m, cfg.server, clients.rep_sizes, clients.all_sizes)
    run = FederatedRun(m, cfg.server, clients, agg, np.array([2]), Recorder(), seed=0)
    seen.clear()
    run.round(0)
    assert seen == [agg]


def test_alie_opt_in_a_server_config_runs(tmp_path):
    data = _linear_server_dict({"name": "alie_opt", "num": 5}, methods=("fedavg+krum",))
    data["server"]["f"] = 1
    run_experiment(load_config(data=data), tmp_path, progress=False, figures=False)
    res = json.loads((tmp_path / "summary.json").read_text())["results"]["attacked"]["fedavg+krum"]
    assert math.isfinite(res["msd"]["last_window_mean"]) and res["uploads_dropped_nonfinite"] == 0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name, params, words", [
    ("mimic", {"target": "last"}, ["target", "'last'", "'first'", "'max_variance'"]),
    ("inf", {"sign": 2}, ["sign", "2", "1, -1"]),
    ("inf", {"nan": "yes"}, ["nan", "'yes'", "true, false"]),
    ("alie_opt", {"scope": "world"}, ["scope", "'world'", "'neighbours'", "'all'"]),
    ("alie_opt", {"num": 0}, ["num", "0", "[1, 1000]"]),
    ("alie_opt", {"low": -1.0}, ["low", "-1.0", "(0, inf)"]),
    ("alie_opt", {"low": 5.0, "high": 1.0}, ["high", "1.0", "[5, inf)"]),
    ("alie_opt", {"factors": []}, ["factors", "[]", "a list of 1 to 1000 finite reals"]),
    ("ipm_opt", {"factors": [0.1, -1.0]}, ["factors", "-1.0", ">= 0"]),
    ("alie_opt", {"baseline": 1}, ["baseline", "1", "true, false"]),
    ("alie_opt", {"aggregator": "nope"}, ["aggregator", "'nope'", "krum", "trimmed_mean"]),
    ("alie_opt", {"aggregator": "krum"}, ["aggregator", "'krum'", "f"]),
    ("ipm_opt", {"f": 2}, ["f", "aggregator", "krum"]),
    ("ipm_opt", {"aggregator": "krum", "f": -1}, ["f", "-1", ">= 0"]),
    ("ipm_opt", {"aggregator": "mean", "pre": ["zzz"]}, ["pre", "zzz", "nnm"]),
    ("ipm_opt", {"aggregator": "centered_clipping"}, ["aggregator", "tau", "aggregator_params"]),
    ("ipm_opt", {"aggregator_params": {"tau": 1.0}}, ["aggregator_params", "aggregator"]),
    ("ipm_opt", {"aggregator": "krum", "aggregator_params": {"f": 1}}, ["aggregator_params", "f"]),
])
def test_parameters_are_validated(name, params, words):
    with pytest.raises(ValueError) as e:
        make_attack(name, **params)
    assert str(e.value).startswith(f"{name} attack:")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_config_checks_parameters_before_any_work():
    with pytest.raises(ConfigError, match="alie_opt attack: aggregator = 'krum'.*f"):
        load_config(data=_linear_server_dict({"name": "alie_opt", "aggregator": "krum"}))
    with pytest.raises(ConfigError, match="attack.zeta: not a parameter of attack 'mimic'; allowed: target"):
        load_config(data=_linear_server_dict({"name": "mimic", "zeta": 1}))
    load_config(data=_linear_server_dict({"name": "ipm_opt", "aggregator": "krum", "f": 2, "pre": ["nnm"]}))
    attack = make_attack("ipm_opt", aggregator="centered_clipping", aggregator_params={"tau": 1.0, "iters": 2})
    assert attack.model.tau == 1.0 and attack.model.iters == 2
