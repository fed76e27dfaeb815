"""Run status, output folders, file-system faults, damaged state and interrupts (hardening)."""
import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pmtl.cli import main
import p2pmtl
from p2pmtl.experiments.config import ConfigError, load_config
from p2pmtl.experiments.runner import run_experiment
from p2pmtl.io.records import Block, RunRecorder, csv_field, inspect_run
from p2pmtl.io.rundir import LOCK, OutputError, check_name, claim, unique_default

from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**over):
    return load_config(data=tiny_config_dict(iterations=5, **over))


def _write_cfg(tmp_path, **over) -> Path:
    from p2pmtl.experiments.config import dump_config

    path = tmp_path / "cfg.toml"
    path.write_text(dump_config(_cfg(**over)))
    return path


# --------------------------------------------------------------------------- status


def test_an_exception_marks_the_run_failed_with_its_message(tmp_path, monkeypatch, capsys):
    from p2pmtl.engine import gossip as engine

    def boom(self, i):
        if i == 3:
            raise RuntimeError("engine exploded")
        return real(self, i)

    real = engine.GossipEngine.step
    monkeypatch.setattr(engine.GossipEngine, "step", boom)
    cfg = _write_cfg(tmp_path)
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "engine exploded" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "failed" and not s["finished"] and "engine exploded" in s["error"]


def test_finished_and_interrupted_status(tmp_path):
    summary = run_experiment(_cfg(), tmp_path / "r", progress=False, figures=False)
    assert summary["status"] == "finished"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"
    assert inspect_run(tmp_path / "r") == []


