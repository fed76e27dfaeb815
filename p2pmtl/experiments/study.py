"""Studies: several experiment configs (variants of a base config) run into one directory and
compared in figures. ``p2pmtl study experiments/server_vs_gossip.toml``.

A study file::

    name = "server_vs_gossip"
    kind = "compare"              # or "topology"
    metric = "loss"               # metric of normal agents (mean over them) in the figures
    [[variants]]
    name = "gossip_ring"          # run directory under the study directory
    config = "target_localization.toml"   # relative to the study file
    curve = "attacked/loss"       # scenario/rule (or scenario/method) drawn for this variant
    label = "gossip, ring"
    panel = "no stragglers"       # compare: one row of panels per value
    set = { "graph.family" = "ring", "graph.n" = 100 }   # overrides (dotted keys, TOML values)

Variants run one after another (each with its config's ``jobs``); a finished variant (its
``summary.json`` says finished) is not run again, so an interrupted study resumes.

- ``compare``: metric against simulated seconds and against bytes sent, one line per variant.
- ``topology``: per variant, time (and bytes) to reach ``target`` against the algebraic
  connectivity of the graph and the mean number of same-task neighbours per agent, and the final
  metric with Byzantine agents placed at random or on the highest-degree nodes (scenarios named
  in ``placement_scenarios``).
"""
from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, ExperimentConfig, format_validation_error, prepare_plugins, read_toml


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the variant's run directory under the study directory")
    config: str = Field(description="the experiment config it runs (a path relative to the study file)")
    curve: str = Field(description="scenario/rule (gossip) or scenario/method (server) to draw")
    label: Optional[str] = Field(None, description="legend text (default: the name)")
    panel: str = Field("", description="compare: variants with the same panel share one row of panels")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the config: dotted keys and "
                                                                   "TOML values, e.g. { \"graph.n\" = 100 }")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="names the study (its figures and tables)")
    plugins: list[str] = Field(default_factory=list, description="modules or .py files imported first "
                                                                 "(relative to the study file)")
    kind: Literal["compare", "topology"] = Field(
        "compare", description="compare: the metric against simulated time and bytes, one line per variant; "
                               "topology: time to target against graph connectivity, and Byzantine placements")
    metric: str = Field("loss", description="the metric of normal agents (mean over them) drawn in the figures")
    target: Optional[float] = Field(None, gt=0, description="the value of the metric to reach")
    smooth: int = Field(20, ge=1, description="time to target: trailing mean over this many records")
    placement_scenarios: list[str] = Field(default_factory=list,
                                           description="topology: scenarios compared as Byzantine placements")
    variants: list[Variant] = Field(description="the runs of the study, one table [[variants]] each")


def _set_path(data: dict, key: str, value: Any, where: str) -> None:
    """Set a dotted ``key`` (list items by index) in ``data``; a path through a value that is
    neither a table nor a list, or a bad list index, is a :class:`ConfigError` naming it."""
    node: Any = data
    parts = key.split(".")
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                idx = int(p)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            except (ValueError, IndexError):
                raise ConfigError(f"{where}: set key {key!r}: {'.'.join(parts[:i + 1])} is not a valid "
                                  f"list index (the list has {len(node)} items)") from None
        elif isinstance(node, dict):
            if last:
                node[p] = value
            else:
                node = node.setdefault(p, {})
        else:
            raise ConfigError(f"{where}: set key {key!r}: {'.'.join(parts[:i])} is a value, not a table")


