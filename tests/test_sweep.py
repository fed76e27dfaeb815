"""p2pmtl sweep: cells, skipping finished cells on a rerun, the matrix and its heatmap."""
import json

import pytest

from p2pmtl.experiments import sweep
from p2pmtl.experiments.config import ConfigError


def sweep_dict(**sweep_over):
    d = {
        "name": "tiny_sweep",
        "iterations": 20,
        "graph": {"family": "random_geometric", "n": 20, "radius": 1.5, "box": 3.0, "max_neighbors": 5},
        "rules": {"names": ["average", "loss"]},
        "output": {"window": 5, "per_agent": False},
        "sweep": {"attacks": [{"name": "uniform"}], "byzantine": [0.2], "seeds": [0]},
    }
    d["sweep"].update(sweep_over)
    return d


def results_of(root):
    return {c["id"]: c["results"] for c in sweep.collect(root)[1]}


def test_rerun_does_no_finished_cell_twice(tmp_path, monkeypatch):
    calls = []
    real = sweep.run_cell

    def counting(cell, root):
        calls.append(cell["id"])
        return real(cell, root)

    monkeypatch.setattr(sweep, "run_cell", counting)
    data = sweep_dict(seeds=[0, 1])
    m = sweep.run_sweep(data, tmp_path, jobs=1, progress=False, figures=False)
    assert sorted(calls) == sorted(["none__byz0__seed0", "none__byz0__seed1",
                                    "uniform__byz0.2__seed0", "uniform__byz0.2__seed1"])
    assert m["ran"] == 4 and m["skipped"] == 0
    first = results_of(tmp_path)

    calls.clear()
    m = sweep.run_sweep(data, tmp_path, jobs=1, progress=False, figures=False)
    assert calls == [] and m["skipped"] == 4  # nothing twice

    # an interrupted cell (no summary.json: it is written last) is the only one rerun
    (tmp_path / "cells" / "uniform__byz0.2__seed1" / "summary.json").unlink()
    m = sweep.run_sweep(data, tmp_path, jobs=1, progress=False, figures=False)
    assert calls == ["uniform__byz0.2__seed1"] and m["ran"] == 1
    assert results_of(tmp_path) == {k: v for k, v in first.items()}  # same numbers again

    # the device is not part of a cell's identity: resuming elsewhere keeps the finished cells
    calls.clear()
    m = sweep.run_sweep(data, tmp_path, overrides=["device=cpu"], jobs=1, progress=False, figures=False)
    assert calls == [] and m["skipped"] == 4

    # a changed cell config is not "finished": its cells rerun
    calls.clear()
    sweep.run_sweep(data, tmp_path, overrides=["iterations=21"], jobs=1, progress=False, figures=False)
    assert len(calls) == 4


def test_matrix_table_and_heatmap(tmp_path):
    data = sweep_dict(attacks=[{"name": "uniform"}, {"name": "sign_flip", "label": "flip"}])
    m = sweep.run_sweep(data, tmp_path, jobs=1, progress=False)
    assert m["metric"] == "loss" and m["finished_cells"] == m["total_cells"] == 3
    rows = {(r["attack"], r["defence"]): r for r in m["rows"]}
    assert set(rows) == {(a, d) for a in ("none", "uniform", "flip") for d in ("average", "loss")}
    # the known fact at small scale: averaging is hurt by uniform values, the loss rule is not
    assert rows[("uniform", "loss")]["mean"] < rows[("uniform", "average")]["mean"]
    assert (tmp_path / "matrix.png").stat().st_size > 10_000
    assert (tmp_path / "matrix.csv").read_text().startswith("attack,fraction,defence,mean,std,seeds")
    table = sweep.format_matrix(m)
    assert "| flip |" in table and "| none |" in table and "average" in table
    # worst case over the attacks (the no-attack row excluded): the largest loss per defence
    worst = {w["defence"]: w for w in m["worst_case"]}
    for d in ("average", "loss"):
        expected = max((rows[(a, d)] for a in ("uniform", "flip")), key=lambda r: r["mean"])
        assert worst[d]["worst"] == expected["mean"] and worst[d]["worst_attack"] == expected["attack"]
        assert worst[d]["attacks"] == 2
    assert "| **worst case** |" in table
    assert (tmp_path / "worst_case.png").stat().st_size > 5_000
    assert (tmp_path / "worst_case.csv").read_text().startswith("fraction,defence,worst,worst_attack,attacks")
    for cell in json.loads((tmp_path / "cells.json").read_text())["cells"]:
        cell_dir = tmp_path / "cells" / cell["id"]
        assert (cell_dir / "summary.json").is_file() and (cell_dir / "run" / "curves.csv").is_file()


def test_parallel_processes_give_the_same_cells(tmp_path):
    data = sweep_dict(attacks=[{"name": "alie"}], seeds=[0, 1], baseline=False)
    sweep.run_sweep(data, tmp_path / "serial", jobs=1, progress=False, figures=False)
    sweep.run_sweep(data, tmp_path / "parallel", jobs=2, progress=False, figures=False)
    assert results_of(tmp_path / "serial") == results_of(tmp_path / "parallel")


