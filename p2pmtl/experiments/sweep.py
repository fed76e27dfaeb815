"""``p2pmtl sweep``: an attack x defence x Byzantine fraction x seed grid from one config, run as
independent *cells*, drawn as a resilience matrix (heatmap of the final metric of normal agents).

A sweep config is an experiment config (gossip or server mode) plus a ``[sweep]`` table::

    [sweep]
    attacks = [{ name = "uniform", low = 15.0, high = 16.0 }, { name = "alie", label = "alie" }]
    byzantine = [0.1, 0.2]        # fractions of the agents (server mode: of the clients)
    seeds = [0, 1]
    defences = ["average", "loss"]  # gossip: weight rules (default rules.names); server: methods
    metric = "loss"               # default: test_acc if the task has it, else its first metric
    baseline = true               # also run every seed without Byzantine agents ("none" row)

A cell is (attack, fraction, seed) in gossip mode, where all defences run as lanes of one
engine on identical data and attacker draws, and (attack, fraction, seed, method) in server
mode. Each cell runs :func:`p2pmtl.experiments.runner.run_experiment` into ``OUT/cells/ID/run/`` and then
writes ``OUT/cells/ID/summary.json`` last (atomically): a cell is finished exactly when that file
exists and records the cell's config hash. A rerun skips finished cells (a changed cell config
reruns); Ctrl-C leaves every finished cell usable. When all cells are done (or on Ctrl-C) the
driver writes ``matrix.csv`` (one row per attack, fraction, defence: mean, std and count over
seeds), ``matrix.json`` and ``matrix.png``, and the worst case over the attacks per (fraction,
defence): ``worst_case.csv`` and ``worst_case.png``.

Backends: ``local`` (default) runs cells in parallel spawned processes, one torch thread each;
``ray`` runs the same cells as Ray tasks (``pip install p2pmtl[ray]``): each task runs its cell
in a temporary directory on its worker and returns the files, which the driver writes into the
same layout, so no shared filesystem is needed and both backends give identical cells.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.device import resolve_device
from ..io.rundir import safe_component
from .config import (
    AttackConfig,
    ConfigError,
    ExperimentConfig,
    apply_override,
    format_validation_error,
    prepare_plugins,
    read_toml,
)

CELLS = "cells"
BACKENDS = ("local", "ray")


class SweepAttack(AttackConfig):
    """One attack row: ``name`` and its parameters, plus an optional ``label`` (row name)."""

    label: Optional[str] = Field(None, description="the row name in the matrix (default: the attack name); "
                                                    "distinguishes one attack given twice")

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items()}

    @property
    def row(self) -> str:
        return self.label or self.name


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attacks: list[SweepAttack] = Field(min_length=1, description="attack rows: tables with name, its parameters "
                                                                "and an optional label")
    byzantine: list[float] = Field(min_length=1, description="fractions of the agents in (0, 1)")
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1, description="seeds (>= 0), one cell each")
    defences: Optional[list[str]] = Field(None, description="gossip: weight rules (default rules.names); server: "
                                                            "methods (default server.methods)")
    metric: Optional[str] = Field(None, description="the final metric of normal agents in the matrix (default: "
                                                    "test_acc if the task has it, else its first metric)")
    baseline: bool = Field(True, description="also run every seed without Byzantine agents (the \"none\" row)")
    jobs: Optional[int] = Field(None, ge=1, description="parallel cells (default: CPU count)")

    @field_validator("byzantine")
    @classmethod
    def _fractions(cls, v):
        for f in v:
            if not 0 < f < 1:
                raise ValueError(f"sweep.byzantine = {f}: a fraction of the agents in (0, 1) "
                                 "(at least one agent stays normal)")
        if len(set(v)) != len(v):
            raise ValueError(f"sweep.byzantine = {v}: values must be distinct")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"sweep.seeds = {v}: seeds must be distinct")
        return v

    @field_validator("attacks")
    @classmethod
    def _labels(cls, v):
        rows = [a.row for a in v]
        for r in rows:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", r) or r == "none":
                raise ValueError(f"sweep.attacks: label {r!r}: use letters, digits, '_', '.', '-' (not 'none')")
        if len(set(rows)) != len(rows):
            raise ValueError(f"sweep.attacks: rows {rows} repeat; give each repeated attack a distinct label")
        return v


def load_sweep(path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = (),
               data: Optional[dict] = None, plugins: Iterable[str] = ()) -> tuple[ExperimentConfig, SweepSpec]:
    """Read a sweep config: the experiment part and the ``[sweep]`` table, both validated; every
    problem raises :class:`ConfigError` naming the key, the value and what is allowed."""
    import copy

    source = str(path) if path is not None else "<dict>"
    if data is None:
        data = read_toml(path)
    data = copy.deepcopy(data)
    for o in overrides:
        apply_override(data, o)
    prepare_plugins(data, Path(path).resolve().parent if path is not None else None, plugins)
    raw = data.pop("sweep", None)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep config needs a [sweep] table (attacks, byzantine, seeds, defences, metric)")
    data.setdefault("scenarios", [{"name": "placeholder"}])  # cells bring their own scenario
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        lines = [f"invalid [sweep] table in {source}:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in ("sweep", *err["loc"]))
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
    _check_spec(cfg, spec, source)
    return cfg, spec


def _check_spec(cfg: ExperimentConfig, spec: SweepSpec, source: str) -> None:
    from ..robust.attacks import ATTACKS
    from ..server.config import ServerConfig
    from ..rules.weights import RULES
    from ..tasks import TASKS

    if cfg.mode == "server":
        try:
            ServerConfig(methods=defences(cfg, spec))
        except ValidationError as e:
            raise ConfigError(f"{source}: sweep.defences: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    else:
        for d in defences(cfg, spec):
            if d not in RULES:
                raise ConfigError(f"{source}: sweep.defences: {d!r} is not a weight rule; allowed: {', '.join(RULES.names())}")
    for a in spec.attacks:
        cls = ATTACKS.get(a.name)
        if cfg.mode == "server" and cls.gossip_only:
            raise ConfigError(f"{source}: sweep.attacks: {a.name!r} works in gossip mode only")
        task = TASKS.get(cfg.task.name) if cfg.task.name in TASKS else None
        missing = [m for m in cls.needs if cfg.mode == "gossip" and task is not None and not hasattr(task, m)]
        if missing:
            raise ConfigError(f"{source}: sweep.attacks: {a.name!r} does not apply to task {cfg.task.name!r} "
                              f"(it needs {', '.join(missing)})")
    metric = metric_name(cfg, spec)
    if cfg.task.name in TASKS and metric not in TASKS.get(cfg.task.name).metric_names:
        raise ConfigError(f"{source}: sweep.metric = {metric!r}; allowed: "
                          f"{', '.join(TASKS.get(cfg.task.name).metric_names)}")


def defences(cfg: ExperimentConfig, spec: SweepSpec) -> list[str]:
    if spec.defences:
        return list(spec.defences)
    return list(cfg.server.methods) if cfg.mode == "server" else list(cfg.rules.names)


def metric_name(cfg: ExperimentConfig, spec: SweepSpec) -> str:
    from ..tasks import TASKS

    if spec.metric:
        return spec.metric
    names = TASKS.get(cfg.task.name).metric_names if cfg.task.name in TASKS else ("test_loss", "test_acc")
    return "test_acc" if "test_acc" in names else names[0]


def higher_is_better(metric: str) -> bool:
    return "acc" in metric


def _agents(cfg: ExperimentConfig, seed: int) -> int:
    """Agents that can be Byzantine: the graph's nodes (server mode: minus the server)."""
    from ..engine.world import run_seeds
    from ..graphs.families import build_graph

    g = build_graph(cfg.graph.family, cfg.graph.params, seed=run_seeds(seed)["graph"])
    return g.number_of_nodes() - (1 if cfg.mode == "server" else 0)


