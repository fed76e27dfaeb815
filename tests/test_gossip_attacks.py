"""The spectral heterogeneity attack (p2pmtl/robust/gossip_attacks.py): hand cases on small
graphs, the perturbation along the computed eigenvector, determinism, parameter checks."""
import math

import numpy as np
import pytest
import torch

import p2pmtl
from p2pmtl.core.edges import EdgeIndex
from p2pmtl.robust.attacks import AttackContext, make_attack
from p2pmtl.robust.gossip_attacks import fiedler_vector, honest_laplacian


def undirected(pairs, n):
    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    return EdgeIndex.from_arrays(np.array(src), np.array(dst), n)


def ctx_of(honest, byzantine, edges, runs=None):
    honest = torch.as_tensor(honest, dtype=torch.float64)
    n = honest.shape[0]
    run_of = torch.zeros(n, dtype=torch.long) if runs is None else torch.as_tensor(runs)
    gens = [torch.Generator().manual_seed(r) for r in range(int(run_of.max()) + 1)]
    return AttackContext(0, honest, torch.as_tensor(byzantine), run_of, gens, edges, None, None, 0)


def _path_with_byzantine_hub():
    """Honest path 0 - 1 - 2 - 3 and Byzantine node 4 linked to every honest node."""
    return undirected([(0, 1), (1, 2), (2, 3), (4, 0), (4, 1), (4, 2), (4, 3)], 5)


def test_docstring_worked_example_on_a_path():
    e = _path_with_byzantine_hub()
    psi = [[0.0], [1.0], [2.0], [3.0], [99.0]]
    ctx = ctx_of(psi, [4], e)
    attack = make_attack("spectral", eps=1.0, weights="unit")
    c = [math.cos(math.pi * (2 * i + 1) / 8) for i in range(4)]
    v = torch.tensor(c, dtype=torch.float64) / math.sqrt(sum(x * x for x in c))
    assert torch.allclose(attack.vector(ctx)[:4].abs(), v.abs(), atol=1e-12)
    assert attack.vector(ctx)[4] == 0
    byz_edges = torch.nonzero((e.src == 4) & (e.dst != 4)).flatten()
    out = attack.forge_edges(ctx, byz_edges)
    got = {int(e.dst[i]): float(out[j]) for j, i in enumerate(byz_edges)}
    proj = float(v @ torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    assert proj * float(v[0]) == pytest.approx(-1.457, abs=1e-3)  # the docstring's numbers
    for k in range(4):
        assert got[k] == pytest.approx(k + float(v[k]) * proj, abs=1e-12)
    assert got[0] == pytest.approx(-1.457, abs=1e-3) and got[3] == pytest.approx(4.457, abs=1e-3)
    assert torch.equal(attack.forge(ctx), torch.tensor([[99.0]], dtype=torch.float64))


def test_perturbation_is_along_the_honest_laplacians_eigenvector():
    """Random graph, Metropolis weights, 3-D models: m_bk - psi_k = eps v_k (v^T X_H), v a unit
    eigenvector of the honest Laplacian for its second-smallest eigenvalue, orthogonal to 1."""
    rng = np.random.default_rng(3)
    n = 12
    pairs = [(i, (i + 1) % n) for i in range(n)] + [tuple(rng.choice(n, 2, replace=False)) for _ in range(10)]
    e = undirected(pairs, n)
    byz = [2, 7]
    psi = torch.as_tensor(rng.normal(size=(n, 3)))
    ctx = ctx_of(psi, byz, e)
    attack = make_attack("spectral", eps=0.7)
    honest = torch.ones(n, dtype=torch.bool)
    honest[byz] = False
    nodes = torch.nonzero(honest).flatten()
    lap = honest_laplacian(e, honest, nodes, "metropolis")
    assert torch.allclose(lap, lap.T) and torch.allclose(lap.sum(1), torch.zeros(nodes.numel(), dtype=torch.float64))
    vals = torch.linalg.eigvalsh(lap)
    v = attack.vector(ctx)[nodes]
    assert float(v.norm()) == pytest.approx(1.0) and abs(float(v.sum())) < 1e-10
    assert torch.allclose(lap @ v, vals[1] * v, atol=1e-10)  # honest graph connected: lambda_2
    byz_edges = torch.nonzero(torch.isin(e.src, torch.tensor(byz)) & (e.src != e.dst)).flatten()
    out = attack.forge_edges(ctx, byz_edges)
    proj = v @ psi[nodes]
    for j, i in enumerate(byz_edges.tolist()):
        k = int(e.dst[i])
        if k in byz:
            assert torch.equal(out[j], psi[k])
        else:
            vk = float(attack.vector(ctx)[k])
            assert torch.allclose(out[j] - psi[k], 0.7 * vk * proj, atol=1e-12)


def test_metropolis_weights_use_whole_graph_degrees():
    e = _path_with_byzantine_hub()  # in-degrees without self: 0:2, 1:3, 2:3, 3:2
    honest = torch.tensor([True, True, True, True, False])
    lap = honest_laplacian(e, honest, torch.arange(4), "metropolis")
    assert lap[0, 1] == pytest.approx(-1 / 4) and lap[1, 2] == pytest.approx(-1 / 4) and lap[2, 3] == pytest.approx(-1 / 4)
    assert lap[0, 2] == 0


def test_two_honest_components_are_separated_and_runs_are_independent():
    # run 0: honest {0, 1} and {3, 4} joined only through Byzantine 2; run 1: a path 5 - 6 - 7
    e = undirected([(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7)], 8)
    psi = torch.arange(8, dtype=torch.float64).unsqueeze(1)
    ctx = ctx_of(psi, [2], e, runs=[0, 0, 0, 0, 0, 1, 1, 1])
    v = make_attack("spectral", weights="unit").vector(ctx)
    assert torch.allclose(v[[0, 1, 3, 4]].abs(), torch.full((4,), 0.5, dtype=torch.float64))
    assert float(v[0] * v[3]) < 0 and float(v[0] * v[1]) > 0
    assert torch.allclose(v[5:].abs(), torch.tensor([1, 0, 1], dtype=torch.float64) / math.sqrt(2), atol=1e-12)


def test_deterministic_and_one_honest_node_gets_its_own_model():
    e = _path_with_byzantine_hub()
    psi = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 4)))
    byz_edges = torch.nonzero((e.src == 4) & (e.dst != 4)).flatten()
    a = make_attack("spectral", eps=2.0).forge_edges(ctx_of(psi, [4], e), byz_edges)
    b = make_attack("spectral", eps=2.0).forge_edges(ctx_of(psi, [4], e), byz_edges)
    assert torch.equal(a, b)
    e2 = undirected([(0, 1)], 2)
    out = make_attack("spectral").forge_edges(ctx_of([[1.0], [5.0]], [1], e2), torch.nonzero((e2.src == 1) & (e2.dst != 1)).flatten())
    assert torch.equal(out, torch.tensor([[1.0]], dtype=torch.float64))