def _study_error(err: ValidationError, path: Path) -> str:
    """A study file's validation errors, one line each: key, value, what is allowed."""
    lines = [f"invalid study {path}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            model = Variant if len(e["loc"]) > 1 and e["loc"][0] == "variants" else StudyConfig
            lines.append(f"  {loc}: unknown key; allowed: {', '.join(model.model_fields)}")
            continue
        given = e.get("input")
        given_txt = "" if isinstance(given, dict) else f" = {given!r}"
        lines.append(f"  {loc}{given_txt}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def settings_hash(cfg: ExperimentConfig) -> str:
    """A short hash of a variant's non-default settings: a variant whose settings changed since
    it ran is run again (new config fields with their defaults do not change it)."""
    import hashlib

    key = cfg.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _metric_names(cfg: ExperimentConfig) -> set[str]:
    """Metrics a variant records (task metrics, server and network accounts)."""
    from ..tasks import TASKS

    names = set(getattr(TASKS.get(cfg.task.name), "metric_names", ())) if cfg.task.name in TASKS else set()
    if cfg.mode == "server" or cfg.task.name == "federated_images":
        names |= {"test_loss", "test_acc"}
    if cfg.network is not None:
        names |= {"bytes_sent", "bytes_received", "time_computing", "time_sending", "time_waiting",
                  "staleness"}
    return names


def load_study(path: Path, plugins: Iterable[str] = ()) -> tuple[StudyConfig, list[ExperimentConfig]]:
    """The study and every variant's validated config (all errors before any work): variant
    names are safe folder names, ``set`` keys exist, ``curve`` names a scenario and a rule (or
    server method) of the variant, and ``metric`` is one that every variant records."""
    from ..io.rundir import check_name

    path = Path(path)
    raw = read_toml(path)
    study_plugins = prepare_plugins(raw, path.resolve().parent, plugins)
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_study_error(e, path)) from None
    names = [v.name for v in study.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"study {path}: variant names must be distinct, got {names}")
    if not names:
        raise ConfigError(f"study {path}: variants: give at least one [[variants]] table")
    configs = []
    for i, v in enumerate(study.variants):
        where = f"{path} variants.{i} (variant {v.name!r})"
        try:
            check_name(f"variants.{i}.name", v.name)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None
        base = (path.parent / v.config)
        if not base.is_file():
            raise ConfigError(f"{where}: config = {v.config!r}: file {str(base)!r} not found")
        data = read_toml(base)
        prepare_plugins(data, base.resolve().parent, study_plugins)
        for key, value in v.set.items():
            _set_path(data, key, value, where)
        data["output"] = {**data.get("output", {}), "figures": False}
        try:
            cfg = ExperimentConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, where)) from None
        scenario, _, rule = v.curve.partition("/")
        scenarios = [s.name for s in cfg.scenarios]
        if scenario not in scenarios:
            raise ConfigError(f"{where}: curve = {v.curve!r}: scenario {scenario!r} not in the variant's "
                              f"scenarios; allowed: {', '.join(scenarios)}")
        sc = cfg.scenarios[scenarios.index(scenario)]
        rules = (sc.methods or cfg.server.methods) if cfg.mode == "server" else cfg.rules.names
        if rule not in rules:
            what = "server method" if cfg.mode == "server" else "weight rule"
            raise ConfigError(f"{where}: curve = {v.curve!r}: {what} {rule!r} not run by the variant; "
                              f"allowed: {', '.join(rules)}")
        metrics = _metric_names(cfg)
        if metrics and study.metric not in metrics:
            raise ConfigError(f"{path}: metric = {study.metric!r}: not recorded by variant {v.name!r}; "
                              f"allowed: {', '.join(sorted(metrics))}")
        configs.append(cfg)
    return study, configs


def variant_state(d: Path, digest: str) -> tuple[bool, str]:
    """(done, why not) for a variant folder: done when its summary says ``finished`` and its
    settings hash matches; a damaged (unreadable, truncated) summary is not done, with a
    warning."""
    import warnings

    from ..io.records import run_status

    summary = d / "summary.json"
    if not summary.is_file():
        return False, "not run yet" if not d.exists() else "no summary (killed or failed early)"
    try:
        s = json.loads(summary.read_text())
        status = run_status(s)
    except (OSError, ValueError) as e:
        warnings.warn(f"{summary}: damaged ({e}); running this variant again", stacklevel=2)
        return False, "damaged summary"
    if status != "finished":
        return False, f"status {status}"
    try:
        old = json.loads((d / VARIANT_STATE).read_text()).get("hash")
    except (OSError, ValueError):
        old = None
    if old != digest:
        return False, "settings changed"
    return True, "finished"


VARIANT_STATE = "variant.json"
log = logging.getLogger("p2pmtl")


def run_study(path: Path, out_dir: Path, progress: bool = True, plugins: Iterable[str] = ()) -> dict:
    """Run every variant that is not done (see :func:`variant_state`) into ``out_dir/NAME``,
    then draw the figures. A failed variant is recorded and the others still run; the study
    then raises the first error (a rerun redoes only what is not done)."""
    from .runner import run_experiment
    from ..io.records import describe_error
    from ..io.rundir import claim

    study, configs = load_study(path, plugins)
    out_dir = Path(out_dir)
    lock = claim(out_dir, resume=True, what="study", own=("study.toml",))
    try:
        (out_dir / "study.toml").write_text(Path(path).read_text())
        failed: list[tuple[str, BaseException]] = []
        for v, cfg in zip(study.variants, configs):
            d = out_dir / v.name
            digest = settings_hash(cfg)
            done, why = variant_state(d, digest)
            if done:
                continue
            if progress:
                log.info(f"[{study.name}] {v.name} ({why})")
            try:
                run_experiment(cfg, d, progress=progress, figures=False, overwrite=True)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                failed.append((v.name, e))
                if progress:
                    log.warning(f"[{study.name}] {v.name} failed: {describe_error(e)}")
                continue
            (d / VARIANT_STATE).write_text(json.dumps({"hash": digest, "config": v.config, "set": v.set}))
        res = plot_study(out_dir, study, configs)
        if failed:
            names = ", ".join(n for n, _ in failed)
            raise RuntimeError(f"study {study.name}: variant(s) {names} failed ({describe_error(failed[0][1])}); "
                               f"the others are in {out_dir}; rerun to redo the failed ones")
        return res
    finally:
        lock.release()


