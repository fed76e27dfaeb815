"""Distributed SGD with momentum in server mode (``dsgd`` methods; RESAM, Farhadkhani et al. 2022):
the method-name grammar, the momentum maths on a hand case, exact identities with the existing
FedAvg path (one local SGD step averaged == one server step on the averaged gradient), worker
momentum == server momentum under the mean, batched (vmap) == per-worker gradients, the
image harness against a hand-computed step, and resilience against a far-value attack."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import p2pmtl
from p2pmtl.engine.world import run_seeds
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.server.aggregation import build_aggregator
from p2pmtl.server.config import parse_dsgd
from p2pmtl.server.dsgd import DSGDRun
from p2pmtl.server.federated import Clients, Method
from p2pmtl.server.linear import LinearServer
from p2pmtl.server.momentum import DistributedMomentum


# --------------------------------------------------------------------------- names and maths


@pytest.mark.parametrize("token, expected", [
    ("dsgd", (None, None)), ("dsgd-worker", ("worker", None)), ("dsgd-worker0.9", ("worker", 0.9)),
    ("dsgd-server0.99", ("server", 0.99)), ("dsgd-none", ("none", None)), ("dsgd-worker0", ("worker", 0.0)),
    ("fedavg", None),
])
def test_dsgd_tokens(token, expected):
    assert parse_dsgd(token) == expected


@pytest.mark.parametrize("method, needle", [
    ("dsgd-worker1.5+mean", "beta = 1.5"), ("dsgd-none0.9+mean", "no momentum"), ("dsgd-sideways+mean", "dsgd forms"),
])
def test_bad_dsgd_methods_are_config_errors(method, needle):
    with pytest.raises(ConfigError) as e:
        load_config(data=_linear_dict([method]))
    assert "server.methods" in str(e.value) and needle in str(e.value)


def test_momentum_hand_case():
    """beta = 0.5, one worker, gradients 2 then 4, gamma = 1: m = 1, then 0.5 + 2 = 2.5, so
    theta goes 0 -> -1 -> -3.5 (worker and server placement agree with one worker); no
    momentum: 0 -> -2 -> -6."""
    for placement, expected in (("worker", [-1.0, -3.5]), ("server", [-1.0, -3.5]), ("none", [-2.0, -6.0])):
        mom = DistributedMomentum(placement, 0.5 if placement != "none" else 0.0, 1, 1, torch.float64)
        theta = torch.zeros(1, dtype=torch.float64)
        seen = []
        for g in (2.0, 4.0):
            up = mom.uploads(torch.tensor([0]), torch.tensor([[g]], dtype=torch.float64))
            theta = mom.step(theta, up.mean(0), 1.0)
            seen.append(float(theta))
        assert seen == expected, placement
    with pytest.raises(ValueError, match="allowed: worker, server, none"):
        DistributedMomentum("both", 0.5, 1, 1, torch.float64)


def test_worker_momentum_of_unpicked_workers_stays():
    mom = DistributedMomentum("worker", 0.5, 3, 1, torch.float64)
    mom.uploads(torch.tensor([0, 2]), torch.tensor([[2.0], [4.0]], dtype=torch.float64))
    mom.uploads(torch.tensor([2]), torch.tensor([[0.0]], dtype=torch.float64))
    assert mom.worker.flatten().tolist() == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- linear tasks


def _linear_dict(methods, byzantine=0, attack=None, adapt="lms", **server) -> dict:
    scen = {"name": "s", "byzantine": byzantine}
    if attack:
        scen["attack"] = attack
    return {"name": "tl_dsgd", "mode": "server", "iterations": 5, "graph": {"family": "star", "n": 13},
            "task": {"name": "target_localization", "adapt": adapt, "mu": 0.1},
            "server": {"methods": methods, "alpha": 1.0, "f": 2, **server},
            "output": {"window": 2, "figures": False}, "scenarios": [scen]}


def _lanes(methods, rounds=20, **kw) -> torch.Tensor:
    cfg = load_config(data=_linear_dict(methods, **kw))
    srv = LinearServer(cfg, cfg.scenarios[0], methods, run_seeds(0))
    for t in range(rounds):
        srv.round(t)
    return srv.pop.theta.view(srv.m, srv.n, -1)[:, 0]


@pytest.mark.parametrize("adapt", ["lms", "pseudo_observation"])
def test_dsgd_without_momentum_equals_fedavg_of_one_local_step(adapt):
    """A local step is theta - mu g, so the mean of the clients' local steps equals one server
    step theta - gamma mean(g) when gamma = mu: fedavg+mean and dsgd-none+mean agree."""
    models = _lanes(["fedavg", "dsgd-none+mean"], adapt=adapt, lr=0.1)
    assert torch.allclose(models[0], models[1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(models[0], _lanes(["fedavg"], adapt=adapt, rounds=0)[0])  # it moved


def test_worker_and_server_momentum_agree_under_the_mean():
    """With every worker every round, the mean of the momenta is the momentum of the means."""
    models = _lanes(["dsgd-worker0.7+mean", "dsgd-server0.7+mean", "dsgd-worker0+mean", "dsgd-none+mean"])
    assert torch.allclose(models[0], models[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(models[2], models[3], rtol=0, atol=0)  # beta = 0 is no momentum
    assert not torch.allclose(models[0], models[3])


def test_dsgd_lanes_resist_a_far_attack_with_a_robust_aggregator():
    """Sign flipping at scale 100 by 3 of 12 workers: the mean is thrown 1e7 away from the clean
    run, the trimmed mean (f = 3) stays within a few units (the 9 honest workers' own optimum
    differs from the 12 workers' one: this is a multi-task problem)."""
    attack = {"name": "sign_flip", "scale": 100.0}
    methods = ["dsgd-worker0.9+mean", "dsgd-worker0.9+trimmed_mean"]
    clean = _lanes(methods, rounds=30, f=3)
    hit = _lanes(methods, rounds=30, f=3, byzantine=3, attack=attack)
    assert torch.isfinite(hit).all()
    err = (hit - clean).norm(dim=1)
    assert err[1] < 10 and err[0] > 1e4 * err[1], err


# --------------------------------------------------------------------------- image clients


def _image_cfg(methods, **server):
    return load_config(data={
        "mode": "server", "iterations": 2, "graph": {"family": "star", "n": 7},
        "task": {"name": "federated_images", "datasets": ["synthetic"], "synthetic_images": 300,
                 "train_per_client": 12, "test_per_client": 4, "batch_size": 5},
        "server": {"methods": methods, "alpha": 1.0, "f": 1, "meta_test": {"clients": 0}, **server},
        "output": {"window": 1, "figures": False}, "scenarios": [{"name": "clean"}]})


def _clients(cfg, n=6) -> Clients:
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(n):
        x = torch.rand((12, 1, 8, 8), generator=gen)
        y = torch.randint(0, 10, (12,), generator=gen)
        data.append(((x, y), (x[:4], y[:4])))
    return Clients(cfg.task, data, 10, (1, 8, 8), init_seed=3)


def _dsgd(method, byzantine=(), attack=None, **server) -> DSGDRun:
    cfg = _image_cfg([method], **server)
    clients = _clients(cfg)
    m = Method.parse(method)
    agg = build_aggregator(m, cfg.server, clients.rep_sizes, clients.all_sizes)
    return DSGDRun(m, cfg.server, clients, agg, np.array(byzantine, dtype=np.int64), attack, seed=1)


def test_batched_gradients_equal_per_worker_gradients():
    run = _dsgd("dsgd-none+mean")
    chosen = np.arange(run.n)
    state = run.gen.get_state()
    loop = run.gradients(chosen)
    run.gen.set_state(state)
    run.batched = True
    vmapped = run.gradients(chosen)
    assert torch.allclose(loop, vmapped, rtol=1e-4, atol=1e-6)


def test_one_image_round_is_a_hand_computed_sgd_step():
    """dsgd-none+mean, one round: theta_1 = theta_0 - gamma * mean_i grad of worker i's batch
    loss, recomputed here with a separate copy of the model and the same batches."""
    run = _dsgd("dsgd-none+mean", lr=0.5)
    theta0 = run.global_state.clone()
    state = run.gen.get_state()
    x, y = run._batches(np.arange(run.n))
    run.gen.set_state(state)
    run.round(0)
    model = copy.deepcopy(run.model)
    params = list(model.parameters())
    with torch.no_grad():
        for p, v in zip(params, torch.split(theta0, [p.numel() for p in params])):
            p.copy_(v.view(p.shape))
    grads = []
    for i in range(run.n):
        model.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    expected = theta0 - 0.5 * torch.stack(grads).mean(0)
    assert torch.allclose(run.global_state, expected, rtol=1e-5, atol=1e-6)


def test_image_worker_and_server_momentum_agree_under_the_mean():
    a, b = _dsgd("dsgd-worker0.8+mean"), _dsgd("dsgd-server0.8+mean")
    for t in range(3):
        a.round(t)
        b.round(t)
    assert torch.allclose(a.global_state, b.global_state, rtol=1e-4, atol=1e-6)


def test_resam_through_the_api_records_accuracy_and_counts():
    """A tiny RESAM run as a user would: workers' momenta, NNM + trimmed mean, a Byzantine
    worker sending inf (dropped and counted) on offline synthetic digits."""
    data = _image_cfg(["dsgd+trimmed_mean", "dsgd-none+mean"], pre=["nnm"]).model_dump(mode="json")
    data["scenarios"] = [{"name": "inf", "byzantine": 1, "attack": {"name": "inf"}}]
    res = p2pmtl.run(p2pmtl.load_config(data, overrides=["iterations=2"]))
    acc = res.curves.query("metric == 'test_acc'")
    assert set(acc["rule"]) == {"dsgd+trimmed_mean", "dsgd-none+mean"}
    assert np.isfinite(acc["mean"]).all()
    per = res.summary["results"]["inf"]
    assert all(per[m]["uploads_dropped_nonfinite"] == 2 for m in ("dsgd+trimmed_mean", "dsgd-none+mean"))


def test_logged_uploads_feed_the_robustness_measure(tmp_path):
    """server.log_uploads = 5 keeps the honest uploads of rounds 0, 5, ...; p2pmtl robustness
    --uploads measures the aggregators on them (n = honest uploads + f)."""
    from p2pmtl.cli import main
    from p2pmtl.robust.robustness import load_uploads, resilience_table

    data = _linear_dict(["dsgd-worker0.9+trimmed_mean"], byzantine=2, attack={"name": "sign_flip"}, log_uploads=5)
    data["iterations"] = 12
    p2pmtl.run(p2pmtl.load_config(data), out=tmp_path / "run")
    path = tmp_path / "run" / "arrays" / "uploads__s__dsgd-worker0.9+trimmed_mean.npz"
    stacks = load_uploads(str(path))
    assert [len(s) for s in stacks] == [10, 10, 10]  # rounds 0, 5, 10; the 10 honest of 12 workers
    rows = resilience_table([(0, 2)], ["mean", "trimmed_mean"], honest=stacks)
    by = {r["aggregator"]: r for r in rows}
    assert by["mean"]["n"] == 12 and by["mean"]["kappa"] > 100 * by["trimmed_mean"]["kappa"]
    assert main(["robustness", "--uploads", str(path), "--n-f", "12:2", "--aggregators", "trimmed_mean"]) == 0
