"""Run directory writer. Everything is written as it comes, so an interrupted run leaves usable
files: ``metrics.csv`` (long format, one row per step, agent and metric), ``curves.csv`` (mean,
min and max over normal agents, per group), ``summary.json`` (last-window means, rewritten after
every finished run), and per-run arrays for figures (``arrays/``).

With ``output.records = "parquet"`` the per-agent table is ``metrics.parquet/``, a folder of
Parquet files (``part-00000.parquet``, ... one per flush, each complete when written, so a
killed run keeps every part written before; ``pandas.read_parquet`` reads the folder as one
table) with the columns of ``metrics.csv`` and exact float64 values; the rest is unchanged.
It needs ``pyarrow`` (``pip install p2pmtl[parquet]``)."""
from __future__ import annotations

import csv
import json
import math
import signal
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch

from .row_writer import MetricsRows

METRICS_HEADER = ["scenario", "rule", "run", "step", "time", "bytes", "agent", "group", "metric", "value"]
METRICS_PARQUET = "metrics.parquet"
RECORD_FORMATS = ("csv", "parquet")
CURVES_HEADER = ["scenario", "rule", "group", "metric", "step", "time", "bytes", "mean", "min", "max"]
COMPRESS_MAX_BYTES = 1 << 20  # RunRecorder.save_arrays compresses up to this many bytes
NETWORK_METRICS = ("sim_time", "bytes_sent", "bytes_received", "time_compute", "time_send", "time_wait", "staleness")


class _SigintGate:
    """Ctrl-C held back while the recorder is in the middle of a record or a write."""

    depth = 0  # recorder calls under way (they nest)
    pending = False  # a Ctrl-C arrived during one of them


def _sigint_handler(signum, frame) -> None:
    """SIGINT during a run (:func:`interruptible`): KeyboardInterrupt now, or once the
    recorder's call under way has ended."""
    if _SigintGate.depth > 0:
        _SigintGate.pending = True
    else:
        raise KeyboardInterrupt


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """A recorder call that Ctrl-C does not cut in two: a SIGINT that arrives meanwhile (while
    :func:`interruptible` has put its handler in place) raises KeyboardInterrupt when the
    outermost such call ends, not half-way. Used around :meth:`RunRecorder.record`, ``flush``
    and ``end_block``: without it a Ctrl-C inside a batch sent to the metrics.csv helper
    dropped the batch (curves.csv had the last record, metrics.csv did not), and one between
    writing rows and clearing their buffer wrote them twice. Python runs signal handlers on
    the main thread whichever thread the OS delivers the signal to, so a flag is the way to
    hold one back (blocking the signal on the main thread alone does not: torch's and numba's
    threads take it)."""
    _SigintGate.depth += 1
    try:
        yield
    except BaseException:
        _SigintGate.depth -= 1
        raise
    _SigintGate.depth -= 1
    if _SigintGate.depth == 0 and _SigintGate.pending:
        _SigintGate.pending = False
        raise KeyboardInterrupt


