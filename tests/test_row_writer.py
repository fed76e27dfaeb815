"""metrics.csv's rows formatted by a helper process (output.csv_writer): the same bytes as in
the simulation's process, every row on disk before the summary names its block, a failing or
orphaned helper, Ctrl-C."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import p2pmtl
from p2pmtl.experiments.config import ConfigError, dump_config, load_config
from p2pmtl.io import row_writer
from p2pmtl.io.records import METRICS_HEADER, Block, RunRecorder
from p2pmtl.io.row_writer import MetricsRows

from conftest import tiny_config_dict

HEADER = ",".join(METRICS_HEADER) + "\n"


def _attacked(**over) -> dict:
    """Two scenarios, one of them with Byzantine agents (non-finite values: by hand below)."""
    d = tiny_config_dict(iterations=25, **over)
    d["scenarios"] = [{"name": "clean", "byzantine": 0},
                      {"name": "attacked", "byzantine": 3, "attack": {"name": "uniform", "low": 15.0, "high": 16.0}}]
    return d


def _with_writer(d: dict, mode: str) -> dict:
    return {**d, "output": {**d.get("output", {}), "csv_writer": mode}}


@pytest.mark.parametrize("mode", ["process", "auto"])
def test_helper_writes_the_same_bytes_as_inline(tmp_path, monkeypatch, mode):
    """The helper (from the start, or taking over mid-run in ``auto``) gives metrics.csv and
    curves.csv byte for byte as formatting in the simulation's process; and it really ran."""
    started = []
    real = row_writer._Helper.__init__

    def spy(self, path):
        started.append(path)
        real(self, path)

    monkeypatch.setattr(row_writer._Helper, "__init__", spy)
    monkeypatch.setattr(row_writer, "AUTO_PROCESS_ROWS", 1000)  # auto: take over after ~1,000 rows
    monkeypatch.setattr(row_writer, "BATCH_VALUES", 300)  # several messages per block
    monkeypatch.setattr(row_writer, "free_cores", lambda: 1)
    d = _attacked()
    inline = p2pmtl.run(_with_writer(d, "inline"), out=tmp_path / "inline", figures=False)
    helped = p2pmtl.run(_with_writer(d, mode), out=tmp_path / mode, figures=False)
    assert len(started) == 1
    text = (tmp_path / "inline" / "metrics.csv").read_bytes()
    assert (tmp_path / mode / "metrics.csv").read_bytes() == text
    assert (tmp_path / mode / "curves.csv").read_bytes() == (tmp_path / "inline" / "curves.csv").read_bytes()
    assert text.count(b"\n") > 1000
    assert helped.summary["results"] == inline.summary["results"]


def test_auto_stays_inline_without_a_free_core_and_on_short_runs(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(row_writer._Helper, "__init__", lambda self, path: started.append(path))
    p2pmtl.run(_with_writer(tiny_config_dict(iterations=5, output={"window": 2}), "auto"), out=tmp_path / "short", figures=False)  # < 50,000 rows
    monkeypatch.setattr(row_writer, "AUTO_PROCESS_ROWS", 100)
    monkeypatch.setattr(row_writer, "free_cores", lambda: 0)
    p2pmtl.run(_with_writer(tiny_config_dict(iterations=5, output={"window": 2}), "auto"), out=tmp_path / "one_core", figures=False)
    assert started == []


def _block() -> Block:
    return Block('s,"1"', "r%", np.ones(6, dtype=bool), np.array([0, 0, 1, 1, 2, 2]), 2, 3)


HARD = np.array([np.nan, np.inf, -np.inf, 1e300, -0.0, 1.23456789e-7])


def test_rows_by_hand_match_inline_and_parse_back(tmp_path):
    """Hand-made records (two runs, quoted names, non-finite and extreme values) through both
    writers: the same text, which csv reads back to the values at 8 significant digits."""
    texts = {}
    for mode in ("inline", "process"):
        b = _block()
        w = MetricsRows(tmp_path / f"{mode}.csv", HEADER, mode)
        for step in range(3):
            w.add(b.agent_parts("loss"), f"{step},{step * 0.5:.6g},{step * 10:.6g}", HARD * (step + 1))
            w.add(b.agent_parts("m,s%d"), f"{step},{step * 0.5:.6g},{step * 10:.6g}", np.arange(6.0) / 7)
        assert w.in_process == (mode == "inline")
        w.close()
        texts[mode] = (tmp_path / f"{mode}.csv").read_text()
    assert texts["process"] == texts["inline"]
    rows = list(csv.DictReader(io.StringIO(texts["process"])))
    assert len(rows) == 3 * 2 * 6
    assert rows[0]["scenario"] == 's,"1"' and rows[0]["rule"] == "r%" and rows[6]["metric"] == "m,s%d"
    got = np.array([float(r["value"]) for r in rows if r["metric"] == "loss" and r["step"] == "2"])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(HARD))
    finite = np.isfinite(HARD)
    np.testing.assert_allclose(got[finite], (HARD * 3)[finite], rtol=1e-7)
    assert [r["run"] for r in rows[:6]] == ["0", "0", "0", "1", "1", "1"]


