"""The Python API as a user drives it: load a config from a path, a bundled name or a dict, run
it with or without keeping files, read the tables as DataFrames, draw into given axes, and read
finished runs, sweeps and studies back."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

import p2pmtl

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["iterations=12", "graph.n=20", "graph.box=1.5", "scenarios.1.byzantine=4", "scenarios.2.byzantine=19",
         "output.window=5"]


def test_top_level_exports_and_version():
    for name in ("load_config", "run", "sweep", "study", "load_results", "RunResults", "SweepResults",
                 "StudyResults", "ConfigError", "WeightRule", "CombineStep", "Attack", "Aggregator",
                 "PreAggregator", "Population", "SplitModel", "register_rule", "register_combine",
                 "register_attack", "register_aggregator", "register_pre_aggregator", "register_graph",
                 "register_task", "register_model", "register_dataset", "resolve_device"):
        assert hasattr(p2pmtl, name), name
        assert name in p2pmtl.__all__
    assert p2pmtl.__version__ == "0.1.0"
    with pytest.raises(AttributeError):
        p2pmtl.no_such_thing  # noqa: B018


def test_load_config_from_a_bundled_name_a_path_and_a_dict():
    by_name = p2pmtl.load_config("target_localization", overrides=["iterations=7"])
    by_path = p2pmtl.load_config(ROOT / "experiments" / "target_localization.toml", overrides=["iterations=7"])
    assert by_name.model_dump() == by_path.model_dump() and by_name.iterations == 7
    by_dict = p2pmtl.load_config({"graph": {"family": "ring", "n": 5}})
    assert by_dict.task.name == "target_localization"
    with pytest.raises(p2pmtl.ConfigError, match="bundled configs: .*target_localization"):
        p2pmtl.load_config("no_such_config")
    with pytest.raises(p2pmtl.ConfigError, match="graph.n = 0"):
        p2pmtl.load_config({"graph": {"family": "ring", "n": 0}})


def test_run_without_keeping_files_returns_dataframes_and_plots_into_given_axes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = p2pmtl.run("target_localization", overrides=SMALL)
    assert res.run_dir is None and res.status == "finished"
    assert not any(tmp_path.iterdir())  # nothing kept on disk
    assert isinstance(res.curves, pd.DataFrame) and isinstance(res.metrics, pd.DataFrame)
    assert {"scenario", "rule", "metric", "step", "mean", "min", "max"} <= set(res.curves.columns)
    table = res.table("loss")
    assert list(table.index) == ["no_attack", "byzantine_20", "byzantine_99"]
    assert list(table.columns) == ["noncoop", "average", "loss", "distance"]
    assert table.loc["no_attack", "loss"] == pytest.approx(
        res.summary["results"]["no_attack"]["loss"]["loss"]["last_window_mean"])
    backend = matplotlib.get_backend()
    fig = Figure()
    ax = fig.add_subplot()
    assert res.plot("loss", scenario="byzantine_20", ax=ax) is ax
    assert len(ax.lines) == 4 and ax.get_yscale() == "log"
    assert matplotlib.get_backend() == backend


def test_run_into_a_folder_then_load_it_back(tmp_path):
    out = tmp_path / "run"
    res = p2pmtl.run("target_localization", out=out, overrides=SMALL, figures=False)
    assert res.run_dir == out
    again = p2pmtl.load_results(out)
    assert isinstance(again, p2pmtl.RunResults)
    pd.testing.assert_frame_equal(again.table("msd"), res.table("msd"))
    assert again.config is not None and again.config.iterations == 12
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_a_bad_config_raises_before_any_work(tmp_path):
    with pytest.raises(p2pmtl.ConfigError, match="scenarios.byzantine_20.byzantine = 500"):
        p2pmtl.run("target_localization", out=tmp_path / "r", overrides=["scenarios.1.byzantine=500"])
    assert not (tmp_path / "r").exists()


def test_sweep_results_tables(tmp_path):
    data = {"name": "api_sweep", "iterations": 8, "graph": {"family": "ring", "n": 10},
            "rules": {"names": ["average", "loss"]}, "output": {"window": 4},
            "sweep": {"byzantine": [0.2], "seeds": [0], "jobs": 1,
                      "attacks": [{"name": "uniform", "low": 15.0, "high": 16.0}]}}
    res = p2pmtl.sweep(data, tmp_path / "sw", figures=False)
    assert isinstance(res, p2pmtl.SweepResults)
    assert set(res.matrix["defence"]) == {"average", "loss"}
    assert set(res.matrix["attack"]) == {"none", "uniform"}
    assert isinstance(p2pmtl.load_results(tmp_path / "sw"), p2pmtl.SweepResults)


def test_a_run_leaves_the_callers_torch_thread_count(tmp_path, monkeypatch):
    """`p2pmtl.run` and a local `p2pmtl.sweep` run on the config's `threads` and then give the
    caller its own count back (it used to stay at the config's: a notebook's torch went from 1
    thread to 2)."""
    monkeypatch.chdir(tmp_path)
    import torch

    import p2pmtl

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p2pmtl.run({"name": "t", "iterations": 3, "threads": 2, "graph": {"family": "ring", "n": 6},
                    "scenarios": [{"name": "clean", "byzantine": 0}], "output": {"figures": False}})
        assert torch.get_num_threads() == 1
        p2pmtl.sweep({"name": "t", "iterations": 3, "threads": 2, "graph": {"family": "ring", "n": 6},
                      "rules": {"names": ["loss"]}, "sweep": {"byzantine": [0.2], "seeds": [0], "jobs": 1,
                                "attacks": [{"name": "uniform", "low": 15.0, "high": 16.0}]}},
                     tmp_path / "sw", figures=False)  # cells run in this process, one after the other
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
