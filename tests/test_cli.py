"""The command line end to end on a tiny config, outputs, Ctrl-C safety, the clock."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmtl.cli import main
from p2pmtl.experiments.config import dump_config, load_config
from p2pmtl.engine.gossip import GossipEngine

from conftest import tiny_config_dict


@pytest.fixture
def tiny_file(tmp_path):
    cfg = load_config(data=tiny_config_dict())
    path = tmp_path / "tiny.toml"
    path.write_text(dump_config(cfg))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_end_to_end(tiny_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_file), "--out", str(out), "--no-progress",
                 "--set", "clock.compute_time=0.5", "--set", "clock.latency=0.25"]) == 0
    printed = capsys.readouterr().out
    assert "attacked" in printed and "results in" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and not summary["interrupted"]
    assert set(summary["results"]) == {"clean", "attacked"}
    assert set(summary["results"]["attacked"]) == {"noncoop", "average", "loss", "distance"}
    rows = read_csv(out / "metrics.csv")
    assert {r["metric"] for r in rows} == {"loss", "msd"}
    attacked = [r for r in rows if r["scenario"] == "attacked" and r["rule"] == "loss" and r["metric"] == "loss"]
    assert len(attacked) == 30 * 16  # 30 iterations x 16 normal agents (4 Byzantine not recorded)
    last = max(attacked, key=lambda r: int(r["step"]))
    assert float(last["time"]) == pytest.approx(30 * 0.75)  # simulated seconds, not wall clock
    assert float(last["bytes"]) > 0
    for png in ("loss.png", "msd.png", "network.png", "weights_attacked.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "config.toml").is_file()
    assert main(["plot", str(out)]) == 0


def test_rerun_gives_identical_metrics(tiny_file, tmp_path):
    for name in ("a", "b"):
        assert main(["run", str(tiny_file), "--out", str(tmp_path / name), "--no-progress", "--no-figures"]) == 0
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_ctrl_c_leaves_a_usable_partial_run(tiny_file, tmp_path, monkeypatch):
    real_step = GossipEngine.step
    calls = {"n": 0}

    def step(self, i):
        calls["n"] += 1
        if calls["n"] == 45:  # during the second scenario
            raise KeyboardInterrupt
        return real_step(self, i)

    monkeypatch.setattr(GossipEngine, "step", step)
    out = tmp_path / "partial"
    assert main(["run", str(tiny_file), "--out", str(out), "--no-progress"]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and not summary["finished"]
    assert set(summary["results"]) == {"clean"}  # the finished scenario is summarised
    rows = read_csv(out / "metrics.csv")
    assert {r["scenario"] for r in rows} == {"clean", "attacked"}  # rows written as they came
    assert (out / "loss.png").is_file()


def test_config_error_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('iterations = 0\n[graph]\nfamily = "ring"\nn = 5\n')
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "iterations = 0" in err and not (tmp_path / "x").exists()


def test_list_as_a_module():
    out = subprocess.run([sys.executable, "-m", "p2pmtl", "list"], capture_output=True, text=True, check=True).stdout
    for word in ("loss", "distance", "uniform", "random_geometric", "target_localization", "li2020_target"):
        assert word in out


@pytest.mark.parametrize("cmd", [[], ["run"], ["list"], ["plot"], ["bench"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out


def test_parallel_scenarios_equal_sequential(tiny_file, tmp_path):
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert main(["run", str(tiny_file), "--out", str(seq), "--no-progress", "--no-figures"]) == 0
    assert main(["run", str(tiny_file), "--out", str(par), "--no-progress", "--no-figures", "--jobs", "2"]) == 0
    assert (seq / "metrics.csv").read_bytes() == (par / "metrics.csv").read_bytes()
    assert (seq / "curves.csv").read_bytes() == (par / "curves.csv").read_bytes()
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (seq, par))
    assert s1["results"] == s2["results"] and s2["finished"]
    assert not (par / "parts").exists()
    assert sorted(p.name for p in (seq / "arrays").iterdir()) == sorted(p.name for p in (par / "arrays").iterdir())


def test_group_figure_keeps_a_scenario_whose_normal_agents_sit_in_one_group(tmp_path, monkeypatch):
    """With 99 Byzantine agents the only honest agent is in one group: its column must stay."""
    from p2pmtl.io import figures as plotting

    curves = [dict(scenario=sc, rule="loss", group=g, metric="loss", step=str(i), mean="1", min="1", max="1")
              for sc, groups in (("clean", ["0", "1"]), ("byz99", ["1"])) for g in groups for i in range(3)]
    seen = {}
    real = plotting.new_figure

    def spy(rows, cols, **kw):
        seen["cols"] = cols
        return real(rows, cols, **kw)

    monkeypatch.setattr(plotting, "new_figure", spy)
    plotting.plot_metric_by_group(tmp_path, curves, "loss", ["0", "1"])
    assert seen["cols"] == 2


def test_importing_and_plotting_never_change_the_matplotlib_backend(tmp_path):
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import p2pmtl, p2pmtl.io.figures, p2pmtl.experiments.sweep; "
            "r = p2pmtl.run({'graph': {'family': 'ring', 'n': 6}, 'iterations': 3}, out='r', figures=True); "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "r" / "loss.png").is_file()


@pytest.mark.parametrize("args, said", [
    (["--only", "scale", "--sizes", "0"], "argument --sizes: 0: allowed: an integer >= 2"),
    (["--only", "scale", "--scale-iterations", "0"], "argument --scale-iterations: 0: allowed: an integer >= 1"),
    (["--only", "scale", "--scale-threads", "0"], "argument --scale-threads: 0: allowed: an integer >= 1"),
    (["--only", "scale", "--scale-loss", "2"], "argument --scale-loss: 2.0: allowed: a probability in [0, 1]"),
    (["--only", "scale", "--scale-loss", "x"], "argument --scale-loss: 'x' is not a number"),
    (["--only", "scale", "--process-agents", "-5"], "argument --process-agents: -5: allowed: an integer >= 0"),
    (["--only", "scale", "--process-iterations", "0"], "argument --process-iterations: 0: allowed: an integer >= 1"),
    (["--only", "linear", "--iterations", "0"], "argument --iterations: 0: allowed: an integer >= 1"),
    (["--only", "bank", "--bank-threads", "0"], "argument --bank-threads: 0: allowed: an integer >= 1"),
    (["--only", "bank", "--bank-sizes", "1"], "argument --bank-sizes: 1: allowed: an integer >= 2"),
    (["--only", "bank", "--bank-clients", "-1"], "argument --bank-clients: -1: allowed: an integer >= 0"),
    (["--only", "graphs", "--graph-networkx-max", "-1"], "argument --graph-networkx-max: -1: allowed: an integer >= 0"),
    (["--only", "aggregators", "--agg-n", "2"], "argument --agg-n: 2: allowed: an integer >= 3"),
    (["--only", "aggregators", "--agg-dim", "0"], "argument --agg-dim: 0: allowed: an integer >= 1"),
])
def test_bench_refuses_bad_numbers_before_any_timing(args, said, capsys):
    """Every numeric option of `p2pmtl bench` is checked as it is parsed (these used to fail
    deep inside a child process, a division by zero or networkx), naming the option, the value
    and what is allowed."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def test_bench_refuses_a_client_count_the_server_round_cannot_run(capsys, tmp_path, monkeypatch):
    """Too few clients for the Table II config's Krum: refused before the bank rounds are timed
    (the config is the bundled one, found from any folder: it was read from the working folder)."""
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "--only", "bank", "--bank-sizes", "2", "--bank-clients", "5"])
    out = capsys.readouterr()
    assert code != 0 and "agents/s" not in out.out
    assert "--bank-clients 5: the BR-MTRL server round cannot run" in out.err and "server.f" in out.err


def test_main_job_imports_no_heavy_optional_library(tmp_path):
    """The README's main job (its whole process is timed against a bare torch import) needs
    neither scipy (0.23 s to import scipy.spatial) nor networkx (0.08 s), nor the plotting and
    data libraries when figures are off."""
    import subprocess
    import sys

    code = ("import sys\nfrom p2pmtl.cli import main\n"
            "try:\n    main(['run', 'target_localization', '--no-figures', '-q', '--out', sys.argv[1], "
            "'--set', 'iterations=3', '--set', 'output.window=2'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'scipy', 'networkx', 'pandas', 'matplotlib', 'torchvision', 'sklearn', 'numba', 'pyarrow'}\n"
            "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
    assert (tmp_path / "run" / "metrics.csv").stat().st_size > 0
