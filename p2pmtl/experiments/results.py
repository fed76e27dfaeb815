"""Results of a run, a sweep or a study as pandas DataFrames, and plots into your own axes.

>>> res = p2pmtl.run("target_localization", overrides=["iterations=50"])   # doctest: +SKIP
>>> res.curves.query("rule == 'loss' and group == 'all' and metric == 'loss'").tail()
>>> res.plot("loss", scenario="byzantine_20")           # draws into plt.gca() or ax=...
>>> res.table()                                          # scenario x rule, last-window means

The tables are the run folder's files read with pandas (``curves.csv``, ``metrics.csv``,
``summary.json``); :meth:`RunResults.load` reads any finished (or partial) run folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pandas is imported where a table is built: `import p2pmtl.api` stays quick
    import pandas as pd


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        return pd.DataFrame()
    # a run killed mid-write may leave a truncated last line: skip rows that do not parse
    return pd.read_csv(path, on_bad_lines="skip", keep_default_na=False,
                       dtype={"scenario": str, "rule": str, "group": str, "metric": str})


def _read_metrics(d: Path) -> pd.DataFrame:
    """``metrics.csv``, or the ``metrics.parquet/`` folder of a run with ``output.records =
    "parquet"``, with the dtypes the CSV reader gives (names and groups as strings)."""
    from ..io.records import METRICS_PARQUET

    folder = d / METRICS_PARQUET
    if not folder.is_dir():
        return _read_csv(d / "metrics.csv")
    import pandas as pd

    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    for col in ("scenario", "rule", "metric"):
        df[col] = df[col].astype(str)
    df["group"] = df["group"].astype(str)
    return df


@dataclass
class RunResults:
    """One run: ``summary`` (dict), ``curves`` and ``metrics`` (long-format DataFrames), the
    run folder (``None`` when the run kept nothing on disk) and the config that made it."""

    summary: dict
    curves: pd.DataFrame
    metrics: pd.DataFrame
    run_dir: Optional[Path] = None
    config: Any = None

    @property
    def status(self) -> str:
        """``finished``, ``interrupted`` or ``failed``."""
        from ..io.records import run_status

        return run_status(self.summary)

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunResults":
        """The results in a run folder (partial runs too: see :attr:`status`)."""
        d = Path(run_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a run folder")
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {"status": "failed", "error": "summary.json missing or damaged", "results": {}}
        config = None
        if (d / "config.toml").is_file():
            import warnings

            from .config import ConfigError, load_config

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the run warned when it was configured
                    config = load_config(d / "config.toml")
            except ConfigError:
                config = None
        return cls(summary, _read_csv(d / "curves.csv"), _read_metrics(d), d, config)

    def table(self, metric: Optional[str] = None) -> pd.DataFrame:
        """Scenario x rule (or server method) table of the last-window mean of ``metric`` over
        normal agents (default: the task's first metric)."""
        import pandas as pd

        rows = []
        for scenario, by_rule in self.summary.get("results", {}).items():
            for rule, res in by_rule.items():
                for m, v in res.items():
                    if isinstance(v, dict) and "last_window_mean" in v:
                        rows.append({"scenario": scenario, "rule": rule, "metric": m, "value": v["last_window_mean"]})
        df = pd.DataFrame(rows, columns=["scenario", "rule", "metric", "value"])
        if df.empty:
            return df
        metric = metric or df["metric"].iloc[0]
        sel = df[df["metric"] == metric]
        if sel.empty:
            raise KeyError(f"metric {metric!r} not recorded; allowed: {', '.join(sorted(df['metric'].unique()))}")
        out = sel.pivot(index="scenario", columns="rule", values="value")
        return out.reindex(index=list(dict.fromkeys(sel["scenario"])), columns=list(dict.fromkeys(sel["rule"])))

    def curve(self, metric: str, scenario: Optional[str] = None, rule: Optional[str] = None,
              group: str = "all") -> pd.DataFrame:
        """Rows of ``curves`` for one metric (and optionally one scenario / rule / group)."""
        c = self.curves
        if c.empty:
            return c
        sel = (c["metric"] == metric) & (c["group"].astype(str) == str(group))
        if scenario is not None:
            sel &= c["scenario"] == scenario
        if rule is not None:
            sel &= c["rule"] == rule
        return c[sel]

    def plot(self, metric: Optional[str] = None, *, scenario: Optional[str] = None, x: str = "step",
             ax: Any = None, logy: Optional[bool] = None, band: bool = True) -> Any:
        """Mean (and min-max band) over normal agents of ``metric`` per rule, against ``x``
        (``step``, ``time`` or ``bytes``), drawn into ``ax`` (default: the current axes).
        Returns the axes. Nothing is saved and the matplotlib backend is left alone."""
        import matplotlib.pyplot as plt

        if ax is None:
            ax = plt.gca()
        c = self.curves
        if c.empty:
            raise ValueError("no curves recorded")
        metric = metric or str(c["metric"].iloc[0])
        scenario = scenario or str(c["scenario"].iloc[0])
        data = self.curve(metric, scenario)
        if data.empty:
            raise KeyError(f"no curve for metric {metric!r} in scenario {scenario!r}")
        for rule, d in data.groupby("rule", sort=False):
            line, = ax.plot(d[x], d["mean"], label=str(rule))
            if band:
                ax.fill_between(d[x], d["min"], d["max"], color=line.get_color(), alpha=0.15, lw=0)
        if logy if logy is not None else metric in ("loss", "msd", "test_loss"):
            ax.set_yscale("log")
        ax.set_xlabel({"step": "iteration", "time": "simulated seconds", "bytes": "bytes sent"}.get(x, x))
        ax.set_ylabel(f"{metric} (normal agents)")
        ax.set_title(scenario)
        ax.legend(fontsize=8)
        return ax

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"RunResults(status={self.status!r}, curves={len(self.curves)} rows, metrics={len(self.metrics)} rows{where})"


@dataclass
class SweepResults:
    """A sweep: ``matrix`` (one row per attack x fraction x defence, mean over seeds),
    ``cells`` (one row per finished cell and defence) and ``worst_case`` (one row per fraction
    x defence: the worst mean over the attacks and the attack that reached it)."""

    matrix: pd.DataFrame
    cells: pd.DataFrame
    info: dict = field(default_factory=dict)
    sweep_dir: Optional[Path] = None

    @property
    def worst_case(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.info.get("worst_case", []))

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "SweepResults":
        import pandas as pd

        from .sweep import collect, write_matrix

        d = Path(sweep_dir)
        info = write_matrix(d, figures=False)
        _, results = collect(d)
        rows = [{"id": r["id"], "attack": r["attack"], "fraction": r["fraction"], "seed": r["seed"],
                 "defence": defence, **{f"{m}": v for m, v in by_metric.items()}}
                for r in results for defence, by_metric in r["results"].items()]
        return cls(pd.DataFrame(info.get("rows", [])), pd.DataFrame(rows), info, d)


@dataclass
class StudyResults:
    """A study: ``table`` (one row per variant: final metric, time and bytes, ...)."""

    table: pd.DataFrame
    info: dict = field(default_factory=dict)
    study_dir: Optional[Path] = None

    @classmethod
    def load(cls, study_dir: str | Path) -> "StudyResults":
        import pandas as pd

        d = Path(study_dir)
        info = json.loads((d / "study.json").read_text())
        table = pd.DataFrame.from_dict(info.get("variants", {}), orient="index")
        table.index.name = "variant"
        return cls(table, info, d)
