"""Figures of a run directory, drawn from its files alone (``p2pmtl plot RUN_DIR``): the
network with groups and Byzantine agents (Li2020 Fig. 1a), every metric's mean and range over
normal agents per rule (Fig. 1b-d), and the learned weight matrices as heatmaps."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from typing import Sequence

import numpy as np
import matplotlib
from matplotlib.figure import Figure

from .records import NETWORK_METRICS, read_curves

FORMATS = ("png", "pdf", "svg")


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """(figure, axes) drawn without pyplot: no backend is chosen or changed, so importing or
    calling p2pmtl never disturbs a notebook's inline plots or a GUI session."""
    figure_keys = ("figsize", "dpi", "layout", "constrained_layout", "tight_layout", "facecolor")
    fig = Figure(**{k: kwargs.pop(k) for k in figure_keys if k in kwargs})
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def save_figure(fig: Figure, path: Path, dpi: int = 120, formats: Sequence[str] = ("png",)) -> Path:
    """``path`` (its suffix is replaced) in every one of ``formats``; returns the first file."""
    path = Path(path)
    out = []
    for fmt in dict.fromkeys(formats or ("png",)):
        if fmt not in FORMATS:
            raise ValueError(f"output.formats: {fmt!r}; allowed: {', '.join(FORMATS)}")
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=dpi)
        out.append(target)
    return out[0]


def run_formats(run_dir: Path) -> tuple[str, ...]:
    """``output.formats`` of the run's config.toml (PNG when absent or unreadable)."""
    import tomllib

    try:
        fmts = tomllib.loads((Path(run_dir) / "config.toml").read_text()).get("output", {}).get("formats")
    except (OSError, ValueError):
        return ("png",)
    return tuple(fmts) if isinstance(fmts, list) and fmts else ("png",)

RULE_STYLE = {  # label, colour, line style, line width (non-coop wide underneath, so that
    # a curve that coincides with it, e.g. loss-based with 99 Byzantine agents, stays visible)
    "noncoop": ("non-cooperative", "tab:blue", "-", 2.6),
    "average": ("average", "tab:orange", "-", 1.2),
    "loss": ("loss-based (Li2020)", "tab:green", "-", 1.2),
    "distance": ("distance-based", "tab:purple", "--", 1.2),
}
GROUP_COLOURS = ["tab:blue", "tab:green", "tab:pink", "gold", "tab:cyan", "tab:brown", "tab:olive", "tab:gray"]
LOG_METRICS = {"loss", "msd", "test_loss"}


def plot_run(run_dir: Path) -> list[Path]:
    """Draw every figure the files of ``run_dir`` allow (damaged curve rows are skipped; see
    :func:`p2pmtl.io.records.inspect_run` for what is missing)."""
    run_dir = Path(run_dir)
    written = []
    curves = read_curves(run_dir) if (run_dir / "curves.csv").is_file() else []
    if curves:
        metrics = sorted({c["metric"] for c in curves} - set(NETWORK_METRICS))
        written.append(plot_network_accounts(run_dir, curves))
        for m in metrics:
            written.append(plot_metric(run_dir, curves, m, group="all"))
            groups = sorted({c["group"] for c in curves if c["metric"] == m and c["group"] != "all"})
            if 1 < len(groups) <= 4:
                written.append(plot_metric_by_group(run_dir, curves, m, groups))
    written += plot_networks(run_dir)
    written += plot_weights(run_dir)
    return [w for w in written if w is not None]


