"""Property-based hardening tests (hypothesis): generated settings, hostile message values and
generated graphs. The invariant of the whole program: a run either finishes with finite metrics
for every normal agent under every robust rule, or stops before any work with a
:class:`ConfigError` (exit status 2 on the command line) whose message names a key.

The default profile (``ci``, in conftest.py) keeps each property to a few dozen examples;
``HYPOTHESIS_PROFILE=slow python -m pytest tests/test_hostile_properties.py`` runs many more.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2pmtl.robust.attacks import ATTACKS, Attack, AttackContext
from p2pmtl.cli import main
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.experiments.runner import run_experiment

from conftest import tiny_config_dict

HOSTILE = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 3e38, -3e38, 1e-320, 0.0]
ROBUST_RULES = ["noncoop", "loss", "distance"]


# --------------------------------------------------------------------------- a hostile attack


class HostileValues(Attack):
    """m_b = values[b % len(values)] in every coordinate (NaN, inf, 1e308, ...)."""

    def __init__(self, *, values: list = (float("nan"),)) -> None:
        self.values = [float(v) for v in values]

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        b, d = len(ctx.byzantine), ctx.honest.shape[1]
        vals = torch.tensor([self.values[i % len(self.values)] for i in range(b)], dtype=ctx.honest.dtype)
        return vals[:, None].expand(b, d).clone()


@pytest.fixture(autouse=True, scope="module")
def _hostile_attack():
    """Registered only while this module's tests run (other tests list every attack)."""
    ATTACKS.register("hostile_values", "test only: every Byzantine agent sends one given value everywhere")(
        HostileValues)
    yield
    ATTACKS.unregister("hostile_values")


def _small(**over) -> dict:
    d = tiny_config_dict(iterations=6, **over)
    d["graph"] = {"family": "random_geometric", "n": 12, "radius": 1.5, "box": 3.0, "max_neighbors": 5}
    d["output"] = {"window": 3, "figures": False}
    d["scenarios"] = [{"name": "clean", "byzantine": 0},
                      {"name": "attacked", "byzantine": 3, "attack": {"name": "uniform", "low": 15.0, "high": 16.0}}]
    return d


def _assert_finite_normal_metrics(summary: dict, rules: list[str]) -> None:
    assert summary["status"] == "finished"
    for scen, per_rule in summary["results"].items():
        for rule in rules:
            for metric in ("loss", "msd"):
                value = per_rule[rule][metric]["last_window_mean"]
                assert math.isfinite(value), (scen, rule, metric, value)


def _metrics_csv_finite(run_dir: Path, rules: list[str]) -> None:
    import csv

    with open(run_dir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("rule") in rules:
                assert math.isfinite(float(row["value"])), row


# --------------------------------------------------------------------------- generated settings

# (key, values that may be valid or not); a generated config sets one to three of them.
MUTATIONS: dict[str, st.SearchStrategy] = {
    "iterations": st.sampled_from([0, -1, 1, 3, 2.5, "x"]),
    "seed": st.sampled_from([-5, 0, 7, 2**31]),
    "graph.n": st.sampled_from([-1, 0, 1, 2, 5, 12, 1.5]),
    "graph.radius": st.sampled_from([0.0, -1.0, 0.5, 2.0, float("nan"), float("inf")]),
    "graph.max_neighbors": st.sampled_from([0, 1, 3, -2]),
    "task.mu": st.sampled_from([0.0, 0.05, 1.0, 3.0, float("nan")]),
    "task.targets": st.sampled_from([[], [[1.0, 2.0]], [[float("nan"), 1.0]], [[1e308, 1e308]]]),
    "task.init_range": st.sampled_from([[0.0, 1.0], [1.0, 0.0], [0.0, float("inf")]]),
    "task.noise_d": st.sampled_from([[0.1, 0.1], [-0.1, 0.1], [0.0, 0.0]]),
    "rules.names": st.sampled_from([[], ["loss"], ["nope"], ["noncoop", "loss", "distance"]]),
    "rules.nu": st.sampled_from([0.0, 0.5, 1.0, 1.5, float("nan")]),
    "rules.init_score": st.sampled_from([0.0, 1.0, float("inf")]),
    "clock.compute_time": st.sampled_from([0.0, 1.0, -1.0, float("inf"), 1e308]),
    "clock.latency": st.sampled_from([0.0, 0.5, float("nan"), 1e20]),
    "output.window": st.sampled_from([0, 1, 3, 100]),
    "scenarios.1.byzantine": st.sampled_from([0, 3, 11, 12, 50, -1, [0, 1], [0, 99], [0, 0]]),
    "scenarios.1.name": st.sampled_from(["ok_name", "../up", "a b", "", "x" * 200]),
    "scenarios.1.attack.low": st.sampled_from([15.0, 17.0, float("nan"), -1e308]),
    "network.protocol": st.sampled_from(["sync", "async", "carrier-pigeon"]),
    "network.loss": st.sampled_from([0.0, 0.3, 1.0, 1.5]),
    "network.deadline": st.sampled_from([0.1, 1.5, 10.0, -1.0]),
    "network.bandwidth": st.sampled_from([1e6, 0.0, {"kind": "uniform", "low": 0.0, "high": 0.0}]),
    "network.speed": st.sampled_from([1.0, 0.0, {"kind": "lognormal", "median": 1.0, "sigma": 1e3},
                                      {"kind": "uniform", "low": 2.0, "high": 1.0}]),
}


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(MUTATIONS)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: MUTATIONS[k] for k in keys})))
def test_generated_settings_run_finite_or_stop_early_naming_a_key(tmp_path_factory, mutation):
    data = _small()
    for key, value in mutation.items():
        _set(data, key, value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = load_config(data=data)
    except ConfigError as e:
        text = str(e)
        named = [k for k in mutation if k.split(".")[-1] in text or k.split(".")[0] in text]
        assert named, f"error names none of {sorted(mutation)}:\n{text}"
        return
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_experiment(cfg, out, progress=False, figures=False, overwrite=True)
    robust = [r for r in cfg.rules.names if r in ROBUST_RULES]
    _assert_finite_normal_metrics(summary, robust)
    _metrics_csv_finite(out, robust)


def test_the_command_line_stops_with_status_2_and_one_line_naming_the_key(tmp_path, capsys):
    from p2pmtl.experiments.config import _to_toml

    data = _small()
    data["graph"]["radius"] = -1.0
    path = tmp_path / "bad.toml"
    path.write_text(_to_toml(data))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "graph.radius = -1.0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the error


# --------------------------------------------------------------------------- hostile messages


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(st.sampled_from(HOSTILE) | st.floats(allow_nan=True, allow_infinity=True, width=64),
                       min_size=1, max_size=3),
       byzantine=st.integers(1, 5),
       protocol=st.sampled_from(["sync", "async"]))