def test_server_mode_cells_are_per_method_and_plot(tmp_path):
    data = {
        "name": "srv", "mode": "server", "iterations": 2,
        "graph": {"family": "star", "n": 11},
        "task": {"name": "federated_images", "datasets": ["mnist"], "train_per_client": 10, "test_per_client": 5},
        "server": {"alpha": 1.0, "f": 2, "meta_test": {"clients": 0}},
        "sweep": {"attacks": [{"name": "gaussian"}, {"name": "alie", "scope": "all"}], "byzantine": [0.2],
                  "defences": ["fedrep", "br-mtrl+gm", "br-mtrl+krum"]},
    }
    cfg, spec = sweep.load_sweep(data=data)
    cells = sweep.plan(cfg, spec)
    assert len(cells) == 3 * 3  # (none, gaussian, alie) x 3 methods
    assert {c["byzantine"] for c in cells if c["attack"] != "none"} == {2}  # 20% of 10 clients
    assert sweep.metric_name(cfg, spec) == "test_acc"
    # the heatmap of finished cells (written here by hand: accuracies)
    root = tmp_path
    (root / "cells").mkdir()
    (root / "cells.json").write_text(json.dumps({"metric": "test_acc", "defences": spec.defences, "mode": "server",
                                                "cells": [{k: c[k] for k in ("id", "attack", "fraction", "seed",
                                                                             "byzantine", "defences", "hash")}
                                                          for c in cells]}))
    for i, c in enumerate(cells):
        (root / "cells" / c["id"]).mkdir()
        (root / "cells" / c["id"] / "summary.json").write_text(json.dumps(
            {**{k: c[k] for k in ("id", "attack", "fraction", "seed", "byzantine", "defences", "hash")},
             "results": {c["defences"][0]: {"test_acc": 0.1 * (i % 10)}}}))
    m = sweep.write_matrix(root)
    assert len(m["rows"]) == 9 and (root / "matrix.png").is_file()
    # accuracy: the worst case is the lowest over the two attacks
    acc = {(r["attack"], r["defence"]): r["mean"] for r in m["rows"]}
    assert {w["defence"]: w["worst"] for w in m["worst_case"]} == {
        d: min(acc[("gaussian", d)], acc[("alie", d)]) for d in spec.defences}
    assert (root / "worst_case.png").is_file()


@pytest.mark.parametrize("over, words", [
    ({"byzantine": [0.0]}, ["sweep.byzantine", "(0, 1)"]),
    ({"attacks": [{"name": "nope"}]}, ["nope", "uniform"]),
    ({"attacks": [{"name": "alie"}, {"name": "alie"}]}, ["distinct label"]),
    ({"attacks": [{"name": "label_flip"}]}, ["label_flip", "target_localization"]),
    ({"metric": "accuracy"}, ["sweep.metric", "loss, msd"]),
    ({"defences": ["median"]}, ["median", "allowed", "loss"]),
    ({"seeds": [1, 1]}, ["distinct"]),
])
def test_sweep_config_errors_name_the_key(over, words):
    with pytest.raises(ConfigError) as e:
        sweep.load_sweep(data=sweep_dict(**over))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_gossip_only_attacks_are_refused_in_server_mode():
    data = {"name": "srv", "mode": "server", "graph": {"family": "star", "n": 11}, "server": {"alpha": 0.5},
            "task": {"name": "federated_images", "datasets": ["mnist"]},
            "sweep": {"attacks": [{"name": "dissensus"}], "byzantine": [0.2]}}
    with pytest.raises(ConfigError, match="dissensus.*gossip mode only"):
        sweep.load_sweep(data=data)


def test_cli_sweep_and_plot(tmp_path, capsys):
    from p2pmtl.cli import main
    from p2pmtl.experiments.config import _to_toml

    path = tmp_path / "s.toml"
    path.write_text(_to_toml(sweep_dict(baseline=False)))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    assert "1 cells run, 0 already finished" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    assert "0 cells run, 1 already finished" in capsys.readouterr().out
    assert main(["sweep", str(out), "--plot"]) == 0
    assert "| uniform |" in capsys.readouterr().out
    assert main(["sweep", str(path), "--set", "sweep.byzantine=[2.0]"]) == 2


@pytest.mark.slow  # starting Ray and a worker that imports torch takes 20-100 s on 2 cores
def test_ray_backend_gives_the_same_cells(tmp_path):
    ray = pytest.importorskip("ray")
    data = sweep_dict(attacks=[{"name": "alie"}], baseline=False)  # one cell: one Ray worker to start
    sweep.run_sweep(data, tmp_path / "local", jobs=1, progress=False, figures=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        m = sweep.run_sweep(data, tmp_path / "ray", backend="ray", progress=False, figures=False)
        again = sweep.run_sweep(data, tmp_path / "ray", backend="ray", progress=False, figures=False)
    finally:
        ray.shutdown()
    assert m["ran"] == 1 and again["ran"] == 0 and again["skipped"] == 1
    assert results_of(tmp_path / "local") == results_of(tmp_path / "ray")
    for cid in results_of(tmp_path / "ray"):
        assert (tmp_path / "ray" / "cells" / cid / "run" / "curves.csv").is_file()


def test_guarantee_check_compares_each_agent_with_non_cooperation(tmp_path, tiny_dict):
    from p2pmtl.experiments.config import load_config
    from p2pmtl.experiments.runner import run_experiment
    from p2pmtl.experiments.sweep_guarantee import check

    tiny_dict["rules"]["names"] = ["noncoop", "loss"]
    cfg = load_config(data=tiny_dict)
    run_experiment(cfg, tmp_path, progress=False, figures=False)
    rep = {(r["scenario"], r["metric"]): r for r in check(tmp_path)}
    assert set(rep) == {(s, m) for s in ("clean", "attacked") for m in ("loss", "msd")}
    assert rep[("attacked", "msd")]["agents"] == 16  # the 16 normal agents
    assert 0 <= rep[("attacked", "loss")]["share_worse"] <= 1
    # the noncoop rule against itself is never worse
    same = check(tmp_path, rule="noncoop", baseline="noncoop")
    assert all(r["share_worse"] == 0 and r["worst_ratio"] == 1 for r in same)
