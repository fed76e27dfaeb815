"""The rows of ``metrics.csv``: formatted in this process, or by a helper process that runs
beside the simulation.

Formatting the per-agent values as text (``%.8g``, Python's float formatting, about 0.2-0.4 us
a value) is most of what recording costs: the main job formats 724,000 values, a run of
100,000 agents 200,000 a recorded iteration. :class:`MetricsRows` in ``"process"`` mode hands
the raw float64 values to a helper process (this file run as a script: the standard library
only, no torch, no numpy) over a pipe; the helper formats them with the same templates and
appends them to ``metrics.csv`` while the simulation goes on, on another core. The file's
bytes are the same either way.

Durability: the helper writes and flushes every batch it receives; :meth:`MetricsRows.sync`
returns once it has written everything sent before (the recorder calls it before it rewrites
``summary.json``, so the summary never runs ahead of ``metrics.csv``). If the simulation
process dies, the helper reads the end of the pipe, writes what it holds and exits. It runs in
its own session, so Ctrl-C in a terminal stops only the simulation, which then closes the
helper in order. A helper that fails (a full disk) makes the next call raise
:class:`OSError` with its message.

Message format on the helper's standard input: an 8-byte little-endian length, then a pickle of
``("rows", new templates {id: parts}, [(template id, mid text, value count)], float64 bytes)``,
``("text", new templates, rows already formatted)``, ``("sync",)`` (the helper answers one byte on its standard output) or ``("close",)``.
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

WRITER_MODES = ("auto", "inline", "process")
AUTO_PROCESS_ROWS = 50_000  # "auto": a helper once this many rows were formatted here (and a core free)
BATCH_VALUES = 16_384  # "process": values per message (keeps the helper's backlog short)
BACKLOG_BATCHES = 4  # "process": batches waiting in the pipe beyond which the simulation formats a batch itself
_HEAD = struct.Struct("<Q")


def format_rows(parts: list[str], mid: str, values) -> str:
    """One record's rows: ``parts`` joined by the record's ``step,time,bytes`` text ``mid``
    form a %-format with one ``%.8g`` per value (see ``Block.agent_parts``)."""
    return mid.join(parts) % tuple(values)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable CPUs beyond the simulation's torch threads (``threads`` in the config)."""
    torch = sys.modules.get("torch")  # never imported here: the helper's side has no torch
    return usable_cores() - (torch.get_num_threads() if torch is not None else 1)


class MetricsRows:
    """Writer of ``metrics.csv``'s per-agent rows (the header is written here).

    ``mode``: ``"inline"`` formats in this process; ``"process"`` in a helper process from the
    start; ``"auto"`` inline, then a helper once :data:`AUTO_PROCESS_ROWS` rows were formatted,
    where a core is free beside the simulation's torch threads (:func:`free_cores`; short runs
    never start one)."""

    def __init__(self, path: Path, header: str, mode: Literal["auto", "inline", "process"] = "auto") -> None:
        if mode not in WRITER_MODES:
            raise ValueError(f"output.csv_writer = {mode!r}: allowed: {', '.join(WRITER_MODES)}")
        self.path = Path(path)
        self.mode = mode
        self._file = open(self.path, "w", newline="")
        self._file.write(header)
        self._buf: list[str] = []  # inline: formatted rows not yet written
        self._rows = 0  # inline: rows formatted so far
        self._helper: Optional[_Helper] = None
        if mode == "process":
            try:
                self._start_helper()
            except BaseException:
                self._file.close()
                raise

    @property
    def in_process(self) -> bool:
        """True while rows are formatted in this process (no helper)."""
        return self._helper is None

    def add(self, parts: list[str], mid: str, values) -> None:
        """One record's rows: ``values`` a float64 numpy vector (one value per template slot)."""
        if self._helper is not None:
            self._helper.add(parts, mid, values)
            return
        self._buf.append(format_rows(parts, mid, values.tolist()))
        self._rows += values.size
        if self.mode == "auto" and self._rows >= AUTO_PROCESS_ROWS:
            if free_cores() >= 1:
                self._start_helper()
            else:
                self.mode = "inline"  # decided once

    def _start_helper(self) -> None:
        try:
            helper = _Helper(self.path)  # it appends only what it is sent after this file is closed
        except OSError:
            if self.mode == "process":
                raise
            self.mode = "inline"  # auto: no helper to be had (no interpreter to start): stay here
            return
        self._write_buffer()
        self._file.close()
        self._file = None
        self._helper = helper

    def _write_buffer(self) -> None:
        if self._buf:
            self._file.write("".join(self._buf))
            self._buf.clear()
        self._file.flush()

    def flush(self) -> None:
        """Rows given so far on their way to the file (inline: written and flushed; helper:
        sent, written as soon as it gets them)."""
        if self._helper is None:
            self._write_buffer()
        else:
            self._helper.send_pending()

    def sync(self) -> None:
        """Return once every row given so far is in the file (flushed)."""
        if self._helper is None:
            self._write_buffer()
        else:
            self._helper.sync()

    def close(self) -> None:
        """Write everything, then close the file (and end the helper)."""
        if self._helper is not None:
            self._helper.close()
        elif self._file is not None:
            try:
                self._write_buffer()
            finally:
                self._file.close()
                self._file = None


