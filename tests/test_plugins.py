"""The platform as a user meets it: an installed plugin package (tests/plugin_example) adds a
weight rule with its own statistic, a combine step, an attack, an aggregator, a graph family, a
model, a dataset and a task with its own config; it is loaded by entry point, by ``--plugin``
and by the config's ``plugins`` key, and run through the CLI (``--jobs 2``), ``sweep`` and the
Python API. Components defined in ``__main__`` (a notebook) work in-process and are refused in
one line where worker processes would need them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path(__file__).resolve().parent / "plugin_example"
PLUGIN_FILE = EXAMPLE / "p2pmtl_example_plugin" / "__init__.py"

CONFIG = """
name = "plugged"
iterations = 25
[graph]
family = "two_cliques"
n = 12
bridges = 2
[task]
name = "mean_estimation"
dim = 4
[rules]
names = ["loss", "cosine", "closest_half", "average"]
params = { cosine = { floor = 0.2 } }
[output]
window = 10
[[scenarios]]
name = "clean"
[[scenarios]]
name = "mirror"
byzantine = 2
attack = { name = "mirror", scale = 3.0 }
"""


@pytest.fixture(autouse=True)
def _restore_registries():
    """In-process tests load the plugin; other test modules list every registered component,
    so whatever a test registers is removed afterwards."""
    import p2pmtl
    from p2pmtl.experiments import plugins

    registries = [getattr(p2pmtl, n) for n in ("RULES", "COMBINES", "ATTACKS", "AGGREGATORS", "PRE_AGGREGATORS",
                                               "GRAPHS", "TASKS", "MODELS", "IMAGE_SETS")]
    before = [set(r.names()) for r in registries]
    loaded = dict(plugins._loaded)
    yield
    for r, names in zip(registries, before):
        for name in set(r.names()) - names:
            r.unregister(name)
    for spec, module in list(plugins._loaded.items()):
        if spec not in loaded:
            del plugins._loaded[spec]
            sys.modules.pop(module, None)


def _env(entry_point: bool) -> dict:
    """A child environment: the package, plus the fake installed plugin when ``entry_point``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([str(EXAMPLE)] if entry_point else []))
    return env


def _p2pmtl(args: list[str], cwd: Path, entry_point: bool = False, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "p2pmtl", *args], cwd=cwd, env=_env(entry_point),
                          capture_output=True, text=True, timeout=timeout)


def test_an_installed_plugin_is_found_by_its_entry_point_and_marked_in_list(tmp_path):
    out = _p2pmtl(["list"], tmp_path, entry_point=True)
    assert out.returncode == 0, out.stderr
    for name in ("cosine", "closest_half", "median_of_neighbours", "mirror", "norm_filtered_mean", "two_cliques",
                 "mean_estimation", "tiny_mlp", "bars"):
        line = next(l for l in out.stdout.splitlines() if l.strip().startswith(name + " "))
        assert "[plugin: p2pmtl_example_plugin]" in line, line
    assert "[plugin" not in next(l for l in out.stdout.splitlines() if l.strip().startswith("loss "))
    bare = _p2pmtl(["list"], tmp_path, entry_point=False)
    assert "cosine" not in bare.stdout


def test_entry_point_plugin_runs_with_two_jobs_from_the_cli(tmp_path):
    cfg = tmp_path / "plugged.toml"
    cfg.write_text(CONFIG)
    out = _p2pmtl(["run", str(cfg), "--out", str(tmp_path / "run"), "--jobs", "2", "--quiet", "--no-figures"],
                  tmp_path, entry_point=True)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    res = summary["results"]
    assert set(res) == {"clean", "mirror"} and set(res["mirror"]) == {"loss", "cosine", "closest_half", "average"}
    # the mirror attack pulls plain averaging far off; the loss rule and the new filters hold
    msd = {r: res["mirror"][r]["msd"]["last_window_mean"] for r in res["mirror"]}
    assert msd["average"] > 3 * msd["loss"], msd
    assert msd["closest_half"] < msd["average"] and msd["cosine"] < msd["average"], msd


def test_plugin_by_path_on_the_command_line_and_in_the_config(tmp_path):
    cfg = tmp_path / "plugged.toml"
    cfg.write_text(CONFIG)
    by_flag = _p2pmtl(["run", str(cfg), "--plugin", str(PLUGIN_FILE), "--out", str(tmp_path / "a"), "-q",
                       "--no-figures"], tmp_path)
    assert by_flag.returncode == 0, by_flag.stderr
    (tmp_path / "sub").mkdir()
    rel = os.path.relpath(PLUGIN_FILE, tmp_path / "sub")
    cfg2 = tmp_path / "sub" / "plugged.toml"
    cfg2.write_text(f'plugins = ["{rel}"]\n' + CONFIG)  # relative to the config file
    by_key = _p2pmtl(["run", str(cfg2), "--out", str(tmp_path / "b"), "-q", "--no-figures"], tmp_path)
    assert by_key.returncode == 0, by_key.stderr
    a = (tmp_path / "a" / "metrics.csv").read_bytes()
    assert a == (tmp_path / "b" / "metrics.csv").read_bytes()  # same seed, same numbers, any loading path
    missing = _p2pmtl(["run", str(cfg), "--out", str(tmp_path / "c")], tmp_path)
    assert missing.returncode == 2
    assert "rules.names" in missing.stderr and "cosine" in missing.stderr and "Traceback" not in missing.stderr


