"""The robust-gossip study configs (docs/results/robust_gossip.md) are valid and run: each is
loaded through ``p2pmtl.load_config`` with overrides that make it tiny, and run through the
Python API; the sweep's attack rows run as scenarios of one small run."""
from pathlib import Path

import numpy as np

import p2pmtl
from p2pmtl.experiments.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "experiments" / "resilience_matrix_robust_gossip.toml"
SETTING = ROOT / "experiments" / "clipped_gossip_setting.toml"
RULES = ["noncoop", "average", "loss", "clipped_gossip", "ios", "bridge_trimmed_mean", "bridge_median", "cs_plus"]
TINY_GRAPH = ["graph.n=20", "graph.radius=1.5", "graph.max_neighbors=6"]


def test_robust_gossip_matrix_config_is_valid_and_its_attacks_run():
    cfg, spec = load_sweep(MATRIX)
    assert cfg.rules.names == RULES and spec.byzantine == [0.1, 0.2]
    rows = [a.row for a in spec.attacks]
    assert {"uniform", "uniform_far", "sign_flip", "alie", "dissensus", "adaptive_loss", "spectral"} <= set(rows)
    scenarios = ", ".join(
        f'{{name = "{a.row}", byzantine = 3, attack = {{name = "{a.name}"'
        + "".join(f", {k} = {v!r}" for k, v in a.params.items() if k != "label") + "}}"
        for a in spec.attacks)
    tiny = p2pmtl.load_config(MATRIX, ["iterations=6", "output.window=3", *TINY_GRAPH,
                                       f"scenarios=[{scenarios}]".replace("'", '"')])
    res = p2pmtl.run(tiny)
    loss = res.table("loss")
    assert list(loss.columns) == RULES and list(loss.index) == rows
    assert np.isfinite(loss[["noncoop", "loss", "cs_plus"]].to_numpy()).all()


def test_clipped_gossip_setting_runs_multi_and_single_task():
    graph = f"graph.path={ROOT / 'topologies' / 'dumbbell_victims.edgelist'}"
    cfg = p2pmtl.load_config(SETTING, [graph, "iterations=6", "output.window=3"])
    assert cfg.rules.names == RULES
    assert [s.byzantine for s in cfg.scenarios][1:] == [[2, 3, 11, 12, 20, 21]] * (len(cfg.scenarios) - 1)
    res = p2pmtl.run(cfg)
    assert list(res.table("msd").index) == [s.name for s in cfg.scenarios]
    single = p2pmtl.load_config(SETTING, [graph, "iterations=6", "output.window=3", "task.targets=[[15.0, 15.0]]",
                                          "scenarios=[{name = \"spectral\", byzantine = [2, 3, 11, 12, 20, 21], "
                                          "attack = {name = \"spectral\", eps = 4.0}}]"])
    msd = p2pmtl.run(single).table("msd")
    assert np.isfinite(msd[["noncoop", "loss", "clipped_gossip", "cs_plus"]].to_numpy()).all()