def test_hostile_gossip_messages_never_reach_a_normal_agents_metrics(tmp_path_factory, values, byzantine, protocol):
    data = _small()
    data["rules"] = {"names": ["noncoop", "average", "loss", "distance"]}
    data["scenarios"] = [{"name": "hostile", "byzantine": byzantine,
                          "attack": {"name": "hostile_values", "values": values}}]
    if protocol == "async":
        data["network"] = {"protocol": "async", "latency": 0.1}
    cfg = load_config(data=data)
    out = tmp_path_factory.mktemp("run")
    summary = run_experiment(cfg, out, progress=False, figures=False, overwrite=True)
    _assert_finite_normal_metrics(summary, ROBUST_RULES)
    _metrics_csv_finite(out, ROBUST_RULES)


# --------------------------------------------------------------------------- generated graphs


@st.composite
def edge_lists(draw):
    n = draw(st.integers(1, 10))
    pairs = [(i, j) for i in range(n) for j in range(n) if i < j]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    return n, edges


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(graph=edge_lists(), byzantine=st.integers(0, 4), fmt=st.sampled_from(["graphml", "edgelist"]))
def test_generated_graph_files_run_finite_or_are_refused(tmp_path_factory, graph, byzantine, fmt):
    n, edges = graph
    folder = tmp_path_factory.mktemp("graph")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    path = folder / f"g.{fmt}"
    if fmt == "graphml":
        nx.write_graphml(g, path)
    else:
        nx.write_edgelist(g, path, data=False)  # isolated nodes are not written: fewer agents
    data = _small()
    data["graph"] = {"family": "file", "path": str(path)}
    data["scenarios"] = [{"name": "attacked", "byzantine": byzantine,
                          "attack": {"name": "hostile_values", "values": [float("nan"), 1e308]}}]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # disconnected graphs warn
            cfg = load_config(data=data)
    except ConfigError as e:
        assert "graph.path" in str(e) or "byzantine" in str(e), str(e)
        return
    out = folder / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_experiment(cfg, out, progress=False, figures=False)
    _assert_finite_normal_metrics(summary, ROBUST_RULES)


@pytest.mark.parametrize("content, words", [
    (b"<graphml><graph><node id='a'/>", ["graph.path", "GraphML"]),
    (b"0 1\n1 banana\n", ["graph.path", "edge list"]),
    (b"\xff\xfe\x00garbage", ["graph.path"]),
    (b"", ["graph.path", "no nodes"]),
])
def test_malformed_graph_files_name_graph_path_and_the_parsers_complaint(tmp_path, content, words):
    suffix = ".graphml" if content.startswith(b"<graphml") else ".txt"
    path = tmp_path / f"g{suffix}"
    path.write_bytes(content)
    data = _small()
    data["graph"] = {"family": "file", "path": str(path)}
    with pytest.raises(ConfigError) as e:
        load_config(data=data)
    for w in words:
        assert w in str(e.value), str(e.value)