def test_sweep_of_plugin_components_with_two_jobs(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(textwrap.dedent("""
        name = "plugsweep"
        iterations = 15
        [graph]
        family = "two_cliques"
        n = 10
        [task]
        name = "mean_estimation"
        [rules]
        names = ["loss", "cosine"]
        [sweep]
        byzantine = [0.2]
        seeds = [0, 1]
        attacks = [{ name = "mirror" }, { name = "uniform", low = 15.0, high = 16.0 }]
        """))
    out = _p2pmtl(["sweep", str(cfg), "--out", str(tmp_path / "sw"), "--jobs", "2", "-q", "--no-figures"],
                  tmp_path, entry_point=True)
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "sw" / "matrix.json").read_text())
    assert {r["attack"] for r in m["rows"]} == {"none", "mirror", "uniform"}
    assert {r["defence"] for r in m["rows"]} == {"loss", "cosine"}


def test_python_api_with_a_plugin_task_model_dataset_and_aggregator(tmp_path):
    import p2pmtl

    p2pmtl.load_plugins([str(PLUGIN_FILE)])
    data = {"name": "api", "iterations": 20, "graph": {"family": "two_cliques", "n": 8},
            "task": {"name": "mean_estimation", "dim": 2},
            "rules": {"names": ["loss", "closest_half"], "combine": "median_of_neighbours"},
            "scenarios": [{"name": "mirror", "byzantine": 1, "attack": {"name": "mirror"}}]}
    res = p2pmtl.run(data)
    assert res.run_dir is None and res.status == "finished"
    assert list(res.table("msd").columns) == ["loss", "closest_half"]
    assert __import__("numpy").isfinite(res.table("msd").to_numpy()).all()

    images = {"name": "imgs", "iterations": 2, "graph": {"family": "complete", "n": 4},
              "task": {"name": "digits", "datasets": ["bars"], "model": "tiny_mlp", "train_per_agent": 20,
                       "test_per_agent": 10, "batch_size": 8, "score_batch": 8},
              "rules": {"names": ["loss"]}, "scenarios": [{"name": "clean"}]}
    res = p2pmtl.run(images, out=tmp_path / "imgs")
    assert (tmp_path / "imgs" / "summary.json").is_file()
    assert 0.0 <= res.table("test_acc").iloc[0, 0] <= 1.0

    agg = p2pmtl.AGGREGATORS.get("norm_filtered_mean")()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    assert torch.allclose(agg(x), torch.tensor([0.5, 0.5]))
    server = {"name": "srv", "mode": "server", "iterations": 3, "graph": {"family": "star", "n": 7},
              "server": {"alpha": 1.0, "methods": ["fedavg+norm_filtered_mean"]},
              "scenarios": [{"name": "clean"}]}
    assert p2pmtl.run(server).status == "finished"


NOTEBOOK = """
import sys
import torch
import p2pmtl

@p2pmtl.register_rule("nb_self_heavy", "half on itself, half uniform over neighbours")
class SelfHeavy(p2pmtl.WeightRule):
    def __init__(self, **_):
        pass

    def scores(self, ctx):
        own = (ctx.edges.src == ctx.edges.dst).to(torch.float64)
        deg = ctx.edges.in_degree()[ctx.edges.dst].to(torch.float64)
        return own * (deg - 1).clamp_min(1) + (1 - own)

data = {"name": "nb", "iterations": 10, "graph": {"family": "ring", "n": 10},
        "rules": {"names": ["nb_self_heavy", "loss"]},
        "scenarios": [{"name": "a"}, {"name": "b", "byzantine": 2}]}
res = p2pmtl.run(data)                     # in-process: works
print("inprocess", res.status)
try:
    p2pmtl.run(data, jobs=2)               # workers cannot import __main__
except p2pmtl.ConfigError as e:
    print("refused", str(e).splitlines()[0])
"""


def test_components_defined_in_main_work_in_process_and_are_refused_for_workers(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)  # no `if __name__ == "__main__"` guard, as in a notebook
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(False), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "inprocess finished" in out.stdout
    refused = next(l for l in out.stdout.splitlines() if l.startswith("refused"))
    assert "rules.names = 'nb_self_heavy' is defined in __main__" in refused and "put it in a module" in refused
    assert "Traceback" not in out.stderr