class RunRecorder:
    def __init__(self, out_dir: Path, per_agent: bool = True, records: str = "csv",
                 curves_only: tuple[str, ...] = (), csv_writer: str = "auto") -> None:
        """``per_agent``: one row per agent in the per-agent table (else curves only);
        ``curves_only``: metrics recorded in summary.json and in curves.csv for all agents
        together (group ``all``), never per agent or per task group (the network accounts);
        ``csv_writer``: where metrics.csv's rows are formatted (:class:`MetricsRows`: ``auto``,
        ``inline`` or ``process``)."""
        if records not in RECORD_FORMATS:
            raise ValueError(f"output.records = {records!r}: allowed: {', '.join(RECORD_FORMATS)}")
        self.out = Path(out_dir)
        (self.out / "arrays").mkdir(parents=True, exist_ok=True)
        self.per_agent = per_agent
        self.curves_only = frozenset(curves_only)
        self.parquet = records == "parquet"
        if self.parquet:
            self._metrics: Optional[MetricsRows] = None
            (self.out / METRICS_PARQUET).mkdir(exist_ok=True)
            self._pbuf: list[tuple] = []  # (block, step, now, nbytes, metric, values) not yet written
            self._parts = 0
        else:
            self._metrics = MetricsRows(self.out / "metrics.csv", ",".join(METRICS_HEADER) + "\n", csv_writer)
        self._curves = open(self.out / "curves.csv", "w", newline="")
        self._curves.write(",".join(CURVES_HEADER) + "\n")
        self._cbuf: list[str] = []  # the same for curves.csv
        self._pending: list[tuple] = []  # (block, mid, metric names, series indices) not yet in curves.csv
        self._rows = 0  # rows buffered (written or pending)
        self._shared: Optional[tuple] = None  # (shared metrics, (step, now), their copies per normal set)
        self.summary: dict = {"status": "running", "finished": False, "interrupted": False, "results": {}}
        self._flushed = time.monotonic()

    @classmethod
    def from_output(cls, out_dir: Path, output) -> "RunRecorder":
        """The recorder an experiment's ``[output]`` table asks for (an ``OutputConfig``)."""
        return cls(out_dir, per_agent=output.per_agent, records=output.records,
                   curves_only=() if output.network_per_agent else NETWORK_METRICS, csv_writer=output.csv_writer)

    # -- one (scenario, rule) block ------------------------------------------------------
    def open_block(
        self, scenario: str, rule: str, normal: np.ndarray, groups: np.ndarray, runs: int, n: int
    ) -> "Block":
        """``normal`` [R*n] bool mask of honest nodes; node r*n+k is agent k of run r."""
        return Block(scenario, rule, normal, groups, runs, n)

    def record(self, block: "Block", step: int, now: float, nbytes: float,
               metrics: dict[str, torch.Tensor | np.ndarray],
               shared: Optional[dict[str, np.ndarray]] = None) -> None:
        """Append one iteration of a block at simulated time ``now``; ``metrics`` are per-node
        values of that block's world (tensors or numpy arrays; they are copied). ``shared``:
        more metrics, the same dict object given unchanged to every block of this iteration
        (world-level accounts, such as the network's): copied once for all blocks with the
        same normal agents, and their curve rows computed once. A non-robust rule under attack
        may give inf or NaN: those are recorded as they are, without numpy's overflow warnings."""
        with sigint_deferred(), np.errstate(over="ignore", invalid="ignore"):
            self._record(block, step, now, nbytes, metrics, shared)

    def _shared_copies(self, shared: dict, block: "Block", step: int, now: float) -> dict[str, np.ndarray]:
        """The normal agents' values of every metric of ``shared``, copied once per ``shared``
        dict, iteration and normal set (the dict stays referenced while its copies are cached)."""
        if self._shared is None or self._shared[0] is not shared or self._shared[1] != (step, now):
            self._shared = (shared, (step, now), {})
        by_normal = self._shared[2]
        copies = by_normal.get(block.normal_token)
        if copies is None:
            copies = by_normal[block.normal_token] = {}
            for name, values in shared.items():
                arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
                copies[name] = np.asarray(arr[block.normal_idx], dtype=np.float64)
        return copies

    def _record(self, block: "Block", step: int, now: float, nbytes: float, metrics: dict[str, torch.Tensor],
                shared: Optional[dict] = None) -> None:
        block.steps.append(step)
        mid = f"{step},{now:.6g},{nbytes:.6g}"
        names, where = [], []
        own = metrics.items() if not shared else [(k, v) for k, v in metrics.items() if k not in shared]
        values = [(k, np.asarray((v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)[block.normal_idx],
                                 dtype=np.float64)) for k, v in own]  # copies: the caller may reuse its arrays
        if shared:  # shared wins, as in {**metrics, **shared}
            values.extend(self._shared_copies(shared, block, step, now).items())
        series, rows_per_group = block.series, len(block.group_selectors)
        for name, v in values:
            rows = series.get(name)
            if rows is None:
                rows = series[name] = []
            rows.append(v)
            names.append(name)
            where.append(len(rows) - 1)
            if len(rows) != len(block.steps):  # not in every record of the block: its own steps
                block.own_steps(name, len(rows)).append(step)
            self._rows += rows_per_group
            if not self.per_agent or name in self.curves_only:
                pass
            elif self.parquet:
                self._pbuf.append((block, step, now, nbytes, name, v))
                self._rows += v.size
            else:  # the record's (step, time, bytes) joined into the block's row template, then one
                # %-format of the values (C loops, not one f-string per value), here or in a helper
                self._metrics.add(block.agent_parts(name), mid, v)
                self._rows += v.size
        self._pending.append((block, mid, tuple(names), tuple(where)))  # curves.csv rows: batched by flush()
        if self._rows > 200_000 or time.monotonic() - self._flushed > 5.0:
            self._flush()

    def _format_curves(self) -> None:
        """The curves.csv rows of the pending records, in the order they were recorded: mean,
        min and max of each group over a whole batch of records at once (row-wise reductions
        over C-contiguous rows, bit-identical to those of each record's own vector). Records of
        one block with the same metrics are handled together: one list of texts per metric,
        zipped into one text per record."""
        pending, self._pending = self._pending, []
        kinds: dict[tuple[int, tuple], list] = {}  # (block, metric names) -> [block, names, mids, indices]
        pending = [p for p in pending if p[2]]  # a record without metrics has no rows
        for block, mid, names, where in pending:
            kind = kinds.get((id(block), names))
            if kind is None:
                kind = kinds[(id(block), names)] = [block, names, [], []]
            kind[2].append(mid)
            kind[3].append(where)
        bodies: dict[tuple, list[str]] = {}  # shared rows (the same objects) of several blocks: text once
        texts: dict[tuple[int, tuple], Iterator[str]] = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for key, (block, names, mids, where) in kinds.items():
                columns = [self._curve_lines(block, name, idx, mids, bodies) for name, idx in zip(names, zip(*where))]
                texts[key] = map("".join, zip(*columns))
        self._cbuf.extend(next(texts[(id(block), names)]) for block, _, names, _ in pending)

    def _curve_lines(self, block: "Block", name: str, idx: tuple, mids: list[str], bodies: dict) -> list[str]:
        """One text per record of ``name`` (its rows ``idx`` of the block's series)."""
        series = block.series[name]
        rows = [series[i] for i in idx]
        groups = 1 if name in self.curves_only else len(block.group_selectors)  # accounts: all agents
        body = block.curve_body(name, block.group_selectors[0][0]) if groups == 1 else None
        if body is None or body.count("\n") != 1:  # several groups, or a name holding a line break
            cells = _curve_cells(np.stack(rows), mids, block.group_selectors[:groups])
            return _curve_texts(block.curve_template(name, groups), groups, cells)
        same = (body, tuple(mids), tuple(map(id, rows)))
        lines = bodies.get(same)
        if lines is None:  # each row's text after the block's scenario and rule, all records at once
            cells = _curve_cells(np.stack(rows), mids, block.group_selectors[:1])
            lines = bodies[same] = _curve_texts(body, 1, cells)
        head = block.key + ","
        return [head + line for line in lines]

    def flush(self) -> None:
        """Write what is buffered (curves.csv rows, metrics.csv rows or Parquet part), Ctrl-C
        held back meanwhile (:func:`sigint_deferred`)."""
        with sigint_deferred():
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._format_curves()
        if self._metrics is not None:
            self._metrics.flush()
        if self.parquet and self._pbuf:
            self._write_parquet_part()
        if self._cbuf:
            self._curves.write("".join(self._cbuf))
            self._cbuf.clear()
        self._rows = 0
        self._curves.flush()
        self._flushed = time.monotonic()

    def _write_parquet_part(self) -> None:
        """The buffered per-agent rows as one Parquet file, built from arrays (no per-value
        Python objects but the repeated names): written to a temporary name, then renamed, so
        every ``part-*.parquet`` is complete."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf, self._pbuf = self._pbuf, []
        sizes = [len(v) for *_, v in buf]

        def names(values: list[str]) -> "pa.Array":  # one name per buffered record, dictionary-encoded
            uniq, inv = np.unique(np.array(values, dtype=object), return_inverse=True)
            return pa.DictionaryArray.from_arrays(pa.array(np.repeat(inv.astype(np.int32), sizes)),
                                                  pa.array(uniq.tolist(), pa.string()))

        table = pa.table({
            "scenario": names([b.scenario for b, *_ in buf]),
            "rule": names([b.rule for b, *_ in buf]),
            "run": np.concatenate([b.run_of for b, *_ in buf]).astype(np.int64),
            "step": np.repeat(np.array([t for _, t, *_ in buf], dtype=np.int64), sizes),
            "time": np.repeat(np.array([now for _, _, now, *_ in buf], dtype=np.float64), sizes),
            "bytes": np.repeat(np.array([nb for *_, nb, _, _ in buf], dtype=np.float64), sizes),
            "agent": np.concatenate([b.agent_of for b, *_ in buf]).astype(np.int64),
            "group": np.concatenate([b.group_of for b, *_ in buf]).astype(np.int64),
            "metric": names([m for *_, m, _ in buf]),
            "value": np.concatenate([v for *_, v in buf]),
        })
        final = self.out / METRICS_PARQUET / f"part-{self._parts:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(final)
        self._parts += 1

    def end_block(self, block: "Block", window: int, extra: Optional[dict] = None) -> dict:
        """Summarise a finished block: for each metric, the mean over normal agents of the last
        ``window`` recorded iterations (per run and over runs). The block's rows are in
        metrics.csv before summary.json names its results."""
        with sigint_deferred():
            self._flush()
            if self._metrics is not None:
                self._metrics.sync()
            with np.errstate(over="ignore", invalid="ignore"):
                out = self._block_summary(block, window)
            if extra:
                out.update(extra)
            self.summary["results"].setdefault(block.scenario, {})[block.rule] = out
            self.write_summary()
        return out

    def _block_summary(self, block: "Block", window: int) -> dict:
        """Per metric, over its records in the block's last ``window`` iterations (a metric
        recorded at fewer steps than the others, e.g. a test accuracy every tenth step, by its
        own steps; with none in the window, its last record)."""
        out: dict = {"iterations": block.steps[-1] + 1 if block.steps else 0}
        since = block.steps[-1] - window if block.steps else 0
        every = np.asarray(block.steps) > since
        for name, rows in block.series.items():
            if len(rows) == len(block.steps):
                recent = every
            else:  # missed some records: its own steps (or, if it only stopped, the first ones)
                recent = np.asarray(block.metric_steps.get(name, block.steps[:len(rows)])) > since
            if not recent.any():
                recent = np.arange(len(rows)) == len(rows) - 1
            arr = np.stack(rows)[recent]  # [records in the last `window` iterations, normal agents]
            per_run = [float(arr[:, block.run_of == r].mean()) for r in range(block.runs)]
            out[name] = {
                "last_window_mean": float(np.mean(per_run)),
                "last_window_std_over_runs": float(np.std(per_run)),
                "per_run": per_run,
                "final_mean": float(arr[-1].mean()),
            }
        return out

    def save_world(self, scenario: str, g, pos, groups: np.ndarray, byzantine: np.ndarray,
                   edges=None) -> None:
        """``arrays/world__SCENARIO.npz``: the graph's edges, positions ([n, 2] array or a
        networkx layout dict), groups and Byzantine node ids (for the network figure).
        ``edges``: the graph's :class:`~p2pmtl.core.edges.EdgeIndex` when the caller has it
        (else built from ``g``)."""
        from ..core.edges import EdgeIndex

        e = EdgeIndex.from_graph(g) if edges is None else edges
        if isinstance(pos, dict):
            pos = np.array([pos[k] for k in range(g.number_of_nodes())])
        self.save_arrays(f"world__{scenario}", src=e.src.numpy(), dst=e.dst.numpy(), pos=pos,
                         groups=np.asarray(groups), byzantine=np.asarray(byzantine))

    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        """``arrays/NAME.npz`` (``np.load`` reads it): zlib-compressed up to
        :data:`COMPRESS_MAX_BYTES` of arrays, stored as they are beyond (at 100,000 agents the
        weights and the world, 1M edges, took 1.3 s to compress for little gain)."""
        path = self.out / "arrays" / f"{name}.npz"
        if sum(np.asarray(a).nbytes for a in arrays.values()) <= COMPRESS_MAX_BYTES:
            np.savez_compressed(path, **arrays)
        else:
            np.savez(path, **arrays)

    def write_summary(self) -> None:
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(json_safe(self.summary), indent=2, allow_nan=False))
        tmp.replace(self.out / "summary.json")

    def close(self, status: str, error: Optional[str] = None) -> None:
        """Flush and close the files; ``summary.json`` gets ``status`` (finished, interrupted or
        failed, see :func:`set_status`). A write error while closing is raised after both
        files are closed."""
        set_status(self.summary, status, error)
        try:
            self.flush()
        finally:
            try:
                if self._metrics is not None:
                    self._metrics.close()  # every row written before the summary's final status
            finally:
                try:
                    self.write_summary()
                finally:
                    self._curves.close()


STATUSES = ("finished", "interrupted", "failed")


def set_status(summary: dict, status: str, error: Optional[str] = None) -> dict:
    """The run's status in its summary: ``status`` is one of :data:`STATUSES` (``running``
    while it runs); the booleans ``finished`` / ``interrupted`` are kept beside it for older
    readers; ``error`` holds the message of a failed run."""
    if status not in STATUSES + ("running",):
        raise ValueError(f"status = {status!r}; allowed: {', '.join(STATUSES)}")
    summary["status"] = status
    summary["finished"] = status == "finished"
    summary["interrupted"] = status == "interrupted"
    if error is not None:
        summary["error"] = error
    return summary


def run_status(summary: dict) -> str:
    """The status of a summary written by any version (older ones have only the booleans)."""
    if summary.get("status") in STATUSES + ("running",):
        return summary["status"]
    if summary.get("finished"):
        return "finished"
    return "interrupted" if summary.get("interrupted") else "failed"


def describe_error(e: BaseException) -> str:
    """One line for a failed run: the exception type and message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def json_safe(obj):
    """Non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@contextmanager
def interruptible(rec: RunRecorder, bar) -> Iterator[dict]:
    """Run a recording session: Ctrl-C ends it early and cleanly. On the way out the progress
    bar closes and the recorder writes its summary with its status (``finished``,
    ``interrupted``, or ``failed`` with the error message, which is then re-raised) and wall
    time. Yields a dict whose ``"interrupted"`` tells the caller what happened."""
    state = {"interrupted": False}
    t0 = time.perf_counter()
    status, error = "finished", None
    previous = None  # our SIGINT handler in place of Python's default one, on the main thread
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _sigint_handler)
    try:
        yield state
    except KeyboardInterrupt:
        state["interrupted"] = True
        status = "interrupted"
    except BaseException as e:
        status, error = "failed", describe_error(e)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            _SigintGate.pending = False
        bar.close()
        rec.summary["wall_seconds"] = time.perf_counter() - t0
        try:
            rec.close(status, error)
        except OSError:
            if status != "failed":
                raise


def csv_field(text: str) -> str:
    """``text`` as one CSV field (RFC 4180: quoted, inner quotes doubled, when it holds a comma,
    a quote or a line break), so any name round-trips through :mod:`csv`."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class Block:
    """The running record of one (scenario, rule): which nodes are normal, their series."""

    def __init__(self, scenario: str, rule: str, normal: np.ndarray, groups: np.ndarray, runs: int, n: int):
        self.scenario, self.rule, self.runs = scenario, rule, runs
        self.normal_idx = np.nonzero(normal)[0]
        self.normal_token = (len(normal), self.normal_idx.tobytes())  # blocks with the same normal agents
        self.run_of = self.normal_idx // n
        agent_of = self.normal_idx % n
        group_of = groups[self.normal_idx]
        self.agent_of, self.group_of = agent_of, np.asarray(group_of)
        self.key = f"{csv_field(scenario)},{csv_field(rule)}"
        self.heads = [f"{self.key},{r}" for r in self.run_of.tolist()]
        self.tails = [f"{a},{g}" for a, g in zip(agent_of.tolist(), group_of.tolist())]
        self.group_selectors: list = [("all", slice(None))]
        if len(np.unique(groups)) > 1:  # the world has groups: a row for each that has normal agents
            self.group_selectors += [(str(int(g)), group_of == g) for g in np.unique(group_of)]
        self.series: dict[str, list[np.ndarray]] = {}
        self.steps: list[int] = []
        self.metric_steps: dict[str, list[int]] = {}  # metrics that missed a record, then came back: their steps
        self._templates: dict[tuple, "str | list[str]"] = {}

    def own_steps(self, metric: str, rows: int) -> list[int]:
        """The steps of ``metric``'s records, kept once it misses a record (the first ``rows -
        1`` taken from the records so far, which all held it)."""
        if metric not in self.metric_steps:
            self.metric_steps[metric] = list(self.steps[:rows - 1])
        return self.metric_steps[metric]

    def agent_parts(self, metric: str) -> list[str]:
        """The metrics.csv rows of one record of ``metric`` as pieces to join with the record's
        ``step,time,bytes`` text (which holds no ``%``): the joined text is a %-format with one
        ``%.8g`` per normal agent (its value)."""
        key = ("agent", metric)
        if key not in self._templates:
            name = _percent(csv_field(metric))
            heads = [f"{_percent(h)}," for h in self.heads]
            tails = [f",{_percent(t)},{name},%.8g\n" for t in self.tails]
            self._templates[key] = ([heads[0]] + [t + h for t, h in zip(tails, heads[1:])] + [tails[-1]]
                                    if heads else [""])
        return self._templates[key]

    def curve_body(self, metric: str, group: str = "all") -> str:
        """One group's row of :meth:`curve_template` without its leading ``scenario,rule,``
        (the same text for every block: rows shared by several blocks are formatted once)."""
        return f"{_percent(group)},{_percent(csv_field(metric))},%s,%.8g,%.8g,%.8g\n"

    def curve_template(self, metric: str, groups: Optional[int] = None) -> str:
        """The curves.csv rows of one record of ``metric`` as a %-format: for each group (the
        first ``groups`` of them: ``all`` first) ``%s`` (step, time, bytes) then mean, min and
        max as ``%.8g``."""
        key = ("curve", metric, groups)
        if key not in self._templates:
            head = _percent(self.key) + ","
            self._templates[key] = "".join(head + self.curve_body(metric, g) for g, _ in self.group_selectors[:groups])
        return self._templates[key]