def plan(cfg: ExperimentConfig, spec: SweepSpec) -> list[dict]:
    """Every cell of the grid: id, attack row, fraction, seed, defences, Byzantine count, and the
    cell's full experiment config (JSON) with its hash."""
    cells = []
    defs = defences(cfg, spec)
    units = [[d] for d in defs] if cfg.mode == "server" else [defs]
    attacks: list[tuple[str, Optional[SweepAttack], float]] = []
    if spec.baseline:
        attacks.append(("none", None, 0.0))
    attacks += [(a.row, a, f) for a in spec.attacks for f in spec.byzantine]
    for row, attack, frac in attacks:
        for seed in spec.seeds:
            count = int(round(frac * _agents(cfg, seed)))
            if attack is not None and count == 0:
                raise ConfigError(f"sweep.byzantine = {frac}: rounds to 0 Byzantine agents of {_agents(cfg, seed)}")
            for unit in units:
                cid = safe_component(f"{row}__byz{frac:g}__seed{seed}"
                                     + (f"__{unit[0].replace('+', '_')}" if cfg.mode == "server" else ""))
                scenario: dict = {"name": "cell", "byzantine": count}
                if attack is not None:
                    scenario["attack"] = {"name": attack.name, **attack.params}
                if cfg.mode == "server":
                    scenario["methods"] = unit
                over = {"name": cid, "seed": seed, "runs": 1, "jobs": 1, "scenarios": [scenario], "sweep": None,
                        "output": {**cfg.output.model_dump(mode="json"), "figures": False}}
                if cfg.mode == "gossip":
                    over["rules"] = {**cfg.rules.model_dump(mode="json"), "names": unit}
                data = {**cfg.model_dump(mode="json"), **over}
                data["graph"] = {"family": cfg.graph.family, **cfg.graph.params}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the base config has already warned
                        validated = ExperimentConfig.model_validate(data)
                except ValidationError as e:
                    raise ConfigError(format_validation_error(e, f"(sweep cell {cid})")) from None
                cell_cfg = validated.model_dump(mode="json")
                # the hash sees only non-default settings (new config fields do not unfinish cells)
                # and not the device or kernel (the same numbers): cells finished on the CPU count when the
                # sweep resumes on a GPU
                key = validated.model_dump(mode="json", exclude_defaults=True, exclude={"device", "kernel"})
                digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                cells.append({"id": cid, "attack": row, "fraction": frac, "seed": seed, "byzantine": count,
                              "defences": unit, "config": cell_cfg, "hash": digest})
    return cells


