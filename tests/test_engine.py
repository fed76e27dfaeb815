"""The batched engine against the plain per-agent reference, and its invariances."""
import numpy as np
import pytest
import torch

from p2pmtl.robust.attacks import Attack
from p2pmtl.experiments.config import load_config
from p2pmtl.engine.gossip import GossipEngine
from p2pmtl.experiments.runner import build_world, make_engine
from p2pmtl.engine.reference import ReferenceDiffusion
from p2pmtl.rules.weights import make_rule
from p2pmtl.tasks.target_localization import TargetLocalization

RULES = ["noncoop", "average", "loss", "distance"]


def neighbour_lists(edges, n):
    neigh = [[] for _ in range(n)]
    for s, d in zip(edges.src.tolist(), edges.dst.tolist()):
        neigh[d].append(s)
    return neigh


@pytest.mark.parametrize("adapt", ["pseudo_observation", "lms"])
@pytest.mark.parametrize("rule", RULES)
def test_batched_engine_equals_per_agent_reference(tiny_dict, rule, adapt):
    tiny_dict["task"] = {"adapt": adapt, "mu": 0.1}
    tiny_dict["rules"]["nu"] = 0.3
    cfg = load_config(data=tiny_dict)
    scenario = cfg.scenarios[1]  # 4 Byzantine agents
    world = build_world(cfg, scenario)
    eng = make_engine(cfg, world, scenario, [rule])
    s = world.setups[0]
    byz = set(world.byzantine.tolist())
    ref = ReferenceDiffusion(rule, s.pos, neighbour_lists(world.edges, world.n), byz, s.theta0,
                             cfg.task.mu, cfg.rules.nu, cfg.rules.init_score, adapt=adapt)
    normal = [k for k in range(world.n) if k not in byz]
    for i in range(8):
        eng.step(i)
        sent = eng.sent.numpy()
        ref.step(eng.pop.u.numpy(), eng.pop.d.numpy(), {k: sent[k] for k in byz})
        np.testing.assert_allclose(eng.pop.theta.numpy()[normal], ref.w[normal], rtol=1e-12, atol=1e-12)
    dense = world.edges.dense(eng.lane_weights(0)).numpy().T  # [k, l] = a_lk
    np.testing.assert_allclose(dense[normal], ref.weights[normal], rtol=1e-12, atol=1e-12)


def test_lanes_equal_separate_engines(tiny_dict):
    cfg = load_config(data=tiny_dict)
    scenario = cfg.scenarios[1]
    world = build_world(cfg, scenario)
    lanes = make_engine(cfg, world, scenario, RULES)
    singles = [make_engine(cfg, world, scenario, [r]) for r in RULES]
    for i in range(15):
        lanes.step(i)
        for e in singles:
            e.step(i)
    for j, e in enumerate(singles):
        assert torch.equal(lanes.lane_values(lanes.pop.theta, j), e.pop.theta)


def test_a_run_does_not_depend_on_what_it_is_batched_with(tiny_dict):
    batched = load_config(data=tiny_dict, overrides=["runs=3", "seed=5"])
    alone = load_config(data=tiny_dict, overrides=["runs=1", "seed=7"])
    sc = batched.scenarios[1]
    wb, wa = build_world(batched, sc), build_world(alone, sc)
    eb, ea = make_engine(batched, wb, sc, ["loss"]), make_engine(alone, wa, sc, ["loss"])
    for i in range(10):
        eb.step(i)
        ea.step(i)
    n = wa.n
    assert torch.equal(eb.pop.theta[2 * n: 3 * n], ea.pop.theta)  # run index 2 = seed 7


class NaNAttack(Attack):
    """Test attacker: sends NaN and inf coordinates."""

    def forge(self, ctx):
        out = torch.full((ctx.byzantine.numel(), ctx.honest.shape[1]), float("nan"), dtype=ctx.honest.dtype)
        out[::2, 0] = float("inf")
        return out


@pytest.mark.parametrize("rule", RULES)
def test_non_finite_messages_never_produce_nan(tiny_dict, rule):
    cfg = load_config(data=tiny_dict)
    scenario = cfg.scenarios[1]
    world = build_world(cfg, scenario)
    pop = TargetLocalization(cfg.task, world.setups, [s["data"] for s in world.seeds], world.edges)
    eng = GossipEngine(pop, world.edges, [make_rule(rule, nu=0.1, init_score=10.0)], world.byzantine,
                       [NaNAttack()], [0], world.run_of_node)
    for i in range(20):
        eng.step(i)
    normal = ~eng.is_byzantine
    assert torch.isfinite(pop.theta[normal]).all()
    assert torch.isfinite(eng.weights).all()
    e = world.edges
    from_byz_to_normal = eng.is_byzantine[e.src] & ~eng.is_byzantine[e.dst]
    assert (eng.weights[from_byz_to_normal] == 0).all()


def test_same_seed_same_numbers(tiny_dict):
    def final(cfg_dict):
        cfg = load_config(data=cfg_dict)
        sc = cfg.scenarios[1]
        eng = make_engine(cfg, build_world(cfg, sc), sc, RULES)
        for i in range(20):
            eng.step(i)
        return eng.pop.theta.clone()

    assert torch.equal(final(tiny_dict), final(tiny_dict))
    other = dict(tiny_dict, seed=1)
    assert not torch.equal(final(tiny_dict), final(other))


def test_uniform_attack_once_vs_every_step(tiny_dict):
    for redraw, same in [("once", True), ("every_step", False)]:
        tiny_dict["scenarios"][1]["attack"]["redraw"] = redraw
        cfg = load_config(data=tiny_dict)
        sc = cfg.scenarios[1]
        eng = make_engine(cfg, build_world(cfg, sc), sc, ["average"])
        eng.step(0)
        first = eng.sent[eng.byzantine].clone()
        eng.step(1)
        assert torch.equal(first, eng.sent[eng.byzantine]) == same
        assert ((first >= 15) & (first <= 16)).all()