def test_general_rule_weights_equal_a_plain_per_node_loop():
    """The cosine rule on the general path against a per-receiver Python loop (float64)."""
    import numpy as np

    from p2pmtl.core.edges import EdgeIndex
    from p2pmtl.rules.weights import RuleContext, normalise_scores

    import p2pmtl

    p2pmtl.load_plugins([str(PLUGIN_FILE)])
    rule = p2pmtl.RULES.get("cosine")(floor=0.1)
    rng = np.random.default_rng(0)
    src = np.array([0, 1, 2, 1, 2, 0, 2, 3, 3], dtype=np.int64)
    dst = np.array([0, 0, 0, 1, 1, 2, 2, 3, 2], dtype=np.int64)
    order = np.lexsort((src, dst))
    edges = EdgeIndex.from_arrays(src[order], dst[order], 4)
    psi = torch.as_tensor(rng.normal(size=(4, 3)))
    valid = torch.ones(edges.num_edges, dtype=torch.bool)
    valid[1] = False
    ctx = RuleContext(0, 0, edges, None, valid, messages=lambda: psi[edges.src], own=lambda: psi)
    got = normalise_scores(edges, rule.scores(ctx), valid)
    for k in range(4):
        ids = [e for e in range(edges.num_edges) if int(edges.dst[e]) == k]
        s = []
        for e in ids:
            l = int(edges.src[e])
            c = float(torch.dot(psi[k], psi[l]) / (psi[k].norm() * psi[l].norm()))
            ok = bool(valid[e]) or l == k
            s.append(max(c, 0.0) if (c >= 0.1 and ok) else 0.0)
        total = sum(s)
        want = [x / total for x in s] if total > 0 else [1.0 if int(edges.src[e]) == k else 0.0 for e in ids]
        assert torch.allclose(got[ids], torch.tensor(want, dtype=torch.float64)), (k, got[ids], want)


def test_clipped_combine_equals_a_plain_per_node_loop():
    from p2pmtl.core.edges import EdgeIndex
    from p2pmtl.rules.combine import CombineContext, make_combine

    g = torch.Generator().manual_seed(1)
    edges = EdgeIndex.from_arrays(__import__("numpy").array([0, 1, 2, 0, 1, 1, 2]),
                                  __import__("numpy").array([0, 0, 0, 1, 1, 2, 2]), 3)
    own = torch.randn(3, 4, generator=g, dtype=torch.float64)
    msgs = torch.randn(edges.num_edges, 4, generator=g, dtype=torch.float64) * 5
    msgs[edges.src == edges.dst] = own[edges.dst[edges.src == edges.dst]]
    w = torch.rand(edges.num_edges, generator=g, dtype=torch.float64)
    w = w / edges.segment_sum(w)[edges.dst]
    got = make_combine("clipped", tau=1.5).combine(CombineContext(edges, msgs, None, w, own))
    for k in range(3):
        x = own[k].clone()
        for e in range(edges.num_edges):
            if int(edges.dst[e]) == k:
                z = msgs[e] - own[k]
                x += w[e] * z * min(1.0, 1.5 / float(z.norm())) if float(z.norm()) > 0 else 0 * z
        assert torch.allclose(got[k], x)


def test_lanes_do_not_depend_on_their_neighbours_lanes(tmp_path):
    """Adding a plugin rule (general path) or a combine step beside the loss rule leaves the
    loss lane's numbers unchanged."""
    import p2pmtl

    p2pmtl.load_plugins([str(PLUGIN_FILE)])
    base = {"name": "lanes", "iterations": 15, "graph": {"family": "ring", "n": 12},
            "scenarios": [{"name": "u", "byzantine": 2}]}
    alone = p2pmtl.run({**base, "rules": {"names": ["loss"]}})
    mixed = p2pmtl.run({**base, "rules": {"names": ["loss", "cosine", "closest_half"]}})
    a = alone.metrics[alone.metrics.rule == "loss"].reset_index(drop=True)
    b = mixed.metrics[mixed.metrics.rule == "loss"].reset_index(drop=True)
    assert a["value"].tolist() == b["value"].tolist()


def test_unknown_rule_parameter_is_a_config_error_naming_it():
    import p2pmtl

    p2pmtl.load_plugins([str(PLUGIN_FILE)])
    with pytest.raises(p2pmtl.ConfigError, match=r"rules.params.cosine: .*floor = 3"):
        p2pmtl.load_config({"graph": {"family": "ring", "n": 5}, "rules": {"names": ["cosine"],
                                                                            "params": {"cosine": {"floor": 3}}}})


def test_an_unguarded_script_with_parallel_work_fails_in_a_few_lines(tmp_path):
    """A script calling p2pmtl.run(..., jobs=2) at its top level: spawned workers re-run it;
    each stops with one line, and the parent says what to do."""
    script = tmp_path / "unguarded.py"
    script.write_text('import p2pmtl\n'
                      'p2pmtl.run({"graph": {"family": "ring", "n": 8}, "iterations": 5,\n'
                      '            "scenarios": [{"name": "a"}, {"name": "b", "byzantine": 1}]}, jobs=2)\n')
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(False), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert 'if __name__ == "__main__":' in out.stderr.splitlines()[-1]
    assert len(out.stderr.splitlines()) < 20, out.stderr
