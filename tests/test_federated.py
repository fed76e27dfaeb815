"""Server mode (BR-MTRL Algorithm 1 and baselines): exact equivalences on small cases."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.server.federated import Clients, FederatedRun, LocalTrainer, Method, flat, load


def small_clients(n=4, per=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        x = torch.rand((per, 1, 28, 28), generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (per,), generator=gen)
        data.append(((x, y), (x[:4], y[:4])))
    cfg = load_config(data=server_config_dict()).task.model_copy(update={"optimizer": "sgd", "lr": 0.05, "batch_size": 6})
    return Clients(cfg, data, 10, (1, 28, 28), init_seed=3, dtype=torch.float64), data


def server_config_dict(**server):
    return {
        "mode": "server", "iterations": 2,
        "graph": {"family": "star", "n": 5},
        "task": {"name": "federated_images", "train_per_client": 12, "test_per_client": 4},
        "server": {"methods": ["fedavg"], "alpha": 1.0, "tau_joint": 1, **server},
        "scenarios": [{"name": "clean"}],
    }


def test_method_names():
    assert Method.parse("fedrep") == Method("fedrep", "alternating", "mean")
    assert Method.parse("br-mtrl+gm") == Method("br-mtrl+gm", "alternating", "geometric_median")
    assert Method.parse("fedper+krum").scheme == "fedper"
    with pytest.raises(ConfigError, match="br-mtrl needs an aggregator"):
        load_config(data=server_config_dict(methods=["br-mtrl"]))
    with pytest.raises(ConfigError, match="scheme 'fedsgd' unknown"):
        load_config(data=server_config_dict(methods=["fedsgd"]))


@pytest.mark.parametrize("alpha", [0.0, 1.5, -0.2])
def test_alpha_outside_unit_interval_is_an_error(alpha):
    with pytest.raises(ConfigError, match="server.alpha"):
        load_config(data=server_config_dict(alpha=alpha))


def test_server_mode_needs_a_star():
    bad = server_config_dict()
    bad["graph"] = {"family": "ring", "n": 5}
    with pytest.raises(ConfigError, match="star"):
        load_config(data=bad)


def test_mean_round_with_full_participation_equals_fedavg_by_hand():
    clients, data = small_clients()
    server = load_config(data=server_config_dict()).server
    run = FederatedRun(Method.parse("fedavg"), server, clients, lambda x: x.mean(0), np.array([], dtype=int), None, seed=7)
    start = run.global_state.clone()
    # by hand: every client runs one epoch of SGD (batches of 6, same shuffles) from the global model
    gen = torch.Generator().manual_seed(7)
    expected = []
    for i, ((x, y), _) in enumerate(data):
        m = clients.new_model(10, (1, 28, 28))
        load(list(m.parameters()), start)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        for idx in torch.split(torch.randperm(len(y), generator=gen), 6):
            opt.zero_grad()
            F.cross_entropy(m(clients._prep(x)[idx]), y[idx]).backward()
            opt.step()
        expected.append(flat(m.parameters()))
    run.round(0)
    assert torch.allclose(run.global_state, torch.stack(expected).mean(0), rtol=1e-10, atol=1e-12)


def test_heads_persist_across_rounds_and_only_representations_travel():
    clients, _ = small_clients()
    server = load_config(data=server_config_dict(alpha=0.5, tau_h=2, tau_phi=1)).server
    run = FederatedRun(Method.parse("fedrep"), server, clients, lambda x: x.mean(0), np.array([], dtype=int), None, seed=1)
    heads = [flat(m.head.parameters()).clone() for m in clients.models]
    assert run.global_state.numel() == sum(p.numel() for p in clients.models[0].representation.parameters())
    run.round(0)
    after = [flat(m.head.parameters()) for m in clients.models]
    changed = [not torch.equal(a, b) for a, b in zip(heads, after)]
    assert sum(changed) == run.picked == 2  # picked clients trained their heads, the rest kept theirs
    run.round(1)
    for i in range(4):  # a head never comes from the server: evaluation keeps every client's own
        h = flat(clients.models[i].head.parameters()).clone()
        run.evaluate()
        assert torch.equal(flat(clients.models[i].head.parameters()), h)


def test_alternating_update_fixes_one_part_at_a_time():
    clients, data = small_clients(n=1)
    m, opt = clients.models[0], clients.opts[0]
    (x, y), _ = data[0]
    x = clients._prep(x)
    rep0, head0 = flat(m.representation.parameters()), flat(m.head.parameters())
    server = load_config(data=server_config_dict(tau_h=3, tau_phi=0)).server
    LocalTrainer(server, 6).alternating(m, opt, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(flat(m.representation.parameters()), rep0)  # head epochs: phi fixed
    assert not torch.equal(flat(m.head.parameters()), head0)
    head1 = flat(m.head.parameters())
    server = load_config(data=server_config_dict(tau_h=0, tau_phi=2)).server
    LocalTrainer(server, 6).alternating(m, opt, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(flat(m.head.parameters()), head1)  # representation epochs: head fixed
    assert not torch.equal(flat(m.representation.parameters()), rep0)


def test_gaussian_attack_breaks_the_mean_but_not_gm_or_krum(tmp_path):
    """12 clients, 2 classes each, all picked every round, 3 Byzantine sending phi + N(0, I):
    FedRep's mean is wrecked, BR-MTRL with GM or Krum (f = 3) keeps learning."""
    import json

    from p2pmtl.cli import main
    from p2pmtl.experiments.config import dump_config

    data = server_config_dict(methods=["fedrep", "br-mtrl+gm", "br-mtrl+krum"], alpha=1.0, tau_h=5,
                              tau_phi=1, f=3, meta_test={"clients": 0})
    data.update(iterations=8, graph={"family": "star", "n": 13}, output={"record_every": 4, "window": 1})
    data["task"] = {"name": "federated_images", "datasets": ["mnist"], "train_per_client": 40,
                    "test_per_client": 20, "batch_size": 20, "lr": 0.05}
    data["scenarios"] = [{"name": "attack", "byzantine": 3, "attack": {"name": "gaussian", "sigma": 1.0}}]
    path = tmp_path / "cfg.toml"
    path.write_text(dump_config(load_config(data=data)))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--no-figures"]) == 0
    res = json.loads((tmp_path / "run" / "summary.json").read_text())["results"]["attack"]
    acc = {m: res[m]["test_acc"]["last_window_mean"] for m in res}
    assert acc["br-mtrl+gm"] > acc["fedrep"] + 0.15, acc
    assert acc["br-mtrl+krum"] > acc["fedrep"] + 0.15, acc


