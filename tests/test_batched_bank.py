"""The batched (torch.func) model bank: the same numbers as the per-agent modules, row
optimizers with torch.optim's maths, and the device setting (checked early, named in errors)."""
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

import p2pmtl
from p2pmtl.core.device import resolve_device
from p2pmtl.core.edges import EdgeIndex
from p2pmtl.core.messages import Messages
from p2pmtl.engine.world import run_seeds
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.server.aggregation import build_aggregator
from p2pmtl.server.batched_clients import BatchedClients
from p2pmtl.server.federated import Clients, FederatedRun, Method
from p2pmtl.server.run import server_world
from p2pmtl.tasks.batched_bank import BatchedModelBank
from p2pmtl.tasks.digits import ImageClassification
from p2pmtl.tasks.row_optim import make_row_optimizer

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["adam", "sgd", "momentum"])
def test_row_optimizers_follow_torch_optim_with_rows_that_skip(name):
    """Three rows, each with its own torch.optim optimizer; row 1 skips every other step
    (its step count, and so its bias corrections, lag): the row optimizer matches each."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    params = [nn.Parameter(r.clone()) for r in theta]
    ref = {"adam": lambda p: torch.optim.Adam([p], lr=0.01),
           "sgd": lambda p: torch.optim.SGD([p], lr=0.01),
           "momentum": lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9)}[name]
    opts = [ref(p) for p in params]
    rows = make_row_optimizer(name, 3, 7, 0.01, 0.9, torch.float64, torch.device("cpu"))
    for step in range(6):
        ids = torch.tensor([0, 2] if step % 2 else [0, 1, 2])
        g = torch.randn(len(ids), 7, generator=gen, dtype=torch.float64)
        rows.step(theta, ids, g)
        for r, i in enumerate(ids.tolist()):
            params[i].grad = g[r].clone()
            opts[i].step()
    assert torch.allclose(theta, torch.stack([p.detach() for p in params]), rtol=1e-12, atol=1e-14)


def tiny(bank, share="model", optimizer="adam", lanes=2):
    gen = torch.Generator().manual_seed(0)

    def data(m):
        return (torch.rand((m, 1, 28, 28), generator=gen, dtype=torch.float64),
                torch.randint(0, 10, (m,), generator=gen))

    setup = SimpleNamespace(group=np.array([0, 0, 1, 1]), train=[data(12) for _ in range(4)],
                            test=[data(6) for _ in range(4)], image_shape=(1, 28, 28), num_classes=10)
    cfg = load_config(data={"graph": {"family": "complete", "n": 4},
                            "task": {"name": "digits", "batch_size": 8, "score_batch": 5, "share": share,
                                     "optimizer": optimizer, "bank": bank, "bank_chunk": 3}}).task
    edges = EdgeIndex.from_graph(nx.complete_graph(4))
    pop = ImageClassification(cfg, [setup], [1], [2], edges, torch.tensor([], dtype=torch.long),
                              dtype=torch.float64, lanes=lanes)
    return pop, edges


@pytest.mark.parametrize("share,optimizer", [("model", "adam"), ("representation", "adam"), ("model", "momentum")])
def test_batched_bank_gives_the_per_agent_modules_numbers(share, optimizer):
    """Three rounds (float64, 2 lanes): local steps, the loss of every edge (a forged row and a
    per-edge forgery among them), the combination and the test metrics agree with the
    per-agent modules (bank_chunk 3 splits every batched call)."""
    a, edges = tiny("modules", share, optimizer)
    b, _ = tiny("batched", share, optimizer)
    assert not a.batched and b.batched
    lane_edges = EdgeIndex.disjoint_union([edges, edges])
    gen = torch.Generator().manual_seed(1)
    for it in range(3):
        a.sample(it)
        b.sample(it)
        psi_a, psi_b = a.adapt(), b.adapt()
        assert torch.allclose(psi_a, psi_b, rtol=1e-9, atol=1e-11)
        sent = psi_a.clone()
        sent[1] = 0.05 * torch.randn(psi_a.shape[1], generator=gen, dtype=torch.float64)  # forged row, lane 0
        forged_edge = int(torch.nonzero((lane_edges.src == 6) & (lane_edges.dst == 7))[0])  # lane 1: 2 -> 3
        msgs = Messages(sent, lane_edges, 2, torch.tensor([1]),
                        override_edges=torch.tensor([forged_edge]), override_values=sent[1:2] * 2)
        for lane in (0, 1):
            assert torch.allclose(a.edge_losses(msgs, lane), b.edge_losses(msgs, lane), rtol=1e-10, atol=1e-12)
        values, receivers = sent[:3] * 0.5, torch.tensor([3, 0, 2])
        assert torch.allclose(a.losses_of(values, receivers), b.losses_of(values, receivers), rtol=1e-10)
        w = torch.rand(lane_edges.num_edges, generator=gen, dtype=torch.float64)
        a.combine(msgs, w)
        b.combine(msgs, w)
        assert torch.allclose(a.theta, b.theta, rtol=1e-9, atol=1e-11)
        ma, mb = a.metrics(), b.metrics()
        for k in ma:
            assert torch.allclose(ma[k], mb[k], rtol=1e-9, atol=1e-11), k


RUN = {
    "name": "bank", "iterations": 4, "dtype": "float64",
    "graph": {"family": "complete", "n": 4},
    "task": {"name": "digits", "train_per_agent": 40, "test_per_agent": 16, "batch_size": 8, "score_batch": 6,
             "skip_prob": [0.5, 0.0]},
    "rules": {"names": ["loss", "average"], "nu": 0.05, "init_score": 1.0},
    "output": {"window": 2},
}


@pytest.mark.parametrize("attack", [{"name": "two_faced", "honest_fraction": 0.5}, {"name": "adaptive_loss"},
                                    {"name": "label_flip"}])
def test_a_whole_run_is_the_same_with_either_bank(attack):
    """p2pmtl.run as a user calls it: per-edge forgeries (two_faced), an attack that scores its
    candidates through the population (adaptive_loss), data poisoning (label_flip), agents
    that skip steps: every recorded metric agrees between the two banks."""
    runs = {}
    for bank in ("modules", "batched"):
        cfg = load_config(data={**RUN, "task": {**RUN["task"], "bank": bank},
                                "scenarios": [{"name": "s", "byzantine": [3], "attack": attack}]})
        runs[bank] = p2pmtl.run(cfg).metrics
    a, b = runs["modules"], runs["batched"]
    assert len(a) == len(b) > 0
    assert np.allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-7, atol=1e-9)


def test_models_with_buffers_are_refused_by_the_batched_bank():
    with pytest.raises(ValueError, match="buffers.*bank = 'modules'"):
        BatchedModelBank([nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))], "sgd", 0.1, 0.0, torch.device("cpu"))


def test_device_setting_is_checked_and_named():
    with pytest.raises(ConfigError, match=r"device = 'gpu'; allowed: 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        load_config("experiments/target_localization.toml", ["device=gpu"])
    assert load_config("experiments/target_localization.toml").device == "auto"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_a_gpu_named_on_a_machine_without_one_stops_before_any_file(tmp_path, capsys):
    from p2pmtl.cli import main

    with pytest.raises(ValueError, match=r"device = 'cuda:1': this machine has no CUDA GPU"):
        resolve_device("cuda:1")
    out = tmp_path / "run"
    assert main(["run", "target_localization", "--device", "cuda", "--out", str(out), "--no-figures"]) == 2
    assert "device = 'cuda': this machine has no CUDA GPU" in capsys.readouterr().err
    assert not (out / "metrics.csv").exists()
    from p2pmtl.experiments.sweep import run_sweep

    sweep_dir = tmp_path / "sweep"
    data = {"iterations": 2, "graph": {"family": "ring", "n": 6},
            "sweep": {"attacks": [{"name": "uniform"}], "byzantine": [0.2], "seeds": [0]}}
    with pytest.raises(ValueError, match="device = 'cuda': this machine has no CUDA GPU"):
        run_sweep(data, sweep_dir, overrides=["device=cuda"], jobs=1, progress=False, figures=False)
    assert not (sweep_dir / "cells").exists()


@pytest.mark.gpu
@needs_gpu
def test_digits_on_the_gpu_match_the_cpu():
    """The batched bank on the GPU (float64) against the CPU modules: the same metrics."""
    runs = {}
    for device, bank in (("cpu", "modules"), ("cuda", "batched")):
        cfg = load_config(data={**RUN, "device": device, "task": {**RUN["task"], "bank": bank},
                                "scenarios": [{"name": "s", "byzantine": [3], "attack": {"name": "two_faced"}}]})
        runs[device] = p2pmtl.run(cfg).metrics
    assert np.allclose(runs["cpu"]["value"].to_numpy(), runs["cuda"]["value"].to_numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.gpu
@needs_gpu
def test_modules_bank_on_a_gpu_is_a_clear_error():
    cfg = load_config(data={**RUN, "device": "cuda", "task": {**RUN["task"], "bank": "modules"}})
    with pytest.raises(ValueError, match="task.bank = 'modules' with device = 'cuda'"):
        p2pmtl.run(cfg)


SERVER = {
    "mode": "server", "iterations": 2, "dtype": "float64", "graph": {"family": "star", "n": 7},
    "task": {"name": "federated_images", "datasets": ["synthetic"], "synthetic_images": 300,
             "train_per_client": 12, "test_per_client": 4, "batch_size": 5},
    "server": {"methods": ["br-mtrl+gm", "fedavg", "dsgd-worker0.9+trimmed_mean"], "alpha": 1.0, "f": 1,
               "meta_test": {"clients": 2, "train_per_client": 6, "test_per_client": 4, "epochs": 1}},
    "output": {"window": 1, "figures": False},
    "scenarios": [{"name": "s", "byzantine": [1], "attack": {"name": "label_flip"}}],
}


@pytest.mark.gpu
@needs_gpu
def test_server_clients_on_the_gpu_match_the_cpu():
    """BR-MTRL, FedAvg and RESAM's dsgd (whose worker gradients are one vmap on a GPU) with
    clients on the GPU: the recorded metrics and the meta-test of the CPU run."""
    runs = {d: p2pmtl.run(load_config(data={**SERVER, "device": d})) for d in ("cpu", "cuda")}
    assert np.allclose(runs["cpu"].metrics["value"].to_numpy(), runs["cuda"].metrics["value"].to_numpy(),
                       rtol=1e-6, atol=1e-8)
    meta = [[r.summary["results"]["s"][m]["meta_test_acc"] for m in SERVER["server"]["methods"]]
            for r in runs.values()]
    assert meta[0] == pytest.approx(meta[1], rel=1e-6)


def test_the_bank_bench_times_the_same_round_for_both_layouts():
    """`p2pmtl bench --only bank` compares like with like: one round of its population gives the
    same models with either layout (float32), and its timings are positive."""
    from p2pmtl.bench.bank import bank_population, bank_round

    theta = {}
    for bank in ("modules", "batched"):
        pop, edges = bank_population(5, bank, "cpu", degree=2)
        pop.sample(0)
        psi = pop.adapt()
        msgs = Messages(psi, edges, 1, torch.tensor([], dtype=torch.long))
        losses = pop.edge_losses(msgs, 0)
        pop.combine(msgs, torch.softmax(-losses, 0))
        theta[bank] = pop.theta
    assert torch.allclose(theta["modules"], theta["batched"], rtol=1e-4, atol=1e-6)
    r = bank_round(4, "batched", "cpu", repeats=1)
    assert r["edges"] == 4 * 4 and all(r[k] > 0 for k in ("adapt_s", "score_s", "combine_s", "metrics_s"))


def test_gossip_on_the_client_split_task_is_the_same_with_either_bank():
    """federated_images in gossip mode (representation sharing: each receiver scores with its own
    head, heads stay personal): the batched bank gives the modules' numbers."""
    runs = {}
    for bank in ("modules", "batched"):
        cfg = load_config(data={
            "iterations": 3, "dtype": "float64", "graph": {"family": "complete", "n": 4},
            "task": {"name": "federated_images", "datasets": ["synthetic"], "synthetic_images": 300,
                     "train_per_client": 12, "test_per_client": 4, "batch_size": 5, "score_batch": 4,
                     "share": "representation", "bank": bank},
            "rules": {"names": ["loss"]}, "output": {"window": 1},
            "scenarios": [{"name": "s", "byzantine": [2], "attack": {"name": "gaussian", "sigma": 0.1}}]})
        runs[bank] = p2pmtl.run(cfg).metrics["value"].to_numpy()
    assert np.allclose(runs["modules"], runs["batched"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("optimizer,unit", [("momentum", "epochs"), ("adam", "steps")])
def test_server_clients_batched_give_the_per_client_loop_numbers(optimizer, unit):
    """Server mode with the clients as one stacked tensor (local steps in lockstep, one vmap per
    step; the representation and the head with optimizer states of their own): BR-MTRL (geometric
    median, Krum), FedRep, FedPer and FedAvg under label flipping, with partial participation,
    record the per-client loop's numbers (float64)."""
    base = {**SERVER, "iterations": 3, "graph": {"family": "star", "n": 11},
            "task": {**SERVER["task"], "synthetic_images": 400, "optimizer": optimizer, "bank_chunk": 2},
            "server": {**SERVER["server"], "methods": ["br-mtrl+gm", "br-mtrl+krum", "fedrep", "fedper+krum", "fedavg"],
                       "alpha": 0.5, "tau_h": 2, "tau_phi": 1, "tau_joint": 2, "unit": unit}}
    runs = {}
    for bank in ("modules", "batched"):
        cfg = load_config(data={**base, "task": {**base["task"], "bank": bank}})
        runs[bank] = p2pmtl.run(cfg)
    a, b = runs["modules"], runs["batched"]
    assert np.allclose(a.metrics["value"].to_numpy(), b.metrics["value"].to_numpy(), rtol=1e-7, atol=1e-9)
    for m in base["server"]["methods"]:
        assert a.summary["results"]["s"][m]["meta_test_acc"] == b.summary["results"]["s"][m]["meta_test_acc"]
    # the batched layout is really in use
    cfg = load_config(data={**base, "task": {**base["task"], "bank": "batched"}})
    _, setup, byz = server_world(cfg, cfg.scenarios[0], run_seeds(0))
    c = Clients(cfg.task, setup.clients, setup.num_classes, setup.image_shape, 1, dtype=torch.float64)
    m = Method.parse("fedrep")
    run = FederatedRun(m, cfg.server, c, build_aggregator(m, cfg.server, c.rep_sizes, c.all_sizes), byz, None, 2)
    assert run.bank is not None and run.bank.rows.shape == (10, sum(c.all_sizes))
    run = FederatedRun(m, cfg.server, c, build_aggregator(m, cfg.server, c.rep_sizes, c.all_sizes),
                       np.array([], dtype=np.int64), None, 2)
    run.round(0)
    run.evaluate()
    assert c._models is None and c._opts is None  # no per-client module or optimizer was ever built


def test_server_batched_clients_need_equal_data_sizes():
    gen = torch.Generator().manual_seed(0)
    data = [((torch.rand((m, 1, 8, 8), generator=gen), torch.randint(0, 10, (m,), generator=gen)),
             (torch.rand((4, 1, 8, 8), generator=gen), torch.randint(0, 10, (4,), generator=gen))) for m in (6, 9)]
    cfg = load_config(data=SERVER).task
    with pytest.raises(ValueError, match=r"clients hold \[6, 9\] training images.*bank = 'modules'"):
        BatchedClients(Clients(cfg, data, 10, (1, 8, 8), init_seed=0))


@pytest.mark.parametrize("extra", [
    {"network": {"protocol": "async", "latency": 0.05, "speed": {"kind": "lognormal", "median": 1.0, "sigma": 0.3}}},
    {"rules": {"names": ["clipped_gossip", "loss"], "nu": 0.05, "init_score": 1.0}},
    {"roles": {"servers": [0], "aggregator": "coordinate_median"}},
], ids=["async", "robust_combine", "server_role"])
def test_batched_bank_under_asynchrony_robust_combines_and_server_roles(extra):
    """The paths that train only some agents (asynchronous gossip: the agents whose clock
    fires), write a lane's models after the combination (robust combine steps) or replace a
    node's model by an aggregate (a server role) give the modules' numbers too."""
    runs = {}
    for bank in ("modules", "batched"):
        cfg = load_config(data={**RUN, "iterations": 3, **extra, "task": {**RUN["task"], "bank": bank},
                                "scenarios": [{"name": "s", "byzantine": [3], "attack": {"name": "gaussian"}}]})
        runs[bank] = p2pmtl.run(cfg).metrics["value"].to_numpy()
    assert len(runs["modules"]) > 0
    assert np.allclose(runs["modules"], runs["batched"], rtol=1e-7, atol=1e-9)