# --------------------------------------------------------------------------- running one cell


def _cell_result(cell: dict, run_dir: Path, wall: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary.get("finished"):
        raise RuntimeError(f"cell {cell['id']}: the run did not finish")
    results = {d: {m: v["last_window_mean"] for m, v in r.items() if isinstance(v, dict) and "last_window_mean" in v}
               for d, r in summary["results"]["cell"].items()}
    info = {k: cell[k] for k in ("id", "attack", "fraction", "seed", "byzantine", "defences", "hash")}
    return {**info, "results": results, "wall_seconds": wall}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True))
    os.replace(tmp, path)


def _execute(cell: dict, cell_dir: Path) -> dict:
    """Run a cell's experiment into ``cell_dir/run``; return its result (not written)."""
    from .runner import run_experiment

    from .plugins import load_plugins

    load_plugins(cell["config"].get("plugins", []))  # a Ray task (local workers have them already)
    cfg = ExperimentConfig.model_validate(cell["config"])  # run_experiment runs it on cfg.threads
    if cell_dir.exists():
        shutil.rmtree(cell_dir)  # an unfinished earlier attempt
    cell_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    run_experiment(cfg, cell_dir / "run", progress=False, figures=False, jobs=1)
    return _cell_result(cell, cell_dir / "run", time.perf_counter() - t0)


def run_cell(cell: dict, root: str) -> dict:
    """Run one cell into ``root/cells/ID`` and write its ``summary.json`` last. A cell that
    fails or is interrupted returns ``{"id", "status", "error"}`` (and writes ``failed.json``),
    so the other cells go on and a rerun redoes it."""
    cell_dir = Path(root) / CELLS / cell["id"]
    try:
        result = _execute(cell, cell_dir)
    except KeyboardInterrupt:
        return {"id": cell["id"], "status": "interrupted"}
    except Exception as e:
        from ..io.records import describe_error

        info = {"id": cell["id"], "status": "failed", "error": describe_error(e), "hash": cell["hash"]}
        try:
            cell_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(cell_dir / "failed.json", info)
        except OSError:
            pass
        return info
    _write_json_atomic(cell_dir / "summary.json", result)
    return {**result, "status": "finished"}