def test_full_disk_ends_in_one_line_exit_1_and_keeps_what_finished(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = RunRecorder.end_block

    def end_block(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # the first scenario (4 rules) is summarised, then the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(RunRecorder, "end_block", end_block)
    cfg = _write_cfg(tmp_path)
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "Traceback" not in err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "failed" and set(s["results"]["clean"]) == {"noncoop", "average", "loss", "distance"}


# --------------------------------------------------------------------------- output folders


def test_out_that_is_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc = main(["run", str(_write_cfg(tmp_path)), "--out", str(tmp_path / "f"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "is a file" in err and "Traceback" not in err


def test_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    cfg = _write_cfg(tmp_path)
    args = ["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--no-figures"]
    assert main(args) == 0
    first = (tmp_path / "r" / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == first  # untouched
    assert main(args + ["--overwrite"]) == 0
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == first  # same seed, same bytes


def test_a_live_lock_is_refused_even_with_overwrite_and_a_stale_one_is_taken(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / LOCK).write_text(f"{live.pid}\n")
        with pytest.raises(OutputError, match=f"pid {live.pid}"):
            claim(d, overwrite=True)
    finally:
        live.kill()
        live.wait()
    claim(d).release()  # the holder is gone: the lock is stale
    assert not (d / LOCK).exists()


def test_default_run_folders_are_unique_within_one_second(tmp_path):
    paths = {unique_default(tmp_path, "same") for _ in range(5)}
    assert len(paths) == 5 and all(p.is_dir() for p in paths)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".hidden", "x" * 101, "semi;colon", "new\nline"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ValueError, match="not a safe name"):
        check_name("name", bad)


def test_csv_fields_round_trip_any_name(tmp_path):
    import numpy as np
    import torch

    rec = RunRecorder(tmp_path)
    name = 'odd, "quoted"\nname %s 100%'
    block = rec.open_block(name, "rule,x", np.ones(2, dtype=bool), np.zeros(2, dtype=np.int64), 1, 2)
    rec.record(block, 0, 1.0, 2.0, {"m,etric%d": torch.tensor([1.0, 2.0])})
    rec.record(block, 1, 1.5, 4.0, {"m,etric%d": torch.tensor([3.0, 0.25])})
    rec.close("finished")
    for fname in ("metrics.csv", "curves.csv"):
        with open(tmp_path / fname, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and all(r["scenario"] == name and r["rule"] == "rule,x" and r["metric"] == "m,etric%d"
                            for r in rows)
    with open(tmp_path / "metrics.csv", newline="") as f:
        got = [(r["step"], r["time"], r["bytes"], r["agent"], r["value"]) for r in csv.DictReader(f)]
    assert got == [("0", "1", "2", "0", "1"), ("0", "1", "2", "1", "2"), ("1", "1.5", "4", "0", "3"),
                   ("1", "1.5", "4", "1", "0.25")]
    assert csv_field("plain") == "plain"


def test_curve_rows_of_interleaved_blocks_keep_record_order(tmp_path):
    """curves.csv rows of two blocks recorded in turn (one named with a line break, whose rows
    are formatted one record at a time; the other's whole batch at once), two groups: each
    record's rows in recording order, with their groups' mean, min and max."""
    import numpy as np
    import torch

    rec = RunRecorder(tmp_path)
    groups = np.array([0, 0, 1], dtype=np.int64)
    a = rec.open_block("plain", "r", np.ones(3, dtype=bool), groups, 1, 3)
    b = rec.open_block("two\nlines", "r", np.ones(3, dtype=bool), groups, 1, 3)
    for step in range(3):
        for block, shift in ((a, 0.0), (b, 10.0)):
            rec.record(block, step, float(step), 0.0, {"m": torch.tensor([1.0, 2.0, 4.0]) * (step + 1) + shift})
    rec.close("finished")
    with open(tmp_path / "curves.csv", newline="") as f:
        rows = [(r["scenario"], r["group"], r["step"], float(r["mean"]), float(r["min"]), float(r["max"]))
                for r in csv.DictReader(f)]
    want = []
    for step in range(3):
        for name, shift in (("plain", 0.0), ("two\nlines", 10.0)):
            v = np.array([1.0, 2.0, 4.0]) * (step + 1) + shift
            for g, sel in (("all", [0, 1, 2]), ("0", [0, 1]), ("1", [2])):
                want.append((name, g, str(step), v[sel].mean(), v[sel].min(), v[sel].max()))
    assert [r[:3] for r in rows] == [w[:3] for w in want]
    assert np.allclose([r[3:] for r in rows], [w[3:] for w in want], rtol=1e-7)


@pytest.mark.parametrize("scenario, rules", [("s", ("a", "b")), ('q,"1"', ("50%", "r\nx"))])
def test_shared_metrics_are_recorded_as_per_block_ones(tmp_path, scenario, rules):
    """World-level metrics given once as ``shared`` (copied once per iteration and normal set,
    their curve rows computed and formatted once) write the files of the same metrics given to
    each block, also when the caller reuses its dict and arrays from one iteration to the next,
    and with names that CSV quotes (a comma, a quote, a line break) or that hold a %."""
    import numpy as np
    import torch

    def run(out, share):
        rec = RunRecorder(out, curves_only=("acc", "t%\nw"))
        normal = np.array([True, False, True, True])
        blocks = [rec.open_block(scenario, r, normal, np.zeros(4, dtype=np.int64), 1, 4) for r in rules]
        acc = np.zeros(4)
        extras = {"acc": acc, "t%\nw": acc * 2}
        for step in range(4):
            acc += np.arange(4.0) * (step + 1)  # in place: the same array and dict every iteration
            for j, block in enumerate(blocks):
                own = {"loss": torch.tensor([1.0, 2.0, 3.0, 4.0]) * (j + step)}
                if share:
                    rec.record(block, step, float(step), 8.0 * step, own, shared=extras)
                else:
                    rec.record(block, step, float(step), 8.0 * step, {**own, **extras})
            rec.flush()
        for block in blocks:
            rec.end_block(block, window=2)
        rec.close("finished")
        return [(out / f).read_bytes() for f in ("metrics.csv", "curves.csv")], rec.summary["results"]

    assert run(tmp_path / "shared", True) == run(tmp_path / "plain", False)
    with open(tmp_path / "shared" / "curves.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "acc"]
    acc = np.cumsum([np.arange(4.0) * (step + 1) for step in range(4)], axis=0)[:, [0, 2, 3]]
    assert [(r["scenario"], r["rule"], r["group"], r["step"]) for r in rows] == [
        (scenario, rule, "all", str(step)) for step in range(4) for rule in rules]
    assert np.allclose([[float(r[k]) for k in ("mean", "min", "max")] for r in rows],
                       [[a.mean(), a.min(), a.max()] for a in acc for _ in rules])


# --------------------------------------------------------------------------- damaged state


def test_plot_on_a_damaged_run_says_what_is_missing(tmp_path, capsys):
    run_experiment(_cfg(), tmp_path / "r", progress=False, figures=False)
    d = tmp_path / "r"
    (d / "metrics.csv").unlink()
    text = (d / "curves.csv").read_text()
    (d / "curves.csv").write_text(text[:-25])
    (d / "summary.json").write_text((d / "summary.json").read_text()[:50])
    assert main(["plot", str(d)]) == 0
    err = capsys.readouterr().err
    assert "metrics.csv: missing" in err and "summary.json: damaged" in err and "damaged row" in err
    assert (d / "loss.png").is_file()


def _study(tmp_path) -> Path:
    (tmp_path / "base.toml").write_text(
        'name = "base"\niterations = 8\n[graph]\nfamily = "ring"\nn = 8\n[rules]\nnames = ["loss"]\n'
        '[output]\nwindow = 4\nfigures = false\n[[scenarios]]\nname = "clean"\n')
    path = tmp_path / "study.toml"
    path.write_text('name = "mini"\nmetric = "msd"\n'
                    '[[variants]]\nname = "a"\nconfig = "base.toml"\ncurve = "clean/loss"\n'
                    '[[variants]]\nname = "b"\nconfig = "base.toml"\ncurve = "clean/loss"\nset = { iterations = 6 }\n')
    return path


def test_study_redoes_failed_changed_and_damaged_variants(tmp_path, monkeypatch):
    from p2pmtl.experiments import runner as experiment
    from p2pmtl.experiments.study import run_study

    path, out = _study(tmp_path), tmp_path / "out"
    ran = []
    real = experiment.run_experiment

    def spy(cfg, d, **kw):
        ran.append(Path(d).name)
        return real(cfg, d, **kw)

    monkeypatch.setattr(experiment, "run_experiment", spy)
    run_study(path, out, progress=False)
    assert ran == ["a", "b"]
    ran.clear()
    run_study(path, out, progress=False)
    assert ran == []  # both finished, same settings
    # a failed variant, a damaged summary, changed settings: each is redone
    s = json.loads((out / "a" / "summary.json").read_text())
    s.update(status="failed", finished=False, error="boom")
    (out / "a" / "summary.json").write_text(json.dumps(s))
    (out / "b" / "summary.json").write_text('{"status": "fini')
    with pytest.warns(UserWarning, match="damaged"):
        run_study(path, out, progress=False)
    assert ran == ["a", "b"]
    ran.clear()
    path.write_text(path.read_text().replace("set = { iterations = 6 }", "set = { iterations = 7 }"))
    run_study(path, out, progress=False)
    assert ran == ["b"]


@pytest.mark.parametrize("edit, match", [
    ('metric = "msd"', 'metric = "accuracy"'),
    ('curve = "clean/loss"\n[[', 'curve = "clean/average"\n[['),
    ('curve = "clean/loss"\n[[', 'curve = "nope/loss"\n[['),
    ("set = { iterations = 6 }", 'set = { "scenarios.5.byzantine" = 1 }'),
    ("set = { iterations = 6 }", 'set = { "iterations.x" = 1 }'),
    ('name = "a"', 'name = "../a"'),
])
def test_study_keys_are_checked_before_any_variant_runs(tmp_path, monkeypatch, edit, match):
    from p2pmtl.experiments import runner as experiment
    from p2pmtl.experiments.config import ConfigError
    from p2pmtl.experiments.study import run_study

    path = _study(tmp_path)
    path.write_text(path.read_text().replace(edit, match, 1))
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: pytest.fail("a variant ran"))
    with pytest.raises(ConfigError):
        run_study(path, tmp_path / "out", progress=False)


def test_sweep_redoes_a_damaged_or_failed_cell(tmp_path):
    from p2pmtl.experiments.sweep import CELLS, run_sweep

    data = tiny_config_dict(iterations=4, scenarios=[{"name": "x"}], rules={"names": ["loss"]})
    data["sweep"] = {"attacks": [{"name": "uniform", "low": 15.0, "high": 16.0}], "byzantine": [0.2], "seeds": [0],
                     "baseline": False}
    out = tmp_path / "sw"
    m = run_sweep(data, out, jobs=1, progress=False, figures=False)
    assert m["ran"] == 1
    cell = next((out / CELLS).iterdir())
    (cell / "summary.json").write_text("{trunc")
    with pytest.warns(UserWarning, match="damaged"):
        m = run_sweep(data, out, jobs=1, progress=False, figures=False)
    assert m["ran"] == 1 and m["skipped"] == 0


# --------------------------------------------------------------------------- interrupts


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A process started in the background
    of a non-interactive shell (``cmd &``, as some CI runners and ``nohup`` do) inherits SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler: the test's Ctrl-C would be
    lost (the parent kept running until the timeout)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_jobs_2_is_quiet_prompt_and_marks_only_unfinished(tmp_path):
    cfg = tmp_path / "cfg.toml"
    data = tiny_config_dict(iterations=400000, scenarios=[{"name": "s1"}, {"name": "s2"}],
                            rules={"names": ["loss"]}, output={"window": 10, "record_every": 1000})
    from p2pmtl.experiments.config import dump_config

    cfg.write_text(dump_config(load_config(data=data)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "p2pmtl.cli", "run", str(cfg), "--out", str(tmp_path / "r"),
                             "--jobs", "2", "--no-progress", "--no-figures"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=_default_sigint)
    parts = tmp_path / "r" / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and not (parts.is_dir() and len(list(parts.glob("*/curves.csv"))) == 2):
        time.sleep(0.2)
    time.sleep(1.0)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=30)
    took = time.time() - t0
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert took < 5, took
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "interrupted" and set(s["jobs"].values()) == {"interrupted"}


# ----------------------------------------------------------------- Parquet records


def test_parquet_records_hold_the_csv_rows(tiny_dict, tmp_path):
    """output.records = "parquet": metrics.parquet/ holds the rows metrics.csv would hold (the
    same keys, values equal to the CSV's 8 significant digits, exact in the Parquet), with
    --jobs 2 too; curves, summary and the results object are unchanged."""
    pytest.importorskip("pyarrow")
    import numpy as np
    import pandas as pd

    tiny_dict["iterations"] = 12
    tiny_dict["scenarios"] = [{"name": "a", "byzantine": 0}, {"name": "b", "byzantine": 2,
                                                               "attack": {"name": "uniform", "low": 15.0, "high": 16.0}}]
    csv_run = p2pmtl.run(tiny_dict, out=tmp_path / "csv")
    pq_run = p2pmtl.run({**tiny_dict, "output": {**tiny_dict.get("output", {}), "records": "parquet"}},
                        out=tmp_path / "pq")
    assert not (tmp_path / "pq" / "metrics.csv").exists()
    assert sorted(p.name for p in (tmp_path / "pq" / "metrics.parquet").iterdir())[0] == "part-00000.parquet"
    a, b = csv_run.metrics, pq_run.metrics
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    keys = ["scenario", "rule", "run", "step", "agent", "group", "metric"]
    for k in keys:
        assert a[k].astype(str).tolist() == b[k].astype(str).tolist(), k
    assert np.allclose(a["value"], b["value"], rtol=1e-7, atol=0)
    assert (tmp_path / "csv" / "curves.csv").read_bytes() == (tmp_path / "pq" / "curves.csv").read_bytes()
    assert csv_run.table().equals(pq_run.table())
    two = p2pmtl.run({**tiny_dict, "jobs": 2, "output": {**tiny_dict.get("output", {}), "records": "parquet"}},
                     out=tmp_path / "pq2")
    pd.testing.assert_frame_equal(two.metrics, b)
    assert inspect_run(tmp_path / "pq") == []


def test_parquet_records_without_pyarrow_is_a_config_error(tiny_dict, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"output.records = 'parquet' needs the pyarrow package"):
        load_config(data={**tiny_dict, "output": {"records": "parquet"}})


def test_large_arrays_are_stored_uncompressed(tmp_path):
    """save_arrays: small arrays zlib-compressed, large ones stored (compressing the 1M-edge
    weights of a 100,000-agent run took 1.3 s); np.load reads both the same."""
    import zipfile

    import numpy as np

    from p2pmtl.io.records import COMPRESS_MAX_BYTES, RunRecorder

    rec = RunRecorder(tmp_path)
    small, large = np.arange(1000.0), np.arange(COMPRESS_MAX_BYTES // 8 + 1, dtype=np.float64)
    rec.save_arrays("small", x=small)
    rec.save_arrays("large", x=large, y=small)
    for name, arrays, kind in (("small", {"x": small}, zipfile.ZIP_DEFLATED),
                               ("large", {"x": large, "y": small}, zipfile.ZIP_STORED)):
        path = tmp_path / "arrays" / f"{name}.npz"
        with zipfile.ZipFile(path) as z:
            assert {i.compress_type for i in z.infolist()} == {kind}
        with np.load(path) as got:
            assert all(np.array_equal(got[k], v) for k, v in arrays.items())
    rec.close("finished")


def test_stop_pool_kills_a_worker_that_misses_its_signal():
    """A worker that does not stop on SIGTERM (here: it ignores it) is killed after the grace
    period, so an interrupted parent returns instead of waiting on it forever."""
    from p2pmtl.experiments.workers import process_pool, stop_pool

    pool = process_pool(1)
    try:
        pool.submit(signal.signal, signal.SIGTERM, signal.SIG_IGN).result(timeout=60)
        stuck = pool.submit(time.sleep, 120)
        proc = next(iter(pool._processes.values()))
        time.sleep(0.5)
        t0 = time.monotonic()
        stop_pool(pool, [stuck], grace=1.0)
        assert time.monotonic() - t0 < 5
        # the pool's own thread joins its workers too: when it reaps the killed one first, this
        # thread's waitpid fails until that thread records the exit code, so poll the exit code
        # (sleeping lets that thread run) instead of trusting one is_alive()
        deadline = time.monotonic() + 5
        while proc.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_merge_reads_a_part_left_running_as_interrupted(tmp_path):
    """A part whose worker was killed still says ``running``: merged after the pool is gone, it
    counts as interrupted (its flushed rows kept), and so does the whole run."""
    from p2pmtl.experiments.runner import merge_parts

    parts = [tmp_path / "parts" / n for n in ("a", "b")]
    for part, status in zip(parts, ("finished", "running")):
        part.mkdir(parents=True)
        (part / "curves.csv").write_text("h\n" + f"{part.name}\n")
        (part / "metrics.csv").write_text("h\n" + f"{part.name}\n")
        (part / "summary.json").write_text(json.dumps({"status": status, "results": {}}))
    s = merge_parts(tmp_path, parts)
    assert s["jobs"] == {"a": "finished", "b": "interrupted"} and s["status"] == "interrupted"
    assert (tmp_path / "metrics.csv").read_text() == "h\na\nb\n"


def test_a_metric_recorded_at_some_steps_only_is_summarised_by_its_own_steps(tmp_path):
    """A task may report a metric on some records only (a test accuracy every third step, one
    that starts late, one that stops): each is summarised over its own records in the window
    (before: an IndexError at the end of the block), and its rows name its own steps."""
    import numpy as np

    rec = RunRecorder(tmp_path)
    block = rec.open_block("s", "r", np.ones(2, dtype=bool), np.zeros(2, dtype=np.int64), 1, 2)
    want = {"loss": [], "acc": [], "late": [], "early": []}
    for step in range(10):
        m = {"loss": np.array([step, step + 1.0])}
        if step % 3 == 0:
            m["acc"] = np.array([10.0 * step, 0.0])
        if step >= 7:
            m["late"] = np.array([1.0, 2.0]) * step
        if step < 2:
            m["early"] = np.array([5.0, 7.0]) + step
        for k, v in m.items():
            want[k].append((step, v))
        rec.record(block, step, float(step), 0.0, m)
    out = rec.end_block(block, window=4)  # the last 4 iterations: steps 6-9
    rec.close("finished")

    def mean_from(k, first):
        kept = [v for s, v in want[k] if s >= first] or [want[k][-1][1]]
        return float(np.mean(np.stack(kept)))

    assert out["iterations"] == 10
    for k in want:
        assert out[k]["last_window_mean"] == pytest.approx(mean_from(k, 6)), k
        assert out[k]["final_mean"] == pytest.approx(float(want[k][-1][1].mean())), k
    with open(tmp_path / "metrics.csv", newline="") as f:
        steps = {}
        for r in csv.DictReader(f):
            steps.setdefault(r["metric"], set()).add(int(r["step"]))
    assert steps == {k: {s for s, _ in v} for k, v in want.items()}
    with open(tmp_path / "curves.csv", newline="") as f:
        rows = [(r["metric"], int(r["step"]), float(r["mean"])) for r in csv.DictReader(f)]
    assert rows == [(k, s, float(v.mean())) for s in range(10) for k in ("loss", "acc", "late", "early")
                    for step, v in want[k] if step == s]
