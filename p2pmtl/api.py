"""The Python API: load a config, run it, get DataFrames back.

>>> import p2pmtl
>>> cfg = p2pmtl.load_config("target_localization", overrides=["iterations=100"])
>>> res = p2pmtl.run(cfg)                # nothing kept on disk unless out= is given
>>> res.table("loss")                    # scenario x rule, last-window means
>>> res.plot("loss", scenario="byzantine_20", ax=my_axes)

Sweeps and studies return :class:`~p2pmtl.experiments.results.SweepResults` and
:class:`~p2pmtl.experiments.results.StudyResults`. Every function raises
:class:`~p2pmtl.experiments.config.ConfigError` for bad settings before any work starts.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .resources import resolve_config
from .experiments.config import ConfigError, ExperimentConfig
from .experiments.config import load_config as _load_config
from .experiments.results import RunResults, StudyResults, SweepResults

Source = Union[str, Path, dict, ExperimentConfig]


def load_config(source: Source, overrides: Iterable[str] = (), *, plugins: Iterable[str] = ()) -> ExperimentConfig:
    """A validated experiment config from ``source``: a path to a TOML file, the name of a
    bundled config (``"target_localization"``, see ``p2pmtl list``), a dict with the same
    keys as the TOML file, or a config to copy. ``overrides`` are ``KEY=VALUE`` strings as in
    ``--set``; ``plugins`` are module names or ``.py`` paths imported first (beside the
    config's own ``plugins`` key)."""
    overrides = list(overrides)
    if isinstance(source, ExperimentConfig):
        return _load_config(data=source.model_dump(mode="json", exclude_unset=True), overrides=overrides,
                            plugins=plugins)
    if isinstance(source, dict):
        return _load_config(data=source, overrides=overrides, plugins=plugins)
    if isinstance(source, (str, Path)):
        return _load_config(resolve_config(source), overrides, plugins=plugins)
    raise ConfigError(f"config source {source!r}: give a path, a bundled config name, a dict or an ExperimentConfig")


def run(config: Source, out: Optional[Union[str, Path]] = None, *, overrides: Iterable[str] = (),
        plugins: Iterable[str] = (), jobs: Optional[int] = None, progress: bool = False,
        figures: Optional[bool] = None, overwrite: bool = False) -> RunResults:
    """Run every scenario x rule (or server method) of ``config`` and return its results.

    ``out``: the run folder (kept, as ``p2pmtl run --out`` writes it); ``None`` runs in a
    temporary folder that is removed afterwards (figures off), the tables being read into
    memory first. ``jobs`` runs scenarios in parallel processes. Ctrl-C raises
    KeyboardInterrupt after the partial results are written; an error marks the run failed
    and is raised."""
    from .experiments.runner import run_experiment

    cfg = config if isinstance(config, ExperimentConfig) and not overrides and not plugins else \
        load_config(config, overrides, plugins=plugins)
    if out is not None:
        run_experiment(cfg, Path(out), progress=progress, figures=figures, jobs=jobs, overwrite=overwrite)
        res = RunResults.load(out)
        res.config = cfg
        return res
    with tempfile.TemporaryDirectory(prefix="p2pmtl-run-") as tmp:
        run_experiment(cfg, Path(tmp) / "run", progress=progress, figures=bool(figures), jobs=jobs)
        res = RunResults.load(Path(tmp) / "run")
    res.run_dir, res.config = None, cfg
    return res


def sweep(config: Union[str, Path, dict], out: Union[str, Path], *, overrides: Iterable[str] = (),
          plugins: Iterable[str] = (), jobs: Optional[int] = None, backend: str = "local",
          progress: bool = False, figures: bool = True) -> SweepResults:
    """Run (or resume) the attack x defence x fraction x seed grid of a sweep config (a path, a
    bundled name or a dict with a ``sweep`` table) into ``out``; returns its tables."""
    from .experiments.sweep import run_sweep

    src = config if isinstance(config, dict) else resolve_config(config)
    run_sweep(src, out, overrides=list(overrides), jobs=jobs, backend=backend, progress=progress,
              figures=figures, plugins=list(plugins))
    return SweepResults.load(out)


def study(path: Union[str, Path], out: Union[str, Path], *, plugins: Iterable[str] = (),
          progress: bool = False) -> StudyResults:
    """Run (or resume) the variants of a study file (a path or a bundled study name) into
    ``out``; returns one row per variant."""
    from .experiments.study import run_study

    run_study(resolve_config(path), Path(out), progress=progress, plugins=list(plugins))
    return StudyResults.load(out)


def load_results(path: Union[str, Path]) -> Any:
    """The results in a run, sweep or study folder (whichever it is)."""
    d = Path(path)
    if (d / "cells.json").is_file():
        return SweepResults.load(d)
    if (d / "study.json").is_file():
        return StudyResults.load(d)
    return RunResults.load(d)
