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
