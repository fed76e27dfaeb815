"""Check Li2020's per-agent guarantee in a run directory: for every scenario, run and normal
agent, compare the last-window mean of a metric under a rule (default ``loss``) with the same
agent under a baseline rule (default ``noncoop``, non-cooperation).

    python -m p2pmtl.experiments.sweep_guarantee RUN_DIR [--rule loss] [--baseline noncoop] [--metric loss msd]

Needs per-agent rows (``output.per_agent = true``). Prints, per scenario and metric: agents
compared, the share worse than the baseline (ratio > 1 + tol), the median and worst ratio, and
the mean ratio of the rule to the baseline.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _metric_rows(run_dir: Path):
    """The per-agent rows of a run (``metrics.csv`` or the ``metrics.parquet/`` folder) as dicts."""
    from ..io.records import METRICS_PARQUET

    if (run_dir / METRICS_PARQUET).is_dir():  # output.records = "parquet"
        from .results import _read_metrics

        yield from _read_metrics(run_dir).to_dict("records")
        return
    with open(run_dir / "metrics.csv") as f:
        yield from csv.DictReader(f)


def agent_means(run_dir: Path, window: int) -> dict:
    """{(scenario, rule, run, agent, metric): mean over the last ``window`` iterations}."""
    rows: dict = defaultdict(list)
    last: dict = defaultdict(int)
    for r in _metric_rows(Path(run_dir)):
        key = (r["scenario"], r["rule"], int(r["run"]), int(r["agent"]), r["metric"])
        step = int(r["step"])
        rows[key].append((step, float(r["value"])))
        last[(r["scenario"], r["rule"])] = max(last[(r["scenario"], r["rule"])], step)
    out = {}
    for key, vals in rows.items():
        end = last[key[:2]]
        out[key] = float(np.mean([v for s, v in vals if s > end - window]))
    return out


def check(run_dir: Path, rule: str = "loss", baseline: str = "noncoop", metrics=("loss", "msd"),
          tol: float = 0.0) -> list[dict]:
    run_dir = Path(run_dir)
    window = 100
    cfg = run_dir / "config.toml"
    if cfg.is_file():
        import tomllib

        window = tomllib.loads(cfg.read_text()).get("output", {}).get("window", 100)
    means = agent_means(run_dir, window)
    scenarios = sorted({k[0] for k in means})
    report = []
    for sc in scenarios:
        for m in metrics:
            pairs = [(v, means.get((sc, baseline, run, agent, m))) for (s, r, run, agent, mm), v in means.items()
                     if s == sc and r == rule and mm == m]
            pairs = [(a, b) for a, b in pairs if b is not None]
            if not pairs:
                continue
            ratio = np.array([a / b if b > 0 else np.inf for a, b in pairs])
            report.append({"scenario": sc, "metric": m, "agents": len(pairs),
                           "share_worse": float(np.mean(ratio > 1 + tol)),
                           "median_ratio": float(np.median(ratio)), "worst_ratio": float(ratio.max()),
                           "mean_rule": float(np.mean([a for a, _ in pairs])),
                           "mean_baseline": float(np.mean([b for _, b in pairs]))})
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m p2pmtl.experiments.sweep_guarantee", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--rule", default="loss")
    p.add_argument("--baseline", default="noncoop")
    p.add_argument("--metric", nargs="*", default=["loss", "msd"])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    rep = check(Path(a.run_dir), a.rule, a.baseline, a.metric)
    if a.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"| scenario | metric | agents | share worse than {a.baseline} | median ratio | worst ratio | "
          f"mean {a.rule} | mean {a.baseline} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rep:
        print(f"| {r['scenario']} | {r['metric']} | {r['agents']} | {100 * r['share_worse']:.1f}% | "
              f"{r['median_ratio']:.3g} | {r['worst_ratio']:.3g} | {r['mean_rule']:.4g} | {r['mean_baseline']:.4g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