def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"spectral attack: eps = inf; allowed: a finite real"):
        make_attack("spectral", eps=math.inf)
    with pytest.raises(ValueError, match=r"spectral attack: weights = 'laplace'; allowed: 'metropolis', 'unit'"):
        make_attack("spectral", weights="laplace")
    cfg = {"graph": {"family": "ring", "n": 8}, "rules": {"names": ["average"]},
           "scenarios": [{"name": "s", "byzantine": 1, "attack": {"name": "spectral", "eps": "big"}}]}
    with pytest.raises(p2pmtl.ConfigError, match="spectral attack: eps = 'big'"):
        p2pmtl.load_config(cfg)
    server = {"name": "s", "mode": "server", "graph": {"family": "star", "n": 5}, "server": {"alpha": 1.0},
              "task": {"name": "federated_images", "datasets": ["mnist"]},
              "scenarios": [{"name": "x", "byzantine": 1, "attack": {"name": "spectral"}}]}
    with pytest.raises(p2pmtl.ConfigError, match="spectral.*gossip mode only"):
        p2pmtl.load_config(server)


def test_spectral_attack_runs_as_a_scenario_beside_the_robust_rules():
    res = p2pmtl.run({"name": "sp", "iterations": 40, "graph": {"family": "ring", "n": 12},
                      "rules": {"names": ["average", "loss", "cs_plus"]}, "output": {"window": 10},
                      "scenarios": [{"name": "none", "byzantine": 0},
                                    {"name": "spectral", "byzantine": [3, 9],
                                     "attack": {"name": "spectral", "eps": 2.0}}]})
    msd = res.table("msd")
    assert msd.shape == (2, 3) and np.isfinite(msd.to_numpy()).all()