def plot_network_accounts(run_dir: Path, curves) -> Path | None:
    """Runs on the network model: per scenario, the normal agents' mean cumulative bytes sent
    and received, the time split (computing / sending / waiting, stacked) and, asynchronous,
    the staleness, against simulated time. The network is the same for every rule, so the
    first rule of each scenario is drawn."""
    have = {c["metric"] for c in curves} & set(NETWORK_METRICS)
    if "bytes_sent" not in have:
        return None
    scenarios = list(dict.fromkeys(c["scenario"] for c in curves))
    panels = 3 + ("staleness" in have)
    fig, axes = new_figure(len(scenarios), panels, figsize=(4.2 * panels, 3.2 * len(scenarios)), squeeze=False)
    for row, sc in enumerate(scenarios):
        rule = next(c["rule"] for c in curves if c["scenario"] == sc)
        get = {m: np.array([(float(c["time"]), float(c["mean"])) for c in curves if c["scenario"] == sc and
                            c["rule"] == rule and c["group"] == "all" and c["metric"] == m]) for m in have}
        ax = axes[row, 0]
        for m in ("bytes_sent", "bytes_received"):
            ax.plot(get[m][:, 0], get[m][:, 1], label=m.replace("_", " "))
        ax.set_ylabel("bytes per agent (mean)")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        t = get["time_compute"][:, 0]
        parts = [get[m][:, 1] for m in ("time_compute", "time_send", "time_wait")]
        ax.stackplot(t, *parts, labels=["computing", "sending", "waiting"], alpha=0.8)
        ax.set_ylabel("seconds per agent (mean, cumulative)")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[row, 2]
        share = np.array(parts) / np.maximum(np.sum(parts, 0), 1e-12)
        for p, lab in zip(share, ("computing", "sending", "waiting")):
            ax.plot(t, p, label=lab)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of time")
        if "staleness" in have:
            axes[row, 3].plot(get["staleness"][:, 0], get["staleness"][:, 1])
            axes[row, 3].set_ylabel("staleness (steps, mean)")
        for a in axes[row]:
            a.set_xlabel("simulated seconds")
            a.grid(True, ls=":", lw=0.5)
        axes[row, 0].set_title(sc, fontsize=9, loc="left")
    fig.tight_layout()
    out = Path(run_dir) / "network_accounts.png"
    out = save_figure(fig, out, dpi=110, formats=run_formats(run_dir))
    return out


def _series(curves, metric, group):
    """{scenario: {rule: (steps, mean, lo, hi)}} in file order."""
    acc = defaultdict(lambda: defaultdict(list))
    for c in curves:
        if c["metric"] == metric and c["group"] == group:
            acc[c["scenario"]][c["rule"]].append(
                (int(c["step"]), float(c["mean"]), float(c["min"]), float(c["max"]))
            )
    return {s: {r: tuple(np.array(v).T) for r, v in rules.items()} for s, rules in acc.items()}