def _curve_cells(arr: np.ndarray, mids: list[str], selectors: list) -> np.ndarray:
    """``[records, groups, 4]`` objects: each record's ``step,time,bytes`` text, then mean, min
    and max over each group's agents of ``arr [records, normal agents]`` (row-wise reductions
    over C-contiguous rows, bit-identical to those of each record's own vector)."""
    cells = np.empty((arr.shape[0], len(selectors), 4), dtype=object)
    cells[:, :, 0] = np.array(mids, dtype=object)[:, None]
    for g, (_, sel) in enumerate(selectors):
        w = np.ascontiguousarray(arr[:, sel])
        cells[:, g, 1], cells[:, g, 2], cells[:, g, 3] = w.mean(axis=1), w.min(axis=1), w.max(axis=1)
    return cells


def _curve_texts(template: str, groups: int, cells: np.ndarray) -> list[str]:
    """Each record's curves.csv text from its ``cells [groups, 4]`` (``cells [records, groups,
    4]``): one %-format of the template repeated over all records, split back at the line
    breaks (a C loop over the values, not one call per record); one call per record when a
    name holds a line break (a quoted CSV field)."""
    records = cells.shape[0]
    if template.count("\n") != groups:
        return [template % tuple(row) for row in cells.reshape(records, -1).tolist()]
    lines = ((template * records) % tuple(cells.reshape(-1).tolist())).split("\n")
    if groups == 1:
        return [line + "\n" for line in lines[:-1]]
    return ["\n".join(lines[r * groups:(r + 1) * groups]) + "\n" for r in range(records)]