class _Helper:
    """The simulation's side of the helper process: batches, sharing the formatting, errors.

    A batch goes to the helper as raw values while the helper keeps up; when more than one
    batch already waits in the pipe (the helper is behind: a run that records faster than one
    core formats), the simulation formats that batch itself and sends its text, which the
    helper writes in turn: the order of the rows never changes, and neither process idles."""

    def __init__(self, path: Path) -> None:
        kwargs = {"start_new_session": True} if os.name == "posix" else {}
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", __file__, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        self.templates: dict[int, tuple[int, list[str]]] = {}  # id(parts) -> (number, parts kept alive)
        self.new: dict[int, list[str]] = {}
        self.records: list[tuple[int, str, int]] = []
        self.parts: list[list[str]] = []  # each record's template, to format a batch here
        self.values: list = []
        self.count = 0
        self.shared = 0  # batches formatted here because the helper was behind
        self.error: Optional[BaseException] = None
        self.closed = False
        _widen_pipe(self.proc.stdin)

    def add(self, parts: list[str], mid: str, values) -> None:
        known = self.templates.get(id(parts))
        if known is None or known[1] is not parts:
            known = self.templates[id(parts)] = (len(self.templates), parts)
            self.new[known[0]] = parts
        self.records.append((known[0], mid, values.size))
        self.parts.append(parts)
        self.values.append(values)
        self.count += values.size
        if self.count >= BATCH_VALUES:
            self.send_pending()

    def send_pending(self) -> None:
        if not self.records:
            self._check()
            return
        if self._backlog() > BATCH_VALUES * 8 * BACKLOG_BATCHES:  # the helper is behind: format this one here
            text = "".join(format_rows(parts, mid, v.tolist())
                           for parts, (_, mid, _), v in zip(self.parts, self.records, self.values))
            msg = ("text", self.new, text)
            self.shared += 1
        else:
            import numpy as np

            data = np.concatenate(self.values).astype(np.float64, copy=False).tobytes()
            msg = ("rows", self.new, self.records, data)
        self.new, self.records, self.parts, self.values, self.count = {}, [], [], [], 0
        self._put(msg)

    def _backlog(self) -> int:
        """Bytes sent and not yet read by the helper (0 where the OS cannot tell)."""
        try:
            import fcntl
            import termios

            return struct.unpack("i", fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        except (ImportError, OSError, ValueError):
            return 0

    def _put(self, msg: tuple) -> None:
        self._check()
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:  # into the pipe's buffer: returns at once unless the helper is a whole buffer behind
            self.proc.stdin.write(_HEAD.pack(len(body)) + body)
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            self.error = e
            self._raise()

    def sync(self) -> None:
        self.send_pending()
        self._put(("sync",))
        answer = self.proc.stdout.read(1)
        if answer != b"k":
            self.error = self.error or BrokenPipeError("no answer")
            self._check()

    def _check(self) -> None:
        if self.error is None and self.proc.poll() not in (None, 0):
            self.error = ChildProcessError(f"exit status {self.proc.returncode}")
        if self.error is not None:
            self._raise()

    def _raise(self) -> None:
        self._stop(kill=True)
        detail = ""
        try:
            detail = self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1]
        except (OSError, ValueError, IndexError):
            pass
        finally:
            self.proc.stderr.close()
        raise OSError(f"the helper process writing metrics.csv failed ({detail or self.error}); rows recorded "
                      f"after its last write are missing; output.csv_writer = 'inline' formats them in this process")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.send_pending()
            self._put(("close",))
        finally:
            self._stop(kill=False)
        if self.error is not None or self.proc.returncode != 0:
            self.error = self.error or ChildProcessError(f"exit status {self.proc.returncode}")
            self._raise()
        self.proc.stderr.close()

    def _stop(self, kill: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.proc.stdout.close()


def _widen_pipe(pipe) -> None:
    """Give the pipe to the helper a 1 MiB buffer where the OS allows it (Linux), so that the
    simulation's writes return at once while the helper formats the batches before them."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError, ValueError):
        pass


def _serve(path: str) -> None:
    """The helper: read messages from standard input until ``close`` or its end; format and
    append the rows to ``path``, flushing after each batch."""
    import signal

    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the simulation closes it in order
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    templates: dict[int, list[str]] = {}
    with open(path, "a", newline="") as f:
        while True:
            head = inp.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return  # the simulation is gone: everything received is written
            msg = pickle.loads(inp.read(_HEAD.unpack(head)[0]))
            if msg[0] == "rows":
                _, new, records, data = msg
                templates.update(new)
                values = memoryview(data).cast("d")
                pieces, at = [], 0
                for number, mid, count in records:
                    pieces.append(format_rows(templates[number], mid, values[at:at + count].tolist()))
                    at += count
                f.write("".join(pieces))
                f.flush()
            elif msg[0] == "text":  # a batch the simulation formatted itself
                templates.update(msg[1])
                f.write(msg[2])
                f.flush()
            elif msg[0] == "sync":
                out.write(b"k")
                out.flush()
            else:
                return


if __name__ == "__main__":
    _serve(sys.argv[1])
