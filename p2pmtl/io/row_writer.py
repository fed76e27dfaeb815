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
``("sync",)`` (the helper answers one byte on its standard output) or ``("close",)``.
"""
from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal, Optional

WRITER_MODES = ("auto", "inline", "process")
AUTO_PROCESS_ROWS = 50_000  # "auto": a helper once this many rows were formatted here (and >= 2 cores)
BATCH_VALUES = 16_384  # "process": values per message (keeps the helper's backlog short)
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


class MetricsRows:
    """Writer of ``metrics.csv``'s per-agent rows (the header is written here).

    ``mode``: ``"inline"`` formats in this process; ``"process"`` in a helper process from the
    start; ``"auto"`` inline, then a helper once :data:`AUTO_PROCESS_ROWS` rows were formatted,
    where this process may use two cores or more (short runs never start one)."""

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
            if usable_cores() >= 2:
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
    """The simulation's side of the helper process: batches, a sender thread (a blocked pipe
    write releases the GIL, so the simulation never waits for the helper), errors."""

    def __init__(self, path: Path) -> None:
        kwargs = {"start_new_session": True} if os.name == "posix" else {}
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", __file__, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        self.templates: dict[int, tuple[int, list[str]]] = {}  # id(parts) -> (number, parts kept alive)
        self.new: dict[int, list[str]] = {}
        self.records: list[tuple[int, str, int]] = []
        self.values: list = []
        self.count = 0
        self.error: Optional[BaseException] = None
        self.queue: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self.thread = threading.Thread(target=self._send_loop, name="metrics.csv sender", daemon=True)
        self.thread.start()
        self.closed = False

    def add(self, parts: list[str], mid: str, values) -> None:
        known = self.templates.get(id(parts))
        if known is None or known[1] is not parts:
            known = self.templates[id(parts)] = (len(self.templates), parts)
            self.new[known[0]] = parts
        self.records.append((known[0], mid, values.size))
        self.values.append(values)
        self.count += values.size
        if self.count >= BATCH_VALUES:
            self.send_pending()

    def send_pending(self) -> None:
        if not self.records:
            self._check()
            return
        import numpy as np

        data = np.concatenate(self.values).astype(np.float64, copy=False).tobytes()
        msg = ("rows", self.new, self.records, data)
        self.new, self.records, self.values, self.count = {}, [], [], 0
        self._put(msg)

    def _put(self, msg: tuple) -> None:
        self._check()
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.queue.put(_HEAD.pack(len(body)) + body)

    def _send_loop(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue  # drain: the helper is gone
            try:
                self.proc.stdin.write(chunk)
                self.proc.stdin.flush()
            except (OSError, ValueError) as e:
                self.error = e

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

    def _stop(self, kill: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.put(None)
        self.thread.join()
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.proc.stdout.close()


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
            elif msg[0] == "sync":
                out.write(b"k")
                out.flush()
            else:
                return


if __name__ == "__main__":
    _serve(sys.argv[1])