def _draw(ax, rules, metric):
    """Mean per rule; the min-max band too when it stays readable (at most 4 rules)."""
    for rule, (step, mean, lo, hi) in rules.items():
        label, colour, ls, lw = RULE_STYLE.get(rule, (rule, None, "-", 1.2))
        line, = ax.plot(step + 1, mean, label=label, color=colour, ls=ls, lw=lw)
        if len(rules) <= 4:
            ax.fill_between(step + 1, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    if metric in LOG_METRICS:
        ax.set_yscale("log")
    ax.grid(True, ls=":", lw=0.5)


def plot_metric(run_dir: Path, curves, metric: str, group: str = "all") -> Path | None:
    data = _series(curves, metric, group)
    if not data:
        return None
    many = max(len(r) for r in data.values()) > 4
    fig, axes = new_figure(1, len(data), figsize=(4.2 * len(data) + (2.2 if many else 0), 3.4),
                             squeeze=False, sharey=True)
    for ax, (scenario, rules) in zip(axes[0], data.items()):
        _draw(ax, rules, metric)
        ax.set_title(scenario.replace("_", " "))
        ax.set_xlabel("round" if _mode(run_dir) == "server" else "iteration")
    axes[0][0].set_ylabel(f"{metric} of normal agents ({'mean' if many else 'mean, range'})")
    if many:
        axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / f"{metric}.png"
    path = save_figure(fig, path, dpi=130, formats=run_formats(run_dir))
    return path


def _mode(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("mode", "gossip")
    except (OSError, ValueError):
        return "gossip"


def _group_names(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("group_names") or []
    except (OSError, ValueError):
        return []


def plot_metric_by_group(run_dir: Path, curves, metric: str, groups: list[str]) -> Path | None:
    """One row per task group (Li2020 Figs. 3 and 4 are the two digit groups)."""
    per_group = {g: _series(curves, metric, g) for g in groups}
    names = _group_names(run_dir)
    scenarios = list(dict.fromkeys(sc for series in per_group.values() for sc in series))  # all groups
    fig, axes = new_figure(len(groups), len(scenarios), figsize=(4 * len(scenarios), 2.8 * len(groups)),
                             squeeze=False, sharex=True)
    for i, g in enumerate(groups):
        for j, s in enumerate(scenarios):
            ax = axes[i][j]
            if s not in per_group[g]:
                ax.text(0.5, 0.5, "no normal agent", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_yticks([])
            _draw(ax, per_group[g].get(s, {}), metric)
            if i == 0:
                ax.set_title(s.replace("_", " "))
            if j == 0:
                label = names[int(g)] if int(g) < len(names) else f"group {g}"
                ax.set_ylabel(f"{label}: {metric}")
    axes[-1][-1].legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / f"{metric}_by_group.png"
    path = save_figure(fig, path, dpi=110, formats=run_formats(run_dir))
    return path


def _arrays(run_dir: Path, prefix: str):
    for f in sorted((run_dir / "arrays").glob(f"{prefix}__*.npz")):
        yield f.stem.split("__")[1:], dict(np.load(f))


def plot_networks(run_dir: Path) -> list[Path]:
    worlds = list(_arrays(run_dir, "world"))
    if not worlds:
        return []
    order = _scenario_order(run_dir)
    worlds.sort(key=lambda w: order.get(w[0][0], 99))
    fig, axes = new_figure(1, len(worlds), figsize=(4 * len(worlds), 4), squeeze=False)
    for ax, ((scenario,), a) in zip(axes[0], worlds):
        pos = a["pos"]
        n = pos.shape[0]
        if n <= 2000:
            src, dst = a["src"], a["dst"]
            keep = src != dst
            segs = np.stack([pos[src[keep]], pos[dst[keep]]], axis=1)
            from matplotlib.collections import LineCollection

            ax.add_collection(LineCollection(segs, colors="0.6", linewidths=0.3, zorder=1))
        colours = np.array(GROUP_COLOURS)[a["groups"] % len(GROUP_COLOURS)]
        byz = np.zeros(n, dtype=bool)
        byz[a["byzantine"]] = True
        ax.scatter(pos[~byz, 0], pos[~byz, 1], c=colours[~byz], s=18, edgecolors="k", linewidths=0.3, zorder=2)
        ax.scatter(pos[byz, 0], pos[byz, 1], c="red", marker="X", s=34, edgecolors="k", linewidths=0.3,
                   zorder=3, label="Byzantine")
        ax.set_aspect("equal")
        ax.set_title(f"{scenario.replace('_', ' ')}: {int(byz.sum())} Byzantine")
        if byz.any():
            ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path = run_dir / "network.png"
    path = save_figure(fig, path, dpi=130, formats=run_formats(run_dir))
    return [path]


def _scenario_order(run_dir: Path) -> dict[str, int]:
    try:
        res = json.loads((run_dir / "summary.json").read_text())["results"]
        return {s: i for i, s in enumerate(res)}
    except (OSError, KeyError, ValueError):
        return {}


def plot_weights(run_dir: Path) -> list[Path]:
    """One figure per scenario: the final weight matrix A[l, k] of each rule (column k holds
    receiver k's weights), agents ordered by index (= by group in the case studies)."""
    by_scenario = defaultdict(dict)
    for (scenario, rule), a in _arrays(run_dir, "weights"):
        by_scenario[scenario][rule] = a
    byzantine = {s: a["byzantine"] for (s,), a in _arrays(run_dir, "world")}
    paths = []
    for scenario, rules in by_scenario.items():
        n = int(next(iter(rules.values()))["n"])
        if n > 500:
            continue
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # Byzantine receivers
        fig, axes = new_figure(1, len(rules), figsize=(3.6 * len(rules), 3.4), squeeze=False)
        for ax, (rule, a) in zip(axes[0], sorted(rules.items(), key=lambda kv: list(RULE_STYLE).index(kv[0]) if kv[0] in RULE_STYLE else 9)):
            mat = np.zeros((n, n))
            mat[a["src"], a["dst"]] = a["w"]
            mat[:, byzantine.get(scenario, [])] = np.nan
            im = ax.imshow(mat, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(RULE_STYLE.get(rule, (rule,))[0], fontsize=9)
            ax.set_xlabel("receiver k")
        axes[0][0].set_ylabel("sender l")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="a_lk")
        fig.suptitle(f"learned weights a_lk: {scenario.replace('_', ' ')} (grey: Byzantine receivers)")
        path = run_dir / f"weights_{scenario}.png"
        path = save_figure(fig, path, dpi=120, formats=run_formats(run_dir))
        paths.append(path)
    return paths