def test_gossip_and_server_run_the_same_task_with_one_output_format(tmp_path):
    """The federated_images split in server mode and in gossip (representation) mode: same
    clients, same files, same columns."""
    import csv

    from p2pmtl.cli import main
    from p2pmtl.experiments.config import dump_config

    task = {"name": "federated_images", "datasets": ["mnist"], "train_per_client": 20, "test_per_client": 10,
            "batch_size": 10, "lr": 0.05, "score_batch": 8}
    server = server_config_dict(methods=["fedrep"], alpha=1.0, tau_h=2, tau_phi=1,
                                meta_test={"clients": 2, "train_per_client": 5, "test_per_client": 5})
    server.update(iterations=3, graph={"family": "star", "n": 7}, task=task, output={"record_every": 3})
    gossip = {"mode": "gossip", "iterations": 3, "graph": {"family": "complete", "n": 6}, "task": task,
              "rules": {"names": ["noncoop", "loss"], "nu": 0.05, "init_score": 1.0},
              "output": {"record_every": 3}, "scenarios": [{"name": "clean"}]}
    outs = {}
    for name, data in (("server", server), ("gossip", gossip)):
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_config(load_config(data=data)))
        outs[name] = tmp_path / name
        assert main(["run", str(path), "--out", str(outs[name]), "--no-progress", "--no-figures"]) == 0
    heads = [next(csv.reader(open(outs[n] / "metrics.csv"))) for n in outs]
    assert heads[0] == heads[1]
    rows = {n: list(csv.DictReader(open(outs[n] / "metrics.csv"))) for n in outs}
    assert {r["agent"] for r in rows["server"]} == {r["agent"] for r in rows["gossip"]} == {str(i) for i in range(6)}
    assert {r["metric"] for r in rows["server"]} == {r["metric"] for r in rows["gossip"]} == {"test_loss", "test_acc"}
    # the same clients hold the same data in both modes (same seed, same split)
    from p2pmtl.engine.world import run_seeds
    from p2pmtl.experiments.runner import build_world
    from p2pmtl.server.run import server_world

    g_cfg, s_cfg = load_config(data=gossip), load_config(data=server)
    split_g = build_world(g_cfg, g_cfg.scenarios[0]).setups[0]
    _, split_s, _ = server_world(s_cfg, s_cfg.scenarios[0], run_seeds(0))
    for k in range(6):
        assert torch.equal(split_g.train[k][1], split_s.clients[k][0][1])


def test_pre_aggregation_steps_reach_the_server():
    from p2pmtl.server.aggregation import build_aggregator

    server = load_config(data=server_config_dict(pre=["nnm"], f=2)).server
    agg = build_aggregator(Method.parse("br-mtrl+krum"), server, [3, 2], [3, 2, 1])
    assert agg.name == "nnm+krum"
    x = torch.randn(9, 5, dtype=torch.float64)
    x[0] = 1e6  # a far outlier is not chosen
    assert torch.isfinite(agg(x)).all() and float(agg(x).abs().max()) < 1e3
    with pytest.raises(ConfigError, match="'median' is not a known pre-aggregation step"):
        load_config(data=server_config_dict(pre=["median"]))