def test_sync_puts_every_row_on_disk_before_the_summary(tmp_path, monkeypatch):
    """end_block returns with the block's rows in metrics.csv (the helper still running)."""
    monkeypatch.setattr(row_writer, "BATCH_VALUES", 10**9)  # nothing sent before the sync
    rec = RunRecorder(tmp_path, csv_writer="process")
    b = rec.open_block("s", "r", np.ones(4, dtype=bool), np.zeros(4, dtype=int), 1, 4)
    for step in range(7):
        rec.record(b, step, float(step), 0.0, {"loss": np.arange(4.0) + step})
    rec.end_block(b, window=3)
    assert rec._metrics._helper.proc.poll() is None  # still running, yet:
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 7 * 4 and lines[-1].endswith(",loss,9")
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["s"]["r"]["iterations"] == 7
    rec.close("finished")
    assert rec._metrics._helper.proc.returncode == 0


def test_a_dead_helper_is_a_clear_error(tmp_path):
    w = MetricsRows(tmp_path / "m.csv", HEADER, "process")
    b = _block()
    w.add(b.agent_parts("loss"), "0,0,0", np.arange(6.0))
    w.sync()
    w._helper.proc.kill()
    w._helper.proc.wait()
    with pytest.raises(OSError, match=r"helper process writing metrics\.csv failed.*csv_writer = 'inline'"):
        for step in range(1, 5000):  # the next message finds it gone
            w.add(b.agent_parts("loss"), f"{step},0,0", np.arange(6.0))
            w.sync()
    assert (tmp_path / "m.csv").read_text().count("\n") == 1 + 6  # what it wrote before it died stays


def test_an_orphaned_helper_writes_what_it_received_and_exits(tmp_path):
    """The simulation killed (its end of the pipe closed without a goodbye): the helper writes
    every row it was sent and exits cleanly."""
    w = MetricsRows(tmp_path / "m.csv", HEADER, "process")
    b = _block()
    for step in range(3):
        w.add(b.agent_parts("loss"), f"{step},0,0", np.arange(6.0))
    h = w._helper
    h.send_pending()
    h.proc.stdin.close()  # the pipe closed without a "close" message
    assert h.proc.wait(timeout=20) == 0
    h.proc.stdout.close()
    h.proc.stderr.close()
    assert (tmp_path / "m.csv").read_text().count("\n") == 1 + 3 * 6