def run_cell_packed(cell: dict) -> tuple[dict, bytes]:
    """Run one cell in a temporary directory; return (result, tar.gz of its files) so that a
    driver on another machine writes the same layout (Ray backend)."""
    with tempfile.TemporaryDirectory(prefix="p2pmtl-cell-") as tmp:
        cell_dir = Path(tmp) / cell["id"]
        try:
            result = _execute(cell, cell_dir)
        except Exception as e:
            from ..io.records import describe_error

            return {"id": cell["id"], "status": "failed", "error": describe_error(e), "hash": cell["hash"]}, b""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(cell_dir, arcname=".")
        return result, buf.getvalue()


def _unpack(cell: dict, root: Path, result: dict, blob: bytes) -> None:
    cell_dir = root / CELLS / cell["id"]
    if cell_dir.exists():
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(cell_dir, filter="data") if sys.version_info >= (3, 12) else tar.extractall(cell_dir)
    _write_json_atomic(cell_dir / "summary.json", result)


def finished(cell: dict, root: Path) -> bool:
    """A cell is finished when its summary.json exists and was written for the same config; a
    damaged summary (truncated, not JSON) counts as unfinished, with a warning."""
    import warnings

    path = root / CELLS / cell["id"] / "summary.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("hash") == cell["hash"]
    except (ValueError, OSError, AttributeError) as e:
        warnings.warn(f"{path}: damaged ({e}); the cell will be run again", stacklevel=2)
        return False


def _run_local(pending: list[dict], root: Path, jobs: int, on_done: Callable[[dict], None]) -> None:
    if jobs <= 1 or len(pending) <= 1:
        for cell in pending:
            result = run_cell(cell, str(root))  # module global: looked up at call time
            on_done(result)
            if result.get("status") == "interrupted":
                raise KeyboardInterrupt
        return
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from .workers import broken_pool_error, call, process_pool, stop_pool

    pool, futures = None, []
    try:
        pool = process_pool(min(jobs, len(pending)), plugins=pending[0]["config"].get("plugins", []))
        for cell in pending:
            futures.append(pool.submit(call, run_cell, cell, str(root)))
        for f in as_completed(futures):
            on_done(f.result())
    except BrokenProcessPool as e:
        raise broken_pool_error(e) from None
    except KeyboardInterrupt:
        if pool is not None:
            stop_pool(pool, futures)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(pending: list[dict], root: Path, address: Optional[str], on_done: Callable[[dict], None]) -> None:
    if not pending:
        return
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'p2pmtl[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=1)(run_cell_packed)
        refs = {task.remote(cell): cell for cell in pending}
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                result, blob = ray.get(ref)
                if result.get("status") == "failed":
                    cell_dir = root / CELLS / result["id"]
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    _write_json_atomic(cell_dir / "failed.json", result)
                else:
                    _unpack(refs[ref], root, result, blob)
                on_done(result)
    except BaseException:
        for ref in list(refs) if "refs" in locals() else []:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def run_sweep(config: Union[str, Path, dict], out: Union[str, Path], *, overrides: Iterable[str] = (),
              jobs: Optional[int] = None, backend: str = "local", ray_address: Optional[str] = None,
              progress: bool = True, figures: bool = True, plugins: Iterable[str] = ()) -> dict:
    """Run every unfinished cell of a sweep and write the matrix; returns ``matrix.json``'s dict.
    Ctrl-C stops the running cells (finished ones stay), writes the matrix of what finished and
    re-raises KeyboardInterrupt. Failed cells do not stop the others: they are listed in the
    error raised at the end (the matrix of the finished ones is written first)."""
    from .workers import UNGUARDED, in_worker_startup

    if in_worker_startup():
        raise SystemExit(f"error: {UNGUARDED}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    cfg, spec = (load_sweep(data=config, overrides=overrides, plugins=plugins) if isinstance(config, dict)
                 else load_sweep(config, overrides, plugins=plugins))
    from ..io.rundir import claim
    from .workers import check_importable

    if backend == "ray" or (jobs or spec.jobs or os.cpu_count() or 1) > 1:
        check_importable(cfg)  # worker processes import components by module
    if backend == "local":
        resolve_device(cfg.device)  # a GPU named but absent: an error before any cell (Ray workers may have one)
    root = Path(out)
    lock = claim(root, resume=True, what="sweep", own=("cells.json",))
    try:
        return _sweep(cfg, spec, root, jobs, backend, ray_address, progress, figures)
    finally:
        lock.release()