def _curve(run_dir: Path, curve: str, metric: str) -> dict[str, np.ndarray]:
    scenario, _, rule = curve.partition("/")
    rows = []
    with open(run_dir / "curves.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["scenario"] == scenario and r["rule"] == rule and r["group"] == "all" and r["metric"] == metric:
                rows.append((int(r["step"]), float(r["time"]), float(r["bytes"]), float(r["mean"])))
    if not rows:
        raise ValueError(f"{run_dir}: no curve {curve!r} for metric {metric!r}")
    a = np.array(rows)
    return {"step": a[:, 0], "time": a[:, 1], "bytes": a[:, 2], "value": a[:, 3]}


def _has_curve(run_dir: Path, curve: str, metric: str) -> bool:
    """Whether a variant's folder holds its curve (a missing, partial or damaged file warns)."""
    import warnings

    if not (run_dir / "curves.csv").is_file():
        return False
    try:
        _curve(run_dir, curve, metric)
        return True
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        warnings.warn(f"{run_dir}: no usable curve {curve!r} ({e}); left out of the figures", stacklevel=2)
        return False


def _round_times(run_dir: Path, curve: str) -> dict[str, float]:
    """Server runs: mean round time and its phases (down, train, up) from summary.json."""
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        scenario, _, rule = curve.partition("/")
        res = s["results"][scenario][rule]
    except (OSError, KeyError, ValueError):
        return {}
    keys = ("round_time_mean", "phase_down_mean", "phase_train_mean", "phase_up_mean", "uploads_dropped")
    return {k: res[k] for k in keys if k in res}


def first_reach(c: dict[str, np.ndarray], target: float, smooth: int = 1) -> tuple[float, float]:
    """(simulated seconds, bytes) when the trailing mean over ``smooth`` records of the mean
    metric first reaches ``target`` (inf if never), so that one noisy record does not count."""
    v = c["value"]
    if smooth > 1:
        cs = np.cumsum(np.r_[0.0, v])
        lo = np.maximum(np.arange(1, len(v) + 1) - smooth, 0)
        v = (cs[1:] - cs[lo]) / (np.arange(1, len(v) + 1) - lo)
        v[: min(smooth, len(v)) - 1] = np.inf  # a full window first
    hit = np.flatnonzero(v <= target)
    if not len(hit):
        return float("inf"), float("inf")
    return float(c["time"][hit[0]]), float(c["bytes"][hit[0]])


def graph_stats(run_dir: Path, scenario: str) -> dict[str, float]:
    """Algebraic connectivity (second-smallest Laplacian eigenvalue of the undirected graph, no
    self loops) and the mean number of same-task neighbours per agent, of run 0's graph."""
    import networkx as nx

    w = np.load(run_dir / "arrays" / f"world__{scenario}.npz")
    src, dst, groups = w["src"], w["dst"], w["groups"]
    n = len(groups)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((int(s), int(d)) for s, d in zip(src, dst) if s != d and s < n and d < n)
    lam = nx.algebraic_connectivity(g, method="tracemin_lu", seed=0) if nx.is_connected(g) else 0.0
    other = (src != dst) & (src < n) & (dst < n)
    same = np.bincount(dst[other], weights=(groups[src[other]] == groups[dst[other]]).astype(float), minlength=n)
    return {"algebraic_connectivity": float(lam), "same_task_neighbours": float(same.mean()),
            "mean_degree": float(np.bincount(dst[other], minlength=n).mean())}


def plot_study(out_dir: Path, study: Optional[StudyConfig] = None, configs=None) -> dict:
    """Draw the study's figures from its run directories; returns (and writes) study.json."""
    import matplotlib

    from ..io.figures import new_figure, save_figure

    out_dir = Path(out_dir)
    if study is None:
        study = StudyConfig.model_validate(tomllib.loads((out_dir / "study.toml").read_text()))
    done = [v for v in study.variants if _has_curve(out_dir / v.name, v.curve, study.metric)]
    result: dict = {"name": study.name, "kind": study.kind, "metric": study.metric, "variants": {}}
    if study.kind == "compare":
        panels = list(dict.fromkeys(v.panel for v in done))
        fig, axes = new_figure(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
        for v in done:
            c = _curve(out_dir / v.name, v.curve, study.metric)
            row = panels.index(v.panel)
            style = "--" if "server" in v.name else "-"
            for col, x in enumerate(("time", "bytes")):
                axes[row, col].plot(c[x], c["value"], style, label=v.label or v.name, lw=1.4)
            result["variants"][v.name] = {"final": float(c["value"][-1]), "time": float(c["time"][-1]),
                                          "bytes": float(c["bytes"][-1]), "label": v.label or v.name,
                                          "panel": v.panel, **_round_times(out_dir / v.name, v.curve)}
            if study.target is not None:
                t, b = first_reach(c, study.target, study.smooth)
                result["variants"][v.name].update(time_to_target=t, bytes_to_target=b)
        for row, p in enumerate(panels):
            for col, xl in enumerate(("simulated seconds", "bytes sent (total, all agents)")):
                ax = axes[row, col]
                ax.set_yscale("log")
                ax.set_xlabel(xl)
                ax.set_ylabel(f"mean {study.metric}, normal agents")
                ax.set_title(p or study.name, fontsize=10)
                if col == 1:
                    ax.set_xscale("log")
                ax.grid(alpha=0.3)
            axes[row, 1].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        save_figure(fig, out_dir / f"{study.name}.png", dpi=130)
    else:
        _plot_topology(out_dir, study, done, result)
    (out_dir / "study.json").write_text(json.dumps(result, indent=2, default=float).replace("Infinity", "null"))
    return result


def _plot_topology(out_dir: Path, study: StudyConfig, done: list, result: dict) -> None:
    import matplotlib

    from ..io.figures import new_figure, save_figure

    target = study.target if study.target is not None else 0.1
    families = sorted({v.label or v.name for v in done})
    colors = {f: matplotlib.colormaps["tab10"](i % 10) for i, f in enumerate(families)}
    fig, axes = new_figure(1, 3, figsize=(15, 4.2))
    sizes = sorted({_n_of(out_dir, v) for v in done})
    for v in done:
        d = out_dir / v.name
        scenario = v.curve.partition("/")[0]
        stats = graph_stats(d, scenario)
        c = _curve(d, v.curve, study.metric)
        t, b = first_reach(c, target, study.smooth)
        entry = {**stats, "time_to_target": t, "bytes_to_target": b, "final": float(c["value"][-1]),
                 "label": v.label or v.name}
        rule = v.curve.partition("/")[2]
        for s in study.placement_scenarios:
            try:
                entry[f"final__{s}"] = float(_curve(d, f"{s}/{rule}", study.metric)["value"][-1])
            except ValueError:
                pass
        result["variants"][v.name] = entry
        marker = "osD^v<>"[sizes.index(_n_of(out_dir, v)) % 7]
        col = colors[v.label or v.name]
        y = t if np.isfinite(t) else np.nan
        axes[0].scatter(stats["algebraic_connectivity"], y, color=col, marker=marker, s=40)
        axes[1].scatter(stats["same_task_neighbours"], y, color=col, marker=marker, s=40)
    for f in families:
        axes[0].scatter([], [], color=colors[f], label=f)
    for i, n in enumerate(sizes):
        axes[0].scatter([], [], color="grey", marker="osD^v<>"[i % 7], label=f"n = {n}")
    for ax, xl in zip(axes[:2], ("algebraic connectivity (spectral gap of the Laplacian)",
                                 "same-task neighbours per agent (mean)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(f"simulated seconds to mean {study.metric} <= {target:g}")
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    # Byzantine placement: final metric, random vs highest-degree nodes, per variant
    ax = axes[2]
    names = [v.name for v in done]
    width = 0.8 / max(1, len(study.placement_scenarios))
    for i, s in enumerate(study.placement_scenarios):
        vals = [result["variants"][nm].get(f"final__{s}", np.nan) for nm in names]
        ax.bar(np.arange(len(names)) + i * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(names)) + width * (len(study.placement_scenarios) - 1) / 2)
    ax.set_xticklabels([result["variants"][nm]["label"] + f"\nn={_n_of(out_dir, v)}" for nm, v in zip(names, done)],
                       rotation=60, fontsize=6, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(f"final mean {study.metric}, normal agents")
    ax.set_title("Byzantine agents placed at random vs on hubs", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir / f"{study.name}.png", dpi=130)


def _n_of(out_dir: Path, v: Variant) -> int:
    scenario = v.curve.partition("/")[0]
    return int(np.load(out_dir / v.name / "arrays" / f"world__{scenario}.npz")["groups"].shape[0])