def _percent(text: str) -> str:
    """``text`` as literal text of a %-format."""
    return text.replace("%", "%%")


def read_curves(run_dir: Path, problems: Optional[list[str]] = None) -> list[dict]:
    """The rows of ``curves.csv``; rows that do not parse (a run killed mid-write leaves a
    truncated last line) are skipped and described in ``problems``."""
    rows, bad = [], 0
    with open(Path(run_dir) / "curves.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                if None in row or any(row[k] is None for k in CURVES_HEADER):
                    raise ValueError
                float(row["mean"]), float(row["time"]), int(row["step"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            rows.append(row)
    if bad and problems is not None:
        problems.append(f"curves.csv: {bad} damaged row(s) skipped (a run stopped mid-write?)")
    return rows


def inspect_run(run_dir: Path) -> list[str]:
    """What is missing or damaged in a run folder, one line each (empty when all is well):
    missing files, an unreadable summary, a status other than ``finished``, damaged rows."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    for name in ("config.toml", "metrics.csv", "curves.csv", "summary.json"):
        if name == "metrics.csv" and (run_dir / METRICS_PARQUET).is_dir():
            continue
        if not (run_dir / name).is_file():
            problems.append(f"{name}: missing")
    if (run_dir / "summary.json").is_file():
        try:
            s = json.loads((run_dir / "summary.json").read_text())
            status = run_status(s)
            if status == "running":
                from .rundir import lock_owner

                status = "running" if lock_owner(run_dir) else "interrupted (killed: no live process holds it)"
            if status != "finished":
                err = f" ({s['error']})" if s.get("error") else ""
                problems.append(f"summary.json: status {status}{err}; the figures show what finished")
        except (OSError, ValueError) as e:
            problems.append(f"summary.json: damaged ({e})")
    if (run_dir / "curves.csv").is_file():
        try:
            read_curves(run_dir, problems)
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            problems.append(f"curves.csv: unreadable ({e})")
    return problems
