"""Every setting is range-checked where the config is loaded: the error names the key, the
value and what is allowed, before any work starts."""
from __future__ import annotations

import warnings

import pytest

from p2pmtl.experiments.config import ConfigError, ConfigWarning, load_config
from p2pmtl.graphs.families import build_graph, check_family_params

BASE = "experiments/target_localization.toml"
SERVER = ["graph={family='star', n=11}", "mode='server'", "scenarios=[{name='a'}]"]

# (overrides, words the error must contain: the key, the value, what is allowed)
BAD = {
    "n = 0": (["graph={family='complete', n=0}"], ["graph.n = 0", "allowed: >= 1"]),
    "negative n": (["graph={family='ring', n=-3}"], ["graph.n = -3"]),
    "k >= n": (["graph={family='watts_strogatz', n=10, k=12, p=0.1}"], ["graph.k = 12", "< n = 10"]),
    "m >= n": (["graph={family='barabasi_albert', n=5, m=5}"], ["graph.m = 5", "< n = 5"]),
    "radius 0": (["graph.radius=0"], ["graph.radius = 0", "allowed: > 0"]),
    "radius nan": (["graph.radius=nan"], ["graph.radius = nan", "finite"]),
    "box inf": (["graph.box=inf"], ["graph.box = inf", "finite"]),
    "p > 1": (["graph={family='erdos_renyi', n=10, p=2.0}"], ["graph.p = 2.0", "allowed: <= 1"]),
    "p < 0": (["graph={family='watts_strogatz', n=10, k=2, p=-0.5}"], ["graph.p = -0.5"]),
    "grid rows 0": (["graph={family='grid_2d', rows=0, cols=3}"], ["graph.rows = 0"]),
    "star without clients": (["graph={family='star', n=1}"], ["graph.n = 1", "n >= 2"]),
    "max_neighbors < 1": (["graph.max_neighbors=-1"], ["graph.max_neighbors = -1"]),
    "target nan": (["task.targets=[[nan, 1.0]]"], ["task.targets", "finite"]),
    "target huge": (["task.targets=[[1e308, 1.0]]"], ["task.targets", "1000000"]),
    "jitter inf": (["task.target_jitter=inf"], ["task.target_jitter = inf"]),
    "negative noise": (["task.noise_u=[0.01, -5]"], ["task.noise_u", ">= 0"]),
    "reversed range": (["task.init_range=[1.0, 0.0]"], ["task.init_range", "low <= high"]),
    "mu nan": (["task.mu=nan"], ["task.mu = nan", "finite"]),
    "bandwidth uniform(0, 0)": (["network={bandwidth={kind='uniform', low=0.0, high=0.0}}"],
                                ["network.bandwidth.low = 0.0", ">= 1"]),
    "bandwidth tiny": (["network={bandwidth=1e-300}"], ["network.bandwidth.value = 1e-300", ">= 1"]),
    "speed uniform from 0": (["network={speed={kind='uniform', low=0.0, high=2.0}}"], ["network.speed.low", "> 0"]),
    "lognormal sigma huge": (["network={speed={kind='lognormal', median=1.0, sigma=1000.0}}"],
                             ["network.speed.sigma = 1000.0", "10"]),
    "compute inf": (["clock.compute_time=inf"], ["clock.compute_time = inf", "finite"]),
    "latency overflowing": (["clock.latency=1e308"], ["clock.latency = 1e+308", "1000000000000"]),
    "deadline no step meets": (["network={deadline=0.5}"], ["network.deadline = 0.5", "no local step"]),
    "every agent Byzantine": (["scenarios=[{name='a', byzantine=100}]"], ["scenarios.a.byzantine = 100", "at most 99"]),
    "Byzantine ids out of range": (["scenarios=[{name='a', byzantine=[5, 200]}]"], ["scenarios.a.byzantine", "< 100"]),
    "no rules": (["rules.names=[]"], ["rules.names", "at least one"]),
    "no methods": (SERVER + ["server.methods=[]"], ["server.methods", "at least one"]),
    "negative seed": (["seed=-1"], ["seed = -1", ">= 0"]),
    "scenario name escapes": (["scenarios=[{name='../x'}]"], ["scenarios.0.name = '../x'", "safe name"]),
    "krum with too few picked": (SERVER + ["server.methods=['fedavg+krum']", "server.f=3"],
                                 ["server.alpha = 0.2 picks 2", "server.f = 3", "n >= 2f + 3"]),
    "alpha picks too few": (SERVER + ["server.methods=['fedavg+krum']", "server.alpha=0.05"],
                            ["server.alpha = 0.05 picks 1"]),
    "trimmed mean f too large": (SERVER + ["server.methods=['fedavg+trimmed_mean']", "server.f=1"],
                                 ["trimmed_mean", "n > 2f"]),
    "nnm f too large": (SERVER + ["server.methods=['fedavg+gm']", "server.pre=['nnm']", "server.f=2"], ["nnm", "f = 2"]),
    "unknown aggregator": (SERVER + ["server.methods=['fedavg+nope']"], ["server.methods", "'fedavg+nope'"]),
    "server Byzantine = clients": (SERVER[:2] + ["server.alpha=1.0", "server.methods=['fedavg+gm']",
                                                 "scenarios=[{name='a', byzantine=10}]"],
                                   ["scenarios.a.byzantine = 10", "10 clients"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_nonsense_is_refused_naming_key_value_and_allowed(case):
    overrides, words = BAD[case]
    with pytest.raises(ConfigError) as e:
        load_config(BASE, overrides)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_edge_cases_that_must_still_work():
    cfg = load_config(BASE, ["scenarios=[{name='a', byzantine=99}]"])  # one normal agent left
    assert cfg.scenarios[0].byzantine == 99
    load_config(BASE, ["network={deadline=1.0}"])  # exactly one compute time
    load_config(BASE, SERVER + ["server.methods=['fedavg+krum']", "server.alpha=0.3"])  # 3 picked: 2f+3 with f=0


def test_long_windows_warn_only_when_set():
    from conftest import tiny_config_dict

    data = tiny_config_dict(iterations=20)
    del data["output"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_config(data=data)  # default window 100 > 20: not the user's doing
        assert not [x for x in w if issubclass(x.category, ConfigWarning)]
        load_config(data=data, overrides=["output.window=50"])
    assert any("output.window = 50 is longer than the run" in str(x.message) for x in w)


def test_a_deadline_below_a_typical_step_warns():
    with pytest.warns(ConfigWarning, match="below a typical step"):
        load_config(BASE, ["network={deadline=1.0, speed={kind='uniform', low=0.5, high=2.0}}"])


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe name = 1", ["not UTF-8"]),
    (b"name = ", ["not valid TOML"]),
])
def test_unreadable_config_files(tmp_path, content, words):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_graph_families_check_their_parameters_from_the_signature():
    assert check_family_params("ring", {"n": 5}) == {"n": 5}
    with pytest.raises(ValueError, match=r"graph.n = 'five'"):
        check_family_params("ring", {"n": "five"})
    with pytest.raises(ValueError, match=r"graph.q: not a parameter of family 'ring'; allowed: n"):
        check_family_params("ring", {"n": 5, "q": 1})
    with pytest.raises(ValueError, match=r"needs graph.p"):
        check_family_params("erdos_renyi", {"n": 5})
    assert build_graph("grid_2d", {"rows": 2, "cols": 3}, seed=0).number_of_nodes() == 6