def test_csv_writer_key_is_checked():
    with pytest.raises(ConfigError, match=r"csv_writer.*'auto', 'inline' or 'process'|csv_writer.*auto.*inline"):
        load_config(data=_with_writer(tiny_config_dict(), "threads"))
    with pytest.raises(ValueError, match=r"output\.csv_writer = 'x': allowed: auto, inline, process"):
        MetricsRows("unused.csv", HEADER, "x")


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_ctrl_c_keeps_every_recorded_row(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during a run whose rows go through the
    helper: status interrupted, exit 130, and metrics.csv holds exactly the records curves.csv
    holds (the helper, in its own session, was closed in order, not killed)."""
    data = tiny_config_dict(iterations=400000, rules={"names": ["loss", "average"]}, output={"window": 10})
    data["output"]["csv_writer"] = "process"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(dump_config(load_config(data=data)))
    proc = subprocess.Popen([sys.executable, "-m", "p2pmtl.cli", "run", str(cfg), "--out", str(tmp_path / "r"),
                             "--no-progress", "--no-figures"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "r" / "metrics.csv"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.stat().st_size > 200_000):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "interrupted"
    with open(tmp_path / "r" / "curves.csv") as f:
        curves = {(r["scenario"], r["rule"], r["metric"], r["step"]) for r in csv.DictReader(f) if r["group"] == "all"}
    with open(metrics) as f:
        rows = {(r["scenario"], r["rule"], r["metric"], r["step"]) for r in csv.DictReader(f)}
    assert len(curves) > 100 and rows == curves


def test_auto_stays_inline_when_no_helper_can_start(tmp_path, monkeypatch):
    """No interpreter to start (an embedded Python): auto formats here, process says why."""
    def no_spawn(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", "python")

    monkeypatch.setattr(row_writer.subprocess, "Popen", no_spawn)
    monkeypatch.setattr(row_writer, "AUTO_PROCESS_ROWS", 10)
    monkeypatch.setattr(row_writer, "free_cores", lambda: 1)
    b = _block()
    w = MetricsRows(tmp_path / "auto.csv", HEADER, "auto")
    for step in range(4):
        w.add(b.agent_parts("loss"), f"{step},0,0", np.arange(6.0))
    w.close()
    assert w.in_process and (tmp_path / "auto.csv").read_text().count("\n") == 1 + 4 * 6
    with pytest.raises(FileNotFoundError):
        MetricsRows(tmp_path / "process.csv", HEADER, "process")


def test_batches_formatted_here_when_the_helper_is_behind_keep_the_order(tmp_path, monkeypatch):
    """The helper behind (a backlog in the pipe, simulated): every other batch is formatted in
    the simulation's process and sent as text; the file is still the inline file, row for row."""
    monkeypatch.setattr(row_writer, "BATCH_VALUES", 12)  # a batch every two records
    ticks = iter(range(10**6))
    monkeypatch.setattr(row_writer._Helper, "_backlog", lambda self: 10**9 if next(ticks) % 2 else 0)
    b = _block()
    out = {}
    for mode in ("inline", "process"):
        w = MetricsRows(tmp_path / f"{mode}.csv", HEADER, mode)
        for step in range(9):
            w.add(b.agent_parts("loss" if step % 3 else "acc"), f"{step},0.5,7", HARD * step)
        if mode == "process":
            shared = w._helper.shared
        w.close()
        out[mode] = (tmp_path / f"{mode}.csv").read_bytes()
    assert shared == 2 and out["process"] == out["inline"] and out["inline"].count(b"\n") == 1 + 9 * 6


def test_a_core_is_free_only_beside_the_torch_threads(monkeypatch):
    import torch

    monkeypatch.setattr(row_writer, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert row_writer.free_cores() == 1
        torch.set_num_threads(2)  # threads = 2 on two cores: no core left for a helper
        assert row_writer.free_cores() == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(SIGINT) ends the process there")
@pytest.mark.parametrize("writer", ["process", "inline"])
def test_ctrl_c_in_the_middle_of_a_write_waits_for_its_end(tmp_path, monkeypatch, writer):
    """A SIGINT raised from inside the write of a batch of rows (the helper's pipe write, or the
    inline file write before its buffer is cleared) takes effect once the recorder's call
    ends: the run is interrupted, and metrics.csv holds exactly the records curves.csv holds,
    none lost, none twice. Without the deferral the process writer loses that batch and the
    inline writer writes it twice."""
    from p2pmtl.experiments.runner import run_experiment

    calls = {"n": 0}

    def interrupt_on_third():
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered here, or held back to the call's end

    if writer == "process":
        real_put = row_writer._Helper._put

        def put(self, msg):  # the batch already taken off the helper's lists
            interrupt_on_third()
            return real_put(self, msg)

        monkeypatch.setattr(row_writer._Helper, "_put", put)
    else:
        class File:  # the rows written, their buffer not yet cleared
            def __init__(self, f):
                self.f = f

            def write(self, text):
                n = self.f.write(text)
                interrupt_on_third()
                return n

            def __getattr__(self, name):
                return getattr(self.f, name)

        real_init = MetricsRows.__init__

        def init(self, *a, **k):
            real_init(self, *a, **k)
            self._file = File(self._file)

        monkeypatch.setattr(MetricsRows, "__init__", init)
    data = tiny_config_dict(iterations=3000, rules={"names": ["loss", "average"]}, output={"window": 10})
    data["output"]["csv_writer"] = writer
    monkeypatch.setattr(row_writer, "BATCH_VALUES", 64)  # many batches in a short run
    try:
        run_experiment(load_config(data=data), tmp_path / "r", progress=False, figures=False)
    except KeyboardInterrupt:
        pass
    assert calls["n"] >= 3
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "interrupted"
    with open(tmp_path / "r" / "curves.csv") as f:
        curves = [(r["scenario"], r["rule"], r["metric"], r["step"]) for r in csv.DictReader(f) if r["group"] == "all"]
    with open(tmp_path / "r" / "metrics.csv") as f:
        rows = [(r["scenario"], r["rule"], r["metric"], r["step"], r["run"], r["agent"]) for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows))  # none twice
    assert {r[:4] for r in rows} == set(curves) and len(curves) == len(set(curves)) > 0