def _sweep(cfg: ExperimentConfig, spec: "SweepSpec", root: Path, jobs: Optional[int], backend: str,
           ray_address: Optional[str], progress: bool, figures: bool) -> dict:
    from tqdm.auto import tqdm

    (root / CELLS).mkdir(parents=True, exist_ok=True)
    cells = plan(cfg, spec)
    (root / "cells.json").write_text(json.dumps(
        {"metric": metric_name(cfg, spec), "defences": defences(cfg, spec), "mode": cfg.mode,
         "higher_is_better": higher_is_better(metric_name(cfg, spec)),
         "cells": [{k: c[k] for k in ("id", "attack", "fraction", "seed", "byzantine", "defences", "hash")}
                   for c in cells]}, indent=2))
    pending = [c for c in cells if not finished(c, root)]
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), disable=not progress, desc="cells", unit="cell")
    done: list[dict] = []

    failed: list[dict] = []

    def on_done(result: dict) -> None:
        if result.get("status") == "failed":
            failed.append(result)
        elif result.get("status") != "interrupted":
            done.append(result)
            bar.update(1)

    jobs = jobs or spec.jobs or os.cpu_count() or 1
    interrupted = False
    try:
        if backend == "ray":
            _run_ray(pending, root, ray_address, on_done)
        else:
            _run_local(pending, root, jobs, on_done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    matrix = write_matrix(root, figures=figures)
    matrix.update(ran=len(done), skipped=len(cells) - len(pending), total=len(cells), interrupted=interrupted,
                  failed={r["id"]: r["error"] for r in failed})
    if interrupted:
        raise KeyboardInterrupt
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} cells failed (first: {failed[0]['id']}: "
                           f"{failed[0]['error']}); the finished ones are in {root} (see cells/ID/failed.json); "
                           f"rerun the same command to redo the failed cells")
    return matrix


# --------------------------------------------------------------------------- the matrix


def collect(root: Path) -> tuple[dict, list[dict]]:
    """(plan header, results of finished cells)."""
    root = Path(root)
    header = json.loads((root / "cells.json").read_text())
    results = [json.loads((root / CELLS / c["id"] / "summary.json").read_text())
               for c in header["cells"] if finished(c, root)]
    return header, results


def matrix_rows(header: dict, results: list[dict]) -> list[dict]:
    """One row per (attack, fraction, defence): mean, std (ddof 0) and count over seeds of the
    metric. The no-attack baseline appears once with fraction 0."""
    metric = header["metric"]
    acc: dict[tuple, list[float]] = {}
    for r in results:
        for d, vals in r["results"].items():
            v = vals.get(metric)
            acc.setdefault((r["attack"], r["fraction"], d), []).append(math.nan if v is None else float(v))
    order_a = list(dict.fromkeys(c["attack"] for c in header["cells"]))
    order_f = sorted({c["fraction"] for c in header["cells"]})
    rows = []
    for a in order_a:
        for f in order_f:
            for d in header["defences"]:
                vals = acc.get((a, f, d))
                if not vals:
                    continue
                n = len(vals)
                mean = sum(vals) / n
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n) if n > 1 else 0.0
                rows.append({"attack": a, "fraction": f, "defence": d, "mean": mean, "std": std, "seeds": n})
    return rows


def worst_case_rows(header: dict, rows: list[dict]) -> list[dict]:
    """One row per (fraction, defence): the worst mean over the attacks (lowest for a metric
    where higher is better, else highest; NaN counts as worst) and the attack that reached it.
    The usual summary of Byzantine-robustness studies (e.g. RESAM's worst case over attacks)."""
    good_high = header.get("higher_is_better", higher_is_better(header["metric"]))
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["attack"] != "none":
            by_key.setdefault((r["fraction"], r["defence"]), []).append(r)

    def badness(r: dict) -> float:
        v = r["mean"]
        return math.inf if math.isnan(v) else (-v if good_high else v)

    order = {d: i for i, d in enumerate(header["defences"])}
    out = []
    for (frac, d), rs in sorted(by_key.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 0))):
        w = max(rs, key=badness)  # the first of equally bad attacks
        out.append({"fraction": frac, "defence": d, "worst": w["mean"], "worst_attack": w["attack"],
                    "attacks": len(rs)})
    return out


