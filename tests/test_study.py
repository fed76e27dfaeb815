"""Studies (variants of a config compared in figures) and server mode for linear tasks."""
import numpy as np
import pytest

from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.experiments.runner import run_experiment


BASE = """
name = "base"
iterations = 100
[graph]
family = "ring"
n = 12
[rules]
names = ["loss"]
[output]
window = 10
figures = false
[[scenarios]]
name = "clean"
"""


def _study(tmp_path, kind="compare", extra=""):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "study.toml").write_text(f"""
name = "mini"
kind = "{kind}"
metric = "msd"
target = 1.0
smooth = 2
{extra}
[[variants]]
name = "ring"
config = "base.toml"
curve = "clean/loss"
set = {{ network = {{ latency = 0.1 }} }}
[[variants]]
name = "complete"
config = "base.toml"
curve = "clean/loss"
set = {{ graph = {{ family = "complete", n = 12 }}, network = {{ latency = 0.1 }} }}
""")
    return tmp_path / "study.toml"


def test_study_runs_variants_draws_and_skips_finished(tmp_path, monkeypatch):
    from p2pmtl.experiments import runner as experiment
    from p2pmtl.experiments.study import run_study

    path = _study(tmp_path)
    calls = []
    real = experiment.run_experiment
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg, out, **kw: (calls.append(out), real(cfg, out, **kw))[1])
    res = run_study(path, tmp_path / "out", progress=False)
    assert len(calls) == 2 and (tmp_path / "out" / "mini.png").is_file()
    assert set(res["variants"]) == {"ring", "complete"}
    for v in res["variants"].values():
        assert v["time"] == pytest.approx(100 * 1.1) and v["bytes"] > 0
        assert np.isfinite(v["time_to_target"])
    ring, complete = res["variants"]["ring"], res["variants"]["complete"]
    assert complete["bytes"] == pytest.approx(ring["bytes"] * 11 / 2)  # 11 vs 2 neighbours per agent
    run_study(path, tmp_path / "out", progress=False)
    assert len(calls) == 2  # nothing rerun


def test_topology_study_measures_graphs(tmp_path):
    from p2pmtl.experiments.study import run_study

    res = run_study(_study(tmp_path, "topology", 'placement_scenarios = ["clean"]'), tmp_path / "out", progress=False)
    ring, complete = res["variants"]["ring"], res["variants"]["complete"]
    assert ring["algebraic_connectivity"] == pytest.approx(2 - 2 * np.cos(2 * np.pi / 12), rel=1e-6)
    assert complete["algebraic_connectivity"] == pytest.approx(12, rel=1e-6)
    # 4 targets in blocks of 3 consecutive ids: on the ring 8 agents have 1 same-task neighbour
    # and 4 (block middles) have 2; on the complete graph every agent has 2
    assert ring["same_task_neighbours"] == pytest.approx((8 * 1 + 4 * 2) / 12)
    assert complete["same_task_neighbours"] == pytest.approx(2.0)
    assert (tmp_path / "out" / "mini.png").is_file()


def test_study_errors_name_the_variant(tmp_path):
    from p2pmtl.experiments.study import load_study

    path = _study(tmp_path)
    path.write_text(path.read_text().replace('network = { latency = 0.1 } }\n[[variants]]',
                                             'network = { latency = -1 } }\n[[variants]]', 1))
    with pytest.raises(ConfigError, match="variant 'ring'"):
        load_study(path)


def test_linear_server_mode_keeps_one_global_model(tmp_path):
    """Server mode on target localization: every client holds the server's model, which the
    mean aggregates as FedAvg; a multi-task population cannot be fitted by one model."""
    data = {"name": "tl_server", "mode": "server", "iterations": 60, "graph": {"family": "star", "n": 21},
            "server": {"methods": ["fedavg", "fedavg+gm", "fedavg+krum"], "alpha": 1.0, "f": 2},
            "output": {"window": 10, "figures": False}, "scenarios": [{"name": "clean"}]}
    cfg = load_config(data=data)
    s = run_experiment(cfg, tmp_path, progress=False, figures=False)
    res = s["results"]["clean"]
    gossip = load_config(data={"name": "g", "iterations": 60, "graph": {"family": "complete", "n": 20},
                               "rules": {"names": ["loss"]}, "output": {"window": 10, "figures": False}})
    g = run_experiment(gossip, tmp_path / "g", progress=False, figures=False)
    for m in ("fedavg", "fedavg+gm", "fedavg+krum"):
        assert res[m]["msd"]["last_window_mean"] > 10 * g["results"]["no_attack"]["loss"]["msd"]["last_window_mean"]
    with pytest.raises(ConfigError, match="fedavg"):
        load_config(data={**data, "server": {"methods": ["fedrep"]}})


def test_linear_server_round_is_the_aggregate_of_local_steps():
    from p2pmtl.engine.world import run_seeds
    from p2pmtl.server.linear import LinearServer

    data = {"name": "tl", "mode": "server", "iterations": 1, "graph": {"family": "star", "n": 6},
            "server": {"methods": ["fedavg"], "alpha": 1.0}, "scenarios": [{"name": "clean"}]}
    cfg = load_config(data=data)
    srv = LinearServer(cfg, cfg.scenarios[0], ["fedavg"], run_seeds(0))
    import torch

    theta0 = srv.pop.theta.clone()
    assert torch.equal(theta0, theta0[:1].expand_as(theta0))
    srv.pop.sample(0)
    psi = srv.pop.adapt()
    srv.pop.theta = theta0.clone()
    srv.round(0)
    assert torch.allclose(srv.pop.theta, psi.mean(0).expand_as(psi))
