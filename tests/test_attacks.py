"""The attack library: exact outputs on small hand cases, and the behaviour that matters."""
import math

import numpy as np
import pytest
import torch

from p2pmtl.robust.attacks import ATTACKS, Attack, AttackContext, make_attack
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.core.edges import EdgeIndex
from p2pmtl.experiments.runner import build_world, make_engine


def ctx_of(honest, byzantine, edges=None, previous=None, population=None, runs=None, seed=0):
    honest = torch.as_tensor(honest, dtype=torch.float64)
    n = honest.shape[0]
    run_of = torch.zeros(n, dtype=torch.long) if runs is None else torch.as_tensor(runs)
    gens = [torch.Generator().manual_seed(seed + r) for r in range(int(run_of.max()) + 1)]
    prev = None if previous is None else torch.as_tensor(previous, dtype=torch.float64)
    return AttackContext(0, honest, torch.as_tensor(byzantine), run_of, gens, edges, prev, population, 0)


def undirected(pairs, n):
    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    return EdgeIndex.from_arrays(np.array(src), np.array(dst), n)


# ---------------------------------------------------------------- hand cases, one per attack


def test_uniform_draws_from_each_runs_generator():
    ctx = ctx_of(torch.zeros(4, 3), [1, 3], runs=[0, 0, 1, 1], seed=5)
    out = make_attack("uniform", low=2.0, high=4.0, redraw="once").forge(ctx)
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    expect = torch.cat([2 + 2 * torch.rand((1, 3), generator=g0, dtype=torch.float64),
                        2 + 2 * torch.rand((1, 3), generator=g1, dtype=torch.float64)])
    assert torch.equal(out, expect)