def write_matrix(root: Union[str, Path], figures: bool = True, metric: Optional[str] = None) -> dict:
    """matrix.csv, matrix.json and (if any cell finished) matrix.png from the finished cells;
    for another recorded ``metric`` than the sweep's, matrix_METRIC.csv/.json/.png."""
    import csv

    root = Path(root)
    header, results = collect(root)
    stem = "matrix"
    if metric and metric != header["metric"]:
        header = {**header, "metric": metric, "higher_is_better": higher_is_better(metric)}
        stem = f"matrix_{metric}"
    rows = matrix_rows(header, results)
    with open(root / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["attack", "fraction", "defence", "mean", "std", "seeds"])
        w.writeheader()
        w.writerows(rows)
    worst = worst_case_rows(header, rows)
    wstem = stem.replace("matrix", "worst_case")
    with open(root / f"{wstem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["fraction", "defence", "worst", "worst_attack", "attacks"])
        w.writeheader()
        w.writerows(worst)
    out = {"metric": header["metric"], "mode": header["mode"], "defences": header["defences"],
           "finished_cells": len(results), "total_cells": len(header["cells"]), "rows": rows,
           "worst_case": worst}
    _write_json_atomic(root / f"{stem}.json", out)
    if figures and rows:
        plot_matrix(root, header, rows, root / f"{stem}.png")
    if figures and worst:
        plot_worst_case(root, header, worst, root / f"{wstem}.png")
    return out


def format_matrix(matrix: dict) -> str:
    """Markdown tables, one per Byzantine fraction: attacks x defences, mean (± std) over seeds."""
    rows, defs = matrix["rows"], matrix["defences"]
    if not rows:
        return "(no finished cells)"
    base = {r["defence"]: r for r in rows if r["attack"] == "none"}
    lines = [f"{matrix['metric']} of normal agents (last-window mean; mean ± std over seeds); "
             f"{matrix['finished_cells']}/{matrix['total_cells']} cells finished"]
    for frac in sorted({r["fraction"] for r in rows if r["attack"] != "none"}):
        lines += ["", f"Byzantine fraction {frac:g}", "", "| attack | " + " | ".join(defs) + " |",
                  "|---" * (len(defs) + 1) + "|"]
        table = [("none", base)] if base else []
        attacks = list(dict.fromkeys(r["attack"] for r in rows if r["attack"] != "none"))
        table += [(a, {r["defence"]: r for r in rows if r["attack"] == a and r["fraction"] == frac}) for a in attacks]
        for a, by_d in table:
            cells = [_fmt(by_d[d]) if d in by_d else "-" for d in defs]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        worst = {w["defence"]: w for w in matrix.get("worst_case", []) if w["fraction"] == frac}
        if worst:
            cells = [f"{worst[d]['worst']:.4g} ({worst[d]['worst_attack']})" if d in worst else "-" for d in defs]
            lines.append("| **worst case** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _defence_parts(d: str) -> tuple[str, str]:
    """(scheme, aggregator) of a server method ``scheme+aggregator``; (d, "") otherwise."""
    scheme, plus, agg = d.partition("+")
    return (scheme, agg) if plus else (d, "")


def plot_worst_case(root: Path, header: dict, worst: list[dict], path: Optional[Path] = None) -> Path:
    """Bars of the worst case over attacks, one panel per Byzantine fraction. Server methods
    named ``scheme+aggregator`` are grouped by aggregator (x axis), one bar colour per scheme
    (e.g. RESAM's momentum placements and betas side by side); other defences get one bar each."""
    import numpy as np

    from ..io.figures import new_figure, save_figure

    metric = header["metric"]
    fracs = sorted({w["fraction"] for w in worst})
    parts = [_defence_parts(d) for d in header["defences"]]
    grouped = all(agg for _, agg in parts)
    groups = list(dict.fromkeys(agg if grouped else d for (_, agg), d in zip(parts, header["defences"])))
    series = list(dict.fromkeys(s for s, _ in parts)) if grouped else [""]
    fig, axes = new_figure(1, len(fracs), figsize=(1.5 + 0.35 * len(groups) * len(series) * len(fracs), 3.6),
                           squeeze=False, constrained_layout=True)
    width = 0.8 / len(series)
    for ax, frac in zip(axes[0], fracs):
        by = {w["defence"]: w["worst"] for w in worst if w["fraction"] == frac}
        for k, sname in enumerate(series):
            vals = [by.get(f"{sname}+{g}" if grouped else g, np.nan) for g in groups]
            ax.bar(np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width, vals, width,
                   label=sname or None)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylabel(f"worst-case {metric}")
        ax.set_title(f"Byzantine fraction {frac:g}")
        ax.grid(axis="y", alpha=0.3)
    if grouped and len(series) > 1:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, never over a bar
    fig.suptitle(f"{root.name}: worst {metric} of normal agents over the attacks", fontsize=9)
    path = path or root / "worst_case.png"
    save_figure(fig, path, dpi=130)
    return path


def _fmt(r: dict) -> str:
    m = f"{r['mean']:.4g}"
    return m + (f" ± {r['std']:.2g}" if r["seeds"] > 1 else "")


def plot_matrix(root: Path, header: dict, rows: list[dict], path: Optional[Path] = None) -> Path:
    """Heatmap panels, one per Byzantine fraction: attacks (rows, the no-attack baseline first)
    x defences (columns), colour = mean final metric over seeds (log scale for losses spanning
    more than two decades, saturating four decades above the best cell), each cell annotated."""
    import matplotlib

    from ..io.figures import new_figure, save_figure
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    metric, defs = header["metric"], header["defences"]
    fracs = sorted({r["fraction"] for r in rows if r["attack"] != "none"}) or [0.0]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    if "none" in attacks:
        attacks = ["none"] + [a for a in attacks if a != "none"]
    grids = []
    for f in fracs:
        g = np.full((len(attacks), len(defs)), np.nan)
        for r in rows:
            if r["attack"] == "none" or r["fraction"] == f:
                g[attacks.index(r["attack"]), defs.index(r["defence"])] = r["mean"]
        grids.append(g)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.array([])
    good_high = higher_is_better(metric)
    extend = "neither"
    if finite.size and (finite > 0).all() and not good_high and finite.max() / finite.min() > 100:
        vmax = min(finite.max(), 1e4 * finite.min())  # four decades: diverged cells saturate
        extend = "max" if vmax < finite.max() else "neither"
        norm = LogNorm(vmin=finite.min(), vmax=vmax, clip=True)
    else:
        norm = Normalize(vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    cmap = matplotlib.colormaps["viridis" if good_high else "viridis_r"].with_extremes(bad="lightgrey")
    fig, axes = new_figure(1, len(fracs), figsize=(2.2 + 1.1 * len(defs) * len(fracs), 1.2 + 0.42 * len(attacks)),
                             squeeze=False, constrained_layout=True)
    for ax, f, g in zip(axes[0], fracs, grids):
        im = ax.imshow(np.ma.masked_invalid(g), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(defs)), defs, rotation=30, ha="right")
        ax.set_yticks(range(len(attacks)), attacks if ax is axes[0][0] else [""] * len(attacks))
        ax.set_title(f"Byzantine fraction {f:g}")
        for i in range(len(attacks)):
            for j in range(len(defs)):
                v = g[i, j]
                txt = "n/a" if not np.isfinite(v) else f"{v:.3g}"
                dark = np.isfinite(v) and (norm(v) < 0.45 if good_high else norm(v) > 0.55)
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=axes[0].tolist(), extend=extend, label=f"{metric}\n({'higher' if good_high else 'lower'} is better)")
    fig.suptitle(f"{root.name}: final {metric} of normal agents, mean over seeds", fontsize=9)
    path = path or root / "matrix.png"
    save_figure(fig, path, dpi=130)
    return path
