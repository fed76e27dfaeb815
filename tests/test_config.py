"""Bad configs fail early with the key, the value and what is allowed."""
import pytest

from p2pmtl.experiments.config import ConfigError, dump_config, load_config


def error_of(data, overrides=()):
    with pytest.raises(ConfigError) as exc:
        load_config(data=data, overrides=list(overrides))
    return str(exc.value)


def test_valid_config_loads_and_round_trips(tiny_dict, tmp_path):
    cfg = load_config(data=tiny_dict)
    assert cfg.graph.family == "random_geometric" and cfg.graph.params["n"] == 20
    path = tmp_path / "resolved.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_unknown_key_is_named_with_allowed_keys(tiny_dict):
    tiny_dict["iteratons"] = 5
    msg = error_of(tiny_dict)
    assert "iteratons" in msg and "unknown key" in msg and "iterations" in msg


def test_unknown_nested_key(tiny_dict):
    tiny_dict["rules"]["forgetting"] = 0.1
    msg = error_of(tiny_dict)
    assert "rules.forgetting" in msg and "nu" in msg


def test_wrong_type_and_range(tiny_dict):
    msg = error_of(tiny_dict, ["iterations=-3"])
    assert "iterations" in msg and "-3" in msg and "allowed: >= 1" in msg
    msg = error_of(tiny_dict, ["rules.nu=abc"])
    assert "rules.nu" in msg and "abc" in msg


def test_unknown_rule_lists_allowed(tiny_dict):
    tiny_dict["rules"]["names"] = ["loss", "median"]
    msg = error_of(tiny_dict)
    assert "median" in msg and "noncoop" in msg and "distance" in msg


def test_graph_errors(tiny_dict):
    tiny_dict["graph"] = {"family": "hypercube", "n": 4}
    assert "hypercube" in error_of(tiny_dict) and "ring" in error_of(tiny_dict)
    tiny_dict["graph"] = {"family": "ring", "n": 10, "radius": 2.0}
    msg = error_of(tiny_dict)
    assert "graph.radius" in msg and "ring" in msg
    tiny_dict["graph"] = {"family": "ring", "n": "ten"}
    assert "graph.n" in error_of(tiny_dict) and "ten" in error_of(tiny_dict)
    tiny_dict["graph"] = {"topology": "nowhere"}
    assert "nowhere" in error_of(tiny_dict) and "li2020_target" in error_of(tiny_dict)


def test_attack_errors(tiny_dict):
    tiny_dict["scenarios"][1]["attack"] = {"name": "uniform", "low": 3.0, "high": 1.0}
    assert "high" in error_of(tiny_dict)
    tiny_dict["scenarios"][1]["attack"] = {"name": "uniform", "redraw": "sometimes"}
    msg = error_of(tiny_dict)
    assert "sometimes" in msg and "every_step" in msg
    tiny_dict["scenarios"][1]["attack"] = {"name": "lie"}
    assert "lie" in error_of(tiny_dict) and "uniform" in error_of(tiny_dict)


def test_overrides(tiny_dict):
    cfg = load_config(data=tiny_dict, overrides=["iterations=7", "scenarios.1.byzantine=2",
                                                   "graph.topology=ring100", "name=hello world"])
    assert cfg.iterations == 7 and cfg.scenarios[1].byzantine == 2 and cfg.name == "hello world"
    assert cfg.graph.family == "random_geometric"  # explicit family wins over the named spec
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(data=tiny_dict, overrides=["iterations"])
    with pytest.raises(ConfigError, match="list index"):
        load_config(data=tiny_dict, overrides=["scenarios.9.byzantine=1"])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("iterations = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_too_many_byzantine_is_an_early_error(tiny_dict):
    with pytest.raises(ConfigError, match=r"scenarios.attacked.byzantine = 50: at most 19 of the 20 agents"):
        load_config(data=tiny_dict, overrides=["scenarios.1.byzantine=50"])
    with pytest.raises(ConfigError, match=r"every one of the 20 agents is Byzantine"):
        load_config(data=tiny_dict, overrides=[f"scenarios.1.byzantine={list(range(20))}"])
    cfg = load_config(data=tiny_dict, overrides=["scenarios.1.byzantine=19"])  # one normal agent is enough
    assert cfg.scenarios[1].byzantine == 19


def test_every_bundled_experiment_config_is_valid():
    from pathlib import Path

    import tomllib

    from p2pmtl.experiments.study import load_study

    files = sorted(Path("experiments").glob("*.toml"))
    assert len(files) >= 6
    studies = 0
    for f in files:
        if "variants" in tomllib.loads(f.read_text()):  # a study: every variant's config must be valid
            load_study(f)
            studies += 1
        else:
            load_config(f)
    assert studies >= 3