def test_uniform_once_keeps_each_clients_vector_under_partial_participation(tmp_path):
    """Server mode, half the clients per round: the Byzantine rows change from round to round;
    each Byzantine client sends the vector drawn the first round it was picked (by its id), and
    a whole run goes through (it failed on a shape mismatch before)."""
    attack = make_attack("uniform", low=2.0, high=4.0, redraw="once")
    gen = torch.Generator().manual_seed(3)

    def round_of(ids):
        rows = torch.arange(len(ids))
        ctx = AttackContext(0, torch.zeros(len(ids), 2, dtype=torch.float64), rows, torch.zeros(len(ids), dtype=torch.long),
                            [gen], None, ids=torch.tensor(ids))
        return {i: v for i, v in zip(ids, attack.forge(ctx))}

    first, second, third = round_of([4, 7]), round_of([7]), round_of([2, 4, 7])
    assert torch.equal(second[7], first[7]) and torch.equal(third[4], first[4]) and torch.equal(third[7], first[7])
    expect = 2 + 2 * torch.rand((2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(torch.stack([first[4], first[7]]), expect)  # the first round: one draw, rows in order
    assert not torch.equal(third[2], first[4]) and ((third[2] >= 2) & (third[2] < 4)).all()

    import p2pmtl

    res = p2pmtl.run({"name": "partial", "mode": "server", "iterations": 12, "graph": {"family": "star", "n": 21},
                      "server": {"alpha": 0.5, "methods": ["fedavg", "fedavg+gm"]},
                      "scenarios": [{"name": "u", "byzantine": 4, "attack": {"name": "uniform", "redraw": "once"}}],
                      "output": {"figures": False}}, out=tmp_path / "run", progress=False)
    assert res.summary["status"] == "finished"


def test_scaled_gaussian_and_sign_flip_by_hand():
    honest = [[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]]
    ctx = ctx_of(honest, [1])
    assert torch.equal(make_attack("scaled", factor=0.5, random=False).forge(ctx), torch.tensor([[1.5, -2.0]], dtype=torch.float64))
    assert torch.equal(make_attack("sign_flip").forge(ctx), torch.tensor([[-3.0, 4.0]], dtype=torch.float64))
    assert torch.equal(make_attack("sign_flip", scale=2.0).forge(ctx), torch.tensor([[-6.0, 8.0]], dtype=torch.float64))
    assert torch.equal(make_attack("gaussian", sigma=0.0).forge(ctx), torch.tensor([[3.0, -4.0]], dtype=torch.float64))
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(make_attack("gaussian", sigma=2.0).forge(ctx_of(honest, [1])), torch.tensor([[3.0, -4.0]]) + 2 * noise)


def test_alie_paper_z_and_hand_case():
    z = make_attack("alie").paper_z
    # the paper's example: n = 50 workers, f = 24 corrupted -> s = 2, z = Phi^-1(48/50) = 1.75
    assert float(z(torch.tensor([50]), torch.tensor([24]))) == pytest.approx(1.7507, abs=1e-4)
    # scope all: honest values 0, 2, 4, 6 (mean 3, std sqrt 5); n = 5, f = 1 -> s = 2, z = Phi^-1(3/5)
    honest = [[0.0], [2.0], [4.0], [6.0], [100.0]]
    out = make_attack("alie", scope="all").forge(ctx_of(honest, [4]))
    z35 = 0.2533471031357997
    assert float(out) == pytest.approx(3 - z35 * math.sqrt(5), abs=1e-12)
    assert float(make_attack("alie", scope="all", z=1.0).forge(ctx_of(honest, [4]))) == pytest.approx(3 - math.sqrt(5))
    # neighbours: 4 talks to 0 and 1 only (values 0, 2: mean 1, std 1); n = 3, f = 1 -> z = Phi^-1(2/3)
    edges = undirected([(4, 0), (4, 1), (1, 2), (2, 3)], 5)
    out = make_attack("alie").forge(ctx_of(honest, [4], edges=edges))
    assert float(out) == pytest.approx(1 - 0.4307272992954576, abs=1e-12)


def test_ipm_by_hand():
    honest = [[2.0, 0.0], [4.0, 2.0], [9.0, 9.0]]
    prev = [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    # r = mean prev = (1, 0); mean psi = (3, 1); m = r - 0.5 (mean psi - r) = (0, -0.5)
    out = make_attack("ipm", eps=0.5, scope="all").forge(ctx_of(honest, [2], previous=prev))
    assert torch.allclose(out, torch.tensor([[0.0, -0.5]], dtype=torch.float64))
    # without previous models: Xie et al. literally, -eps * mean honest
    out = make_attack("ipm", eps=0.5, scope="all").forge(ctx_of(honest, [2]))
    assert torch.allclose(out, torch.tensor([[-1.5, -0.5]], dtype=torch.float64))


def test_dissensus_by_hand():
    # path 0 - 1 - 2 with 2 Byzantine: receiver 1 has honest neighbour 0 (psi 0) and psi_1 = 1
    edges = undirected([(0, 1), (1, 2)], 3)
    honest = [[0.0], [1.0], [5.0]]
    attack = make_attack("dissensus", eps=1.0)
    ctx = ctx_of(honest, [2], edges=edges)
    byz_edges = torch.nonzero((edges.src == 2) & (edges.dst != 2)).flatten()
    out = attack.forge_edges(ctx, byz_edges)
    assert torch.equal(out, torch.tensor([[2.0]], dtype=torch.float64))  # 1 - 1 * (0 - 1)
    # under averaging at node 1, eps = 1 cancels the pull of the honest neighbour: (0 + 1 + 2) / 3 = 1


class QuadraticPopulation:
    """losses_of(w, k) = ||w - a_k||^2 (a stand-in with a known loss)."""

    def __init__(self, a):
        self.a = torch.as_tensor(a, dtype=torch.float64)

    def losses_of(self, values, receivers, lane=0):
        return ((values - self.a[receivers]) ** 2).sum(1)

    def loss_grads_of(self, values, receivers, lane=0):
        return 2 * (values - self.a[receivers])


def test_adaptive_loss_by_hand():
    """Receiver 0 holds psi = 1, data a = 0 (loss 1); attacker 1 pulls to T = -10: m(t) = 1 - 11 t
    passes while t <= 2/11, so the largest grid step is t = 1/8: m = -0.375 (loss 0.14 <= 1)."""
    edges = undirected([(0, 1)], 2)
    attack = make_attack("adaptive_loss", target="uniform", low=-10.0, high=-10.0, steps=8)
    ctx = ctx_of([[1.0], [7.0]], [1], edges=edges, population=QuadraticPopulation([[0.0], [0.0]]))
    assert torch.equal(attack.forge(ctx), torch.tensor([[-10.0]], dtype=torch.float64))
    byz_edges = torch.nonzero(edges.src == 1).flatten()
    byz_edges = byz_edges[edges.dst[byz_edges] != 1]
    out = attack.forge_edges(ctx, byz_edges)
    assert torch.equal(out, torch.tensor([[-0.375]], dtype=torch.float64))
    assert float(attack.last_t[0]) == 0.125
    # a target no step can reach without raising the loss: the attacker sends the victim's own model
    attack = make_attack("adaptive_loss", target="uniform", low=10.0, high=10.0, steps=8)
    assert torch.equal(attack.forge_edges(ctx, byz_edges), torch.tensor([[1.0]], dtype=torch.float64))


def test_two_faced_per_edge_messages():
    """Star: Byzantine hub 0 and leaves 1..6. Each leaf gets psi_0 or U[15, 16] values, the split
    fixed across steps, the forged values fresh each step."""
    edges = undirected([(0, k) for k in range(1, 7)], 7)
    honest = torch.arange(14, dtype=torch.float64).view(7, 2)
    attack = make_attack("two_faced", honest_fraction=0.5)
    ctx = ctx_of(honest, [0], edges=edges, seed=3)
    byz_edges = torch.nonzero((edges.src == 0) & (edges.dst != 0)).flatten()
    assert torch.equal(attack.forge(ctx), honest[:1])
    first = attack.forge_edges(ctx, byz_edges)
    honest_rows = (first == honest[0]).all(1)
    assert 0 < int(honest_rows.sum()) < 6  # both kinds of receivers (seed 3)
    assert ((first[~honest_rows] >= 15) & (first[~honest_rows] <= 16)).all()
    second = attack.forge_edges(ctx, byz_edges)
    assert torch.equal((second == honest[0]).all(1), honest_rows)
    assert not torch.equal(second[~honest_rows], first[~honest_rows])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name, params, words", [
    ("alie", {"scope": "everyone"}, ["scope", "everyone", "neighbours"]),
    ("alie", {"z": float("nan")}, ["z", "finite"]),
    ("ipm", {"eps": -1.0}, ["eps", "-1", "[0, inf)"]),
    ("sign_flip", {"scale": 0.0}, ["scale", "(0, inf)"]),
    ("two_faced", {"honest_fraction": 1.5}, ["honest_fraction", "[0, 1]"]),
    ("adaptive_loss", {"steps": 0}, ["steps", "[1, 60]"]),
    ("adaptive_loss", {"target": "moon"}, ["target", "uniform", "zero"]),
    ("label_flip", {"flip": "upside"}, ["flip", "reverse", "shift"]),
    ("gaussian", {"sigma": -1.0}, ["sigma", "[0, inf)"]),
])
def test_hyper_parameters_are_validated(name, params, words):
    with pytest.raises(ValueError) as e:
        make_attack(name, **params)
    for w in words:
        assert w in str(e.value)


def test_config_names_unknown_attack_parameters(tiny_dict):
    tiny_dict["scenarios"][1]["attack"] = {"name": "alie", "zeta": 1.0}
    with pytest.raises(ConfigError, match="zeta.*allowed: z, scope"):
        load_config(data=tiny_dict)


def test_every_attack_documents_formula_source_and_knowledge():
    for name, _ in ATTACKS.describe():
        cls = ATTACKS.get(name)
        assert cls.__doc__ and len(cls.__doc__) > 150 and cls.knows != "", name


# ---------------------------------------------------------------- plumbing and behaviour


class ReceiverIdAttack(Attack):
    """Test attack: sends receiver k the constant vector k (and 100 as its broadcast row)."""

    def forge(self, ctx):
        return torch.full((ctx.byzantine.numel(), ctx.honest.shape[1]), 100.0, dtype=ctx.honest.dtype)

    def forge_edges(self, ctx, byz_edges):
        k = ctx.edges.dst[byz_edges].to(ctx.honest.dtype)
        return k.unsqueeze(1).expand(-1, ctx.honest.shape[1]).clone()


def test_per_neighbour_messages_reach_the_right_neighbours(tiny_dict):
    """With uniform averaging, every normal receiver's new model is the mean of its honest
    neighbours' messages and, from each Byzantine neighbour, exactly the value meant for it."""
    cfg = load_config(data=tiny_dict)
    sc = cfg.scenarios[1]
    world = build_world(cfg, sc)
    eng = make_engine(cfg, world, sc, ["average"])
    eng.attacks = [ReceiverIdAttack()]
    pop = eng.pop
    eng.step(0)
    psi = eng.sent  # broadcast rows: honest models, 100 for the Byzantine agents
    assert (psi[eng.byzantine] == 100).all()
    e, byz = world.edges, eng.is_byzantine
    for k in torch.nonzero(~byz).flatten().tolist():
        senders = e.src[e.dst == k]
        msgs = [torch.full((2,), float(k), dtype=psi.dtype) if byz[l] and l != k else psi[l] for l in senders.tolist()]
        assert torch.allclose(pop.theta[k], torch.stack(msgs).mean(0)), k


def test_adaptive_attack_passes_the_loss_filter_and_pulls(tiny_dict):
    """Target localization, loss rule: every Byzantine -> normal edge keeps positive weight (the
    attacker is never filtered), every forged loss is at most the receiver's own, and the
    projected attacker moves the normal agents towards its target."""
    tiny_dict["iterations"] = 60
    tiny_dict["scenarios"][1]["attack"] = {"name": "adaptive_loss", "project": True, "low": 15.0, "high": 16.0}
    cfg = load_config(data=tiny_dict)
    sc = cfg.scenarios[1]
    world = build_world(cfg, sc)
    eng = make_engine(cfg, world, sc, ["loss", "noncoop"])
    e, byz = world.edges, eng.is_byzantine
    to_normal = byz[e.src] & ~byz[e.dst] & (e.src != e.dst)
    assert to_normal.any()
    for i in range(60):
        eng.step(i)
        assert (eng.lane_weights(0)[to_normal] > 0).all(), i
        assert (eng.attacks[0].last_t > 0).any()
    # pulled: normal agents that hear an attacker end further from their targets than alone
    err = ((eng.pop.theta.view(2, -1, 2) - eng.pop.wstar) ** 2).sum(-1)
    victims = torch.zeros_like(byz)
    victims[e.dst[to_normal]] = True
    assert err[0][victims].mean() > 2 * err[1][victims].mean()


def test_uniform_values_are_filtered_but_adaptive_ones_are_not(tiny_dict):
    """The contrast that matters for Li2020's guarantee: U[15, 16] messages get zero weight from
    the loss rule, the adaptive attacker's messages get weight."""
    weights = {}
    for name in ("uniform", "adaptive_loss"):
        tiny_dict["scenarios"][1]["attack"] = {"name": name}
        cfg = load_config(data=tiny_dict)
        sc = cfg.scenarios[1]
        world = build_world(cfg, sc)
        eng = make_engine(cfg, world, sc, ["loss"])
        for i in range(40):
            eng.step(i)
        e, byz = world.edges, eng.is_byzantine
        weights[name] = float(eng.weights[byz[e.src] & ~byz[e.dst]].sum())
    assert weights["uniform"] == 0.0 and weights["adaptive_loss"] > 0.1, weights


def test_alie_passes_krum_and_gm_while_noise_does_not():
    """Baruch et al.'s point: 20 uploads, 4 Byzantine. Far Gaussian noise is ignored by Krum and
    the geometric median; ALIE's vectors are chosen by Krum and move GM further than noise does."""
    from p2pmtl.robust.aggregators import make_aggregator

    g = torch.Generator().manual_seed(0)
    honest = 1.0 + torch.randn((20, 50), generator=g, dtype=torch.float64)
    byz = torch.arange(16, 20)
    truth = honest[:16].mean(0)
    krum, gm = make_aggregator("krum", f=4), make_aggregator("geometric_median")
    shift = {}
    for name, params in [("gaussian", {"sigma": 30.0}), ("alie", {"scope": "all"})]:
        up = honest.clone()
        ctx = AttackContext(0, up, byz, torch.zeros(20, dtype=torch.long), [torch.Generator().manual_seed(1)], None)
        up[byz] = make_attack(name, **params).forge(ctx)
        chosen = int(torch.nonzero((up == krum(up)).all(1)).flatten()[0])
        shift[name] = (chosen in byz.tolist(), float((gm(up) - truth).norm()))
    assert shift["gaussian"][0] is False and shift["alie"][0] is True, shift
    assert shift["alie"][1] > shift["gaussian"][1], shift


# ---------------------------------------------------------------- label flipping


def test_label_flip_changes_only_the_byzantine_agents_labels():
    data = {"name": "t", "iterations": 2, "graph": {"family": "complete", "n": 4},
            "task": {"name": "digits", "datasets": ["synthetic"], "train_per_agent": 12, "test_per_agent": 4,
                     "batch_size": 4, "score_batch": 4},
            "rules": {"names": ["loss"], "init_score": 1.0},
            "scenarios": [{"name": "s", "byzantine": [1, 3], "attack": {"name": "label_flip"}}]}
    cfg = load_config(data=data)
    sc = cfg.scenarios[0]
    world = build_world(cfg, sc)
    before = [y.clone() for s in world.setups for _, y in s.train]
    eng = make_engine(cfg, world, sc, ["loss", "average"])  # two lanes: flipped once, not twice
    flipped_first = [y.clone() for y in eng.pop.train_y]  # already before the first local step
    assert not eng.pop.frozen.any()  # Byzantine agents train (on flipped labels)
    eng.step(0)
    eng.step(1)
    after = eng.pop.train_y
    for k in range(4):
        assert torch.equal(flipped_first[k], after[k])
        if k in (1, 3):
            assert torch.equal(after[k], 9 - before[k])
        else:
            assert torch.equal(after[k], before[k])
    sent = eng.sent[eng.byzantine]
    assert torch.equal(sent, eng.pop.psi[eng.byzantine])  # and send their model honestly


def test_label_flip_shift_and_unsupported_task(tiny_dict):
    attack = make_attack("label_flip", flip="shift", shift=3)
    assert torch.equal(attack.relabel(torch.tensor([0, 5, 9]), 10), torch.tensor([3, 8, 2]))
    tiny_dict["scenarios"][1]["attack"] = {"name": "label_flip"}
    with pytest.raises(ConfigError, match="label_flip.*does not apply to task 'target_localization'"):
        load_config(data=tiny_dict)  # refused before any work
    tiny_dict["scenarios"][1]["attack"] = {"name": "uniform"}
    cfg = load_config(data=tiny_dict)
    sc = cfg.scenarios[1]
    eng = make_engine(cfg, build_world(cfg, sc), sc, ["loss"])
    with pytest.raises(ValueError, match="no labels to flip"):  # and at run time, used directly
        attack.setup(eng.pop, eng.byzantine)


def test_gossip_only_attacks_are_refused_in_server_mode():
    data = {"name": "s", "mode": "server", "graph": {"family": "star", "n": 5}, "server": {"alpha": 1.0},
            "task": {"name": "federated_images", "datasets": ["mnist"]},
            "scenarios": [{"name": "x", "byzantine": 1, "attack": {"name": "dissensus"}}]}
    with pytest.raises(ConfigError, match="dissensus.*gossip mode only"):
        load_config(data=data)


def test_label_flip_in_server_mode_flips_only_byzantine_clients():
    class Clients:
        num_classes = 10
        train = [(torch.zeros(2), torch.tensor([0, 1])), (torch.zeros(2), torch.tensor([2, 3])),
                 (torch.zeros(2), torch.tensor([4, 9]))]

    c = Clients()
    make_attack("label_flip").setup(c, torch.tensor([1]))
    assert [y.tolist() for _, y in c.train] == [[0, 1], [7, 6], [4, 9]]
