"""CNN agents: the fast path equals a naive per-agent, per-edge loop (float64, tiny case), and
a short digits run in which loss-based cooperation beats non-cooperation."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from p2pmtl.experiments.config import load_config
from p2pmtl.core.edges import EdgeIndex
from p2pmtl.core.messages import Messages
from p2pmtl.tasks.models import DigitCNN
from p2pmtl.engine.reference import naive_cnn_losses
from p2pmtl.tasks.digits import ImageClassification


def tiny_population(lanes=1, n=4, channels_last=True, share="model", init="per_agent"):
    gen = torch.Generator().manual_seed(0)

    def data(m):
        return torch.rand((m, 1, 28, 28), generator=gen, dtype=torch.float64), torch.randint(0, 10, (m,), generator=gen)

    setup = SimpleNamespace(group=np.array([0, 0, 1, 1][:n]), train=[data(12) for _ in range(n)],
                            test=[data(6) for _ in range(n)], image_shape=(1, 28, 28), num_classes=10)
    cfg = load_config(data={"graph": {"family": "complete", "n": n},
                            "task": {"name": "digits", "batch_size": 8, "score_batch": 5, "score_chunk": 3,
                                     "channels_last": channels_last, "share": share, "init": init}}).task
    import networkx as nx

    edges = EdgeIndex.from_graph(nx.complete_graph(n))
    pop = ImageClassification(cfg, [setup], [1], [2], edges, torch.tensor([], dtype=torch.long),
                              dtype=torch.float64, lanes=lanes)
    return pop, edges


def as_models(pop, rows):
    """Plain NCHW float64 modules holding the given flat parameter rows."""
    models = []
    for r in rows:
        m = DigitCNN().double()
        with torch.no_grad():
            for p, c in zip(m.parameters(), torch.split(r, pop.bank.sizes)):
                p.copy_(c.view(p.shape))
        models.append(m)
    return models


def test_fast_scoring_equals_naive_per_edge_loop_float64():
    pop, edges = tiny_population(lanes=2)
    pop.sample(0)
    psi = pop.adapt()
    sent = psi.clone()
    sent[1] = 0.05 * torch.randn(psi.shape[1], dtype=torch.float64)  # a forged row in lane 0
    lanes_edges = EdgeIndex.disjoint_union([edges, edges])
    msgs = Messages(sent, lanes_edges, 2, torch.tensor([1]))
    for lane in (0, 1):
        fast = pop.edge_losses(msgs, lane)
        rows = sent[lane * 4:(lane + 1) * 4]
        naive = naive_cnn_losses(as_models(pop, rows), [(x.contiguous(), y) for x, y in pop.batch],
                                 {k: list(range(4)) for k in range(4)}, 5)
        for e, (l, k) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())):
            assert float(fast[e]) == pytest.approx(naive[(l, k)], rel=1e-10, abs=1e-12)


def test_distances_and_combination_equal_naive_float64():
    pop, edges = tiny_population(lanes=1)
    theta_prev = pop.theta.clone()
    pop.sample(0)
    psi = pop.adapt()
    msgs = Messages(psi, edges, 1, torch.tensor([], dtype=torch.long))
    d = pop.edge_sq_dists(msgs, 0)
    for e, (l, k) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())):
        assert float(d[e]) == pytest.approx(float((theta_prev[k] - psi[l]).square().sum()), rel=1e-12)
    w = torch.rand(edges.num_edges, dtype=torch.float64)
    w = w / edges.segment_sum(w)[edges.dst]
    pop.combine(msgs, w)
    for k in range(4):
        expect = sum(w[e] * psi[l] for e, (l, kk) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())) if kk == k)
        assert torch.allclose(pop.theta[k], expect, rtol=1e-12, atol=1e-14)
        assert torch.allclose(pop.bank.flat_one(k), expect, rtol=1e-12, atol=1e-14)  # modules loaded


def test_non_finite_and_per_edge_forgeries_in_combination():
    pop, edges = tiny_population(lanes=1)
    pop.sample(0)
    psi = pop.adapt()
    sent = psi.clone()
    sent[3] = float("nan")
    over_edge = next(e for e, (l, k) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())) if (l, k) == (2, 0))
    value = torch.full((1, psi.shape[1]), 0.01, dtype=torch.float64)
    msgs = Messages(sent, edges, 1, torch.tensor([2, 3]), torch.tensor([over_edge]), value)
    assert msgs.valid is not None and not msgs.valid[edges.src == 3].any()
    w = torch.full((edges.num_edges,), 0.25, dtype=torch.float64)
    w[edges.src == 3] = 0.0
    pop.combine(msgs, w)
    expect = 0.25 * (psi[0] + psi[1] + value[0])  # node 0 hears 0, 1, forged 2 (per edge), not 3
    assert torch.allclose(pop.theta[0], expect)
    assert torch.isfinite(pop.theta[:3]).all()


def test_channels_last_gives_the_same_numbers():
    a, _ = tiny_population(channels_last=True)
    b, _ = tiny_population(channels_last=False)
    for pop in (a, b):
        pop.sample(0)
        pop.adapt()
    assert torch.allclose(a.bank.flat(), b.bank.flat(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attack", [None, {"name": "scaled", "factor": 0.1}])
def test_short_digits_run_loss_based_beats_noncooperation(tmp_path, attack):
    """4 agents (2 MNIST, 2 synthetic); agents 0 and 2 skip 3 of 4 local steps, so they need
    their same-task neighbour; optionally agent 3 is Byzantine."""
    from p2pmtl.experiments.runner import build_world, make_engine

    data = {
        "seed": 0, "iterations": 60,
        "graph": {"family": "complete", "n": 4},
        "task": {"name": "digits", "train_per_agent": 300, "test_per_agent": 100, "batch_size": 32,
                 "score_batch": 16, "skip_prob": [0.75, 0.0]},
        "rules": {"names": ["noncoop", "loss"], "nu": 0.05, "init_score": 1.0},
        "scenarios": [{"name": "s", "byzantine": [3] if attack else 0, **({"attack": attack} if attack else {})}],
    }
    cfg = load_config(data=data)
    world = build_world(cfg, cfg.scenarios[0])
    eng = make_engine(cfg, world, cfg.scenarios[0], cfg.rules.names)
    for i in range(cfg.iterations):
        eng.step(i)
    acc = eng.pop.metrics()["test_acc"].view(2, 4)
    normal = ~eng.is_byzantine
    noncoop, loss = acc[0][normal], acc[1][normal]
    assert loss.mean() > noncoop.mean() + 0.03, (noncoop, loss)
    starved = torch.tensor([0])  # MNIST agent that trains on a quarter of the steps
    assert (loss[starved] > noncoop[starved]).all()
    w = eng.lane_weights(1)
    e = world.edges
    if attack:  # the well-trained agent 1 filters the Byzantine agent out (a starved agent whose
        # own loss is still above the attacker's may keep it: the filter compares with itself)
        assert float(w[(e.src == 3) & (e.dst == 1)].sum()) == 0.0


def test_missing_dataset_path_is_a_clear_early_error(tmp_path, capsys):
    from p2pmtl.cli import main

    missing = tmp_path / "no_such_folder"
    code = main(["run", "experiments/digits.toml", "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", 'task.datasets=["mnist", "folder"]', "--set", f'task.data_root="{missing}"'])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert not (tmp_path / "run" / "metrics.csv").exists()  # nothing ran


def test_folder_dataset_needs_a_root():
    with pytest.raises(Exception, match="data_root"):
        load_config(data={"graph": {"family": "complete", "n": 4}, "task": {"name": "digits", "datasets": ["folder"]}})


def test_representation_mode_scores_with_the_receivers_head_and_keeps_heads_personal():
    pop, edges = tiny_population(share="representation")
    pop.sample(0)
    sent = pop.adapt()
    p_rep = pop.bank.rep_params
    assert sent.shape[1] == p_rep < pop.bank.num_params
    psi = pop.psi.clone()
    forged = sent.clone()
    forged[2] = 0.02 * torch.randn(p_rep, dtype=torch.float64)
    msgs = Messages(forged, edges, 1, torch.tensor([2]))
    fast = pop.edge_losses(msgs, 0)
    for e, (l, k) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())):
        m = as_models(pop, [torch.cat([forged[l], psi[k, p_rep:]])])[0]  # l's representation, k's head
        x, y = pop.batch[k][0][:5].contiguous(), pop.batch[k][1][:5]
        assert float(fast[e]) == pytest.approx(float(torch.nn.functional.cross_entropy(m(x), y)), rel=1e-10)
    w = torch.full((edges.num_edges,), 0.25, dtype=torch.float64)
    pop.combine(Messages(sent, edges, 1, torch.tensor([], dtype=torch.long)), w)
    assert torch.allclose(pop.theta[:, :p_rep], sent.mean(0).expand(4, -1))  # representations mixed
    assert torch.equal(pop.theta[:, p_rep:], psi[:, p_rep:])  # heads untouched
    assert pop.message_bytes == p_rep * 8


def test_shared_init_starts_every_agent_from_one_model():
    """task.init = "shared": every agent (and lane) starts from the same parameters; the
    default gives each agent its own (Li2020)."""
    own, _ = tiny_population(lanes=2)
    shared, _ = tiny_population(lanes=2, init="shared")
    assert not torch.equal(own.theta[0], own.theta[1])
    assert all(torch.equal(shared.theta[0], row) for row in shared.theta)
    assert torch.equal(shared.theta[0], own.theta[0])  # agent 0 keeps its draw
