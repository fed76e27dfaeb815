"""The ``p2pmtl`` command ends without the interpreter's module teardown (cli.fast_exit), yet
does everything a normal exit does for the user: atexit handlers, flushed output, the exit
status; it exits normally where that cannot be assured."""
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, **kw)


def test_atexit_handlers_output_and_status_survive(tmp_path):
    mark = tmp_path / "atexit.txt"
    r = _run(f"""
        import atexit, sys, tempfile
        from p2pmtl.cli import fast_exit
        keep = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})  # removed by its finalizer at exit
        atexit.register(lambda: open({str(mark)!r}, "w").write("ran"))
        sys.stdout.write("unflushed " * 1000)
        sys.stderr.write("err")
        fast_exit(3)
        print("never")
    """)
    assert r.returncode == 3
    assert r.stdout == "unflushed " * 1000 and r.stderr == "err"
    assert mark.read_text() == "ran"
    assert [p.name for p in tmp_path.iterdir()] == ["atexit.txt"]  # the temporary folder went


def test_a_running_thread_gets_a_normal_exit(tmp_path):
    """A non-daemon thread still working: Python's normal exit waits for it, so fast_exit must too."""
    mark = tmp_path / "thread.txt"
    r = _run(f"""
        import threading, time
        from p2pmtl.cli import fast_exit
        def work():
            time.sleep(0.5)
            open({str(mark)!r}, "w").write("done")
        threading.Thread(target=work).start()
        fast_exit(0)
    """)
    assert r.returncode == 0 and mark.read_text() == "done"


def test_a_profiler_gets_its_file(tmp_path):
    """``python -m cProfile -o FILE -m p2pmtl ...`` writes FILE: the profiler is seen, the exit is normal."""
    out = tmp_path / "p.prof"
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "p2pmtl", "list"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.stat().st_size > 0


@pytest.mark.parametrize("args, status", [(["run", "no_such_config.toml"], 2), (["list"], 0)])
def test_the_command_keeps_its_exit_status(args, status):
    r = subprocess.run([sys.executable, "-m", "p2pmtl", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == status, r.stderr
    assert (r.stdout if status == 0 else r.stderr).strip()


def test_process_bench_times_the_five_processes_alternated(monkeypatch):
    """``p2pmtl bench --only process``: the bare torch import, the main job, its network and
    inline-writer variants and a bare process ending as the command does, alternated; medians,
    fastest runs and their ratios (fake clocks: 1, 2, 2.2, 2.4 and 0.8 s a process)."""
    from p2pmtl.bench import main as bench

    cost = {"import torch": 1.0, "run": 2.0, "network": 2.2, "inline": 2.4, "fast": 0.8}
    order, now = [], [0.0]

    def kind(cmd):
        if cmd[1] == "-c":
            return "fast" if "os._exit" in cmd[2] else "import torch"
        return "network" if "network={}" in cmd else "inline" if "output.csv_writer=inline" in cmd else "run"

    def fake_run(cmd, **kw):
        order.append(kind(cmd))
        now[0] += cost[order[-1]] * (1.5 if len(order) <= 10 else 1.0)  # the first alternation slower

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(bench.os, "sync", lambda: order.append("sync"), raising=False)
    r = bench.process_time(repeats=3)
    kinds = ["import torch", "run", "network", "inline", "fast"]
    assert order[::2] == ["sync"] * 15  # written back before each timed process
    assert order[1::2] == kinds + kinds[1:] + kinds[:1] + kinds[2:] + kinds[:2]  # each alternation starts one later
    approx = pytest.approx
    assert (r["torch_s"], r["run_s"], r["ratio"], r["run_spread_s"]) == approx((1.0, 2.0, 2.0, 1.0))
    assert (r["network_overhead"], r["inline_ratio"], r["fast_ratio"]) == approx((0.1, 2.4, 2.5))
    assert r["best_s"] == approx({"import torch": 1.0, "p2pmtl run": 2.0, "network": 2.2, "inline": 2.4, "fast": 0.8})
    assert (r["best_ratio"], r["best_fast_ratio"]) == approx((2.0, 2.5))
    assert r["paired"]["network"] == approx({"median_s": 0.2, "min_s": 0.2, "max_s": 0.3, "slower": 3, "of": 3})
    assert r["paired"]["inline"] == approx({"median_s": 0.4, "min_s": 0.4, "max_s": 0.6, "slower": 3, "of": 3})
