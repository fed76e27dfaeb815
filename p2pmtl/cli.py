"""Command line: ``p2pmtl run | sweep | study | list | plot | robustness | bench``.

Every command takes ``--plugin MODULE_OR_FILE`` (repeatable) and ``--quiet``; messages go
through the standard :mod:`logging` module (logger ``p2pmtl``), results to stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .arg_types import int_at_least, non_negative_int, positive_int, probability

log = logging.getLogger("p2pmtl")


def _config_path(source: str) -> Path:
    """A config path, or the bundled config of that name (``p2pmtl run target_localization``)."""
    from .resources import resolve_config

    return resolve_config(source)


def _with_device(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, with ``--device D`` as one more (``device=D``)."""
    return list(args.set) + ([f"device={args.device}"] if getattr(args, "device", None) else [])


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiments.config import ConfigError, load_config
    from .experiments.runner import run_experiment
    from .io.rundir import unique_default

    try:
        cfg = load_config(_config_path(args.config), _with_device(args), plugins=args.plugin)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(cfg, "sweep", None) is not None:
        log.info(f"note: {args.config} has a [sweep] table; `p2pmtl run` runs its base config once "
                 f"(use `p2pmtl sweep {args.config}` for the grid)")
    out = Path(args.out) if args.out else unique_default(Path("runs"), cfg.name)
    try:
        summary = run_experiment(cfg, out, progress=not (args.no_progress or args.quiet),
                                 figures=False if args.no_figures else None, jobs=args.jobs,
                                 overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\ninterrupted: partial results kept in {out} (summary.json says which runs finished)",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as e:
        if not args.out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the default folder made for this run: nothing was written
        if (out / "summary.json").is_file():
            print(f"error: {_one_line(e)}\n(partial results in {out}; summary.json says failed)", file=sys.stderr)
        else:
            print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"results in {out}")
    return 0


def _one_line(e: BaseException) -> str:
    """An exception as the user should read it: its message (KeyError's without quotes)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e) or type(e).__name__


def format_summary(summary: dict, metric: str = "loss") -> str:
    """Scenario x rule table of the last-window mean of ``metric`` over normal agents; server
    runs get one row per (scenario, method) with the meta-test beside it."""
    res = summary.get("results", {})
    first = next((r for sc in res.values() for r in sc.values()), {})
    if "meta_test_acc" in first:
        return format_server_summary(res)
    rules = list(dict.fromkeys(r for sc in res.values() for r in sc))
    if not rules:
        return "(no finished results)"
    some = next(iter(next(iter(res.values())).values()))
    if metric not in some:
        metric = "test_acc" if "test_acc" in some else next(k for k, v in some.items() if isinstance(v, dict))
    width = max(12, *(len(s) for s in res))
    lines = [f"last-window mean {metric} of normal agents", f"{'scenario':<{width}} " + " ".join(f"{r:>10}" for r in rules)]
    for sc, by_rule in res.items():
        cells = [f"{_num(by_rule[r][metric]['last_window_mean']):>10}" if r in by_rule else f"{'-':>10}" for r in rules]
        lines.append(f"{sc:<{width}} " + " ".join(cells))
    return "\n".join(lines)


def _num(v) -> str:
    return "nan" if v is None else f"{v:.4g}"


def format_server_summary(res: dict) -> str:
    """Rows like BR-MTRL's Table II: test accuracy of normal clients, then the meta-test."""
    lines = [f"{'scenario / method':<34} {'test acc':>9} {'meta-test':>10} {'naive':>7}"]
    for sc, by_method in res.items():
        for m, r in by_method.items():
            cells = [r["test_acc"]["last_window_mean"], r["meta_test_acc"], r["naive_meta_test_acc"]]
            a, b, c = ("nan" if v is None or v != v else f"{v:.4f}" for v in cells)
            lines.append(f"{sc + ' / ' + m:<34} {a:>9} {b:>10} {c:>7}")
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    """Every registered component, with ``[plugin: MODULE]`` after those a plugin added."""
    import tomllib

    from .data import IMAGE_SETS
    from .experiments.plugins import load_plugins
    from .graphs.families import GRAPHS, named_topologies
    from .robust.aggregators import AGGREGATORS, PRE_AGGREGATORS
    from .robust.attacks import ATTACKS
    from .rules.combine import COMBINES
    from .rules.weights import RULES
    from .tasks import TASKS
    from .tasks.models import MODELS

    load_plugins(args.plugin)

    def rows(registry, extra=lambda e: ""):
        return [(e.name, e.description + extra(e) + ("" if e.builtin else f" [plugin: {e.origin}]"))
                for e in registry.entries()]

    schemes = [("fedavg", "one global model, aggregated whole"),
               ("fedper", "representation and personal head trained together; representation aggregated"),
               ("fedrep", "alternating head / representation updates, mean aggregation"),
               ("br-mtrl", "alternating updates, robust aggregation (br-mtrl+gm, br-mtrl+krum, ...)")]
    sections = [("weight rules (gossip)", rows(RULES)), ("combine steps (gossip)", rows(COMBINES)),
                ("server methods: SCHEME[+AGGREGATOR]", schemes),
                ("aggregators", rows(AGGREGATORS)), ("pre-aggregation steps", rows(PRE_AGGREGATORS)),
                ("attacks", rows(ATTACKS, lambda e: f" [knows: {e.obj.knows}]")), ("graph families", rows(GRAPHS)),
                ("tasks", rows(TASKS)), ("models", rows(MODELS)),
                ("datasets (task.datasets, beside mnist, synthetic, emnist, cifar10, folder)", rows(IMAGE_SETS))]
    for title, items in sections:
        print(f"{title}:")
        for name, desc in items:
            print(f"  {name:<20} {desc}")
    print("named topologies (topologies/*.toml):")
    for name, path in named_topologies().items():
        desc = tomllib.loads(path.read_text()).get("description", "")
        print(f"  {name:<20} {desc}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .io.figures import plot_run
    from .io.records import inspect_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a folder", file=sys.stderr)
        return 2
    problems = inspect_run(run_dir)
    if not (run_dir / "curves.csv").is_file() and not (run_dir / "summary.json").is_file():
        print(f"error: {run_dir} is not a run directory (no curves.csv, no summary.json)", file=sys.stderr)
        return 2
    for line in problems:
        log.warning(f"note: {line}")
    for p in plot_run(run_dir):
        print(p)
    summary = run_dir / "summary.json"
    try:
        print(format_summary(json.loads(summary.read_text())))
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        print("(no readable summary)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.config import ConfigError
    from .experiments.sweep import format_matrix, load_sweep, run_sweep, write_matrix

    if args.plot:
        run_dir = Path(args.config)
        if not (run_dir / "cells.json").is_file():
            print(f"error: {run_dir} is not a sweep directory (no cells.json)", file=sys.stderr)
            return 2
        print(format_matrix(write_matrix(run_dir, metric=args.metric)))
        return 0
    try:
        path = _config_path(args.config)
        cfg, _ = load_sweep(path, args.set, plugins=args.plugin)
        out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-sweep"
        matrix = run_sweep(path, out, overrides=_with_device(args), jobs=args.jobs, backend=args.backend,
                           ray_address=args.ray_address, progress=not (args.no_progress or args.quiet),
                           figures=not args.no_figures, plugins=args.plugin)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cells kept in {out}; rerun the same command to do the rest",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_matrix(matrix))
    print(f"{matrix['ran']} cells run, {matrix['skipped']} already finished; results in {out}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .experiments.config import ConfigError
    from .experiments.study import load_study, plot_study, run_study

    try:
        if args.plot:
            res = plot_study(Path(args.study))
            out = Path(args.study)
        else:
            path = _config_path(args.study)
            study, _ = load_study(path, args.plugin)
            out = Path(args.out) if args.out else Path("runs") / study.name
            res = run_study(path, out, progress=not (args.no_progress or args.quiet), plugins=args.plugin)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished variants kept in {out}; rerun to resume", file=sys.stderr)
        return 130
    for name, v in res["variants"].items():
        extra = "".join(f"  {k} {v[k]:.4g}" for k in ("time_to_target", "bytes_to_target", "algebraic_connectivity",
                                                       "same_task_neighbours") if k in v and v[k] is not None)
        print(f"{name:<28} final {res['metric']} {v['final']:.4g}{extra}")
    print(f"figure: {out / (res['name'] + '.png')}")
    return 0


def _n_f(text: str) -> tuple[int, int]:
    try:
        n, f = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N:F, e.g. 10:2") from None
    if not 0 <= f < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= F < N")
    return n, f


def _cmd_robustness(args: argparse.Namespace) -> int:
    """Empirical (f, kappa)-resilience of every aggregator (RESAM Definition 1)."""
    from .experiments.plugins import load_plugins
    from .robust.aggregators import AGGREGATORS, PRE_AGGREGATORS
    from .robust.robustness import format_table, resilience_table

    load_plugins(args.plugin)
    for name in args.aggregators or []:
        if name not in AGGREGATORS:
            print(f"error: --aggregators {name!r}: unknown; allowed: {', '.join(AGGREGATORS.names())}", file=sys.stderr)
            return 2
    for name in args.pre:
        if name not in PRE_AGGREGATORS:
            print(f"error: --pre {name!r}: unknown; allowed: {', '.join(PRE_AGGREGATORS.names())}", file=sys.stderr)
            return 2
    honest = None
    if args.uploads:
        from .robust.robustness import load_uploads

        try:
            honest = load_uploads(args.uploads)
        except (OSError, ValueError) as e:
            print(f"error: --uploads {args.uploads!r}: {e}", file=sys.stderr)
            return 2
    rows = resilience_table(args.n_f, args.aggregators, dim=args.dim, trials=args.trials, seed=args.seed, pre=args.pre,
                            honest=honest)
    source = (f"the {len(honest)} rounds of honest uploads in {args.uploads}" if honest is not None
              else f"honest rows ~ N(0, I_{args.dim}), {args.trials} trials")
    print(f"empirical resilience: {source}, max over forgeries (ALIE and IPM line-searched); "
          f"kappa_hat = max ||F(x) - honest mean|| / honest diameter")
    print(format_table(rows))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.main import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="p2pmtl",
        description="Decentralized multi-task learning with Byzantine agents on a SimPy clock.",
    )
    p.add_argument("--version", action="version", version=f"p2pmtl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module or .py file that registers components (repeatable)")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    def add(*args, **kwargs) -> argparse.ArgumentParser:
        """A command that takes the common options (--plugin, --quiet)."""
        return sub.add_parser(*args, parents=[common], **kwargs)

    r = add("run", help="run an experiment config", description="Run every scenario x weight rule of a TOML config.")
    r.add_argument("config", help="experiment TOML file or bundled config name, e.g. target_localization")
    r.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=100 --set scenarios.1.byzantine=5")
    r.add_argument("--jobs", type=positive_int,
                   help="run scenarios in this many parallel processes (default: config's jobs)")
    r.add_argument("--device", metavar="DEVICE", help="where neural models train and are scored: auto, cpu, cuda or cuda:N (the config's device)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out (refused while a live run holds it)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    r.set_defaults(func=_cmd_run)
    ls = add("list", help="list weight rules, attacks, graph families, tasks, topologies")
    ls.set_defaults(func=_cmd_list)
    pl = add("plot", help="(re)draw the figures of a run directory")
    pl.add_argument("run_dir")
    pl.set_defaults(func=_cmd_plot)
    sw = add("sweep", help="run an attack x defence x Byzantine fraction x seed grid",
                        description="Run the cells of a sweep config ([sweep] table) in parallel, skipping "
                                    "finished cells, and draw the resilience matrix (matrix.png, matrix.csv).")
    sw.add_argument("config", help="sweep TOML file (with --plot: a sweep directory)")
    sw.add_argument("--out", help="sweep directory (default runs/NAME-sweep; rerun to resume)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set iterations=100 --set 'sweep.seeds=[0]'")
    sw.add_argument("--jobs", type=positive_int, help="parallel cells (local backend; default: sweep.jobs or CPU count)")
    sw.add_argument("--device", metavar="DEVICE", help="where neural models train and are scored: auto, cpu, cuda or cuda:N (the config's device)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local processes (default) or Ray tasks (pip install 'p2pmtl[ray]')")
    sw.add_argument("--ray-address", help="Ray cluster address (default: start or join a local Ray)")
    sw.add_argument("--plot", action="store_true", help="only redraw the matrix of a sweep directory")
    sw.add_argument("--metric", help="with --plot: draw this recorded metric instead (matrix_METRIC.png)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--no-figures", action="store_true", help="skip matrix.png")
    sw.set_defaults(func=_cmd_sweep)
    st = add("study", help="run the variants of a study and draw its comparison figures",
                        description="Run every variant of a study file (e.g. experiments/server_vs_gossip.toml) "
                                    "into one directory, skipping finished variants, then draw the figures.")
    st.add_argument("study", help="study TOML file (with --plot: a study directory)")
    st.add_argument("--out", help="study directory (default runs/NAME; rerun to resume)")
    st.add_argument("--plot", action="store_true", help="only redraw the figures of a study directory")
    st.add_argument("--no-progress", action="store_true", help="no progress bar")
    st.set_defaults(func=_cmd_study)
    rb = add("robustness", help="estimate each aggregator's resilience constant kappa (RESAM Def. 1)",
             description="For every aggregator (or --aggregators), f of n inputs Byzantine: the largest "
                         "||F(x) - honest mean|| / honest diameter over a set of forgeries, on Gaussian honest rows.")
    rb.add_argument("--n-f", type=_n_f, nargs="+", default=[(10, 1), (10, 3), (26, 5)], metavar="N:F",
                    help="input counts and Byzantine counts (default 10:1 10:3 26:5)")
    rb.add_argument("--aggregators", nargs="*", help="aggregators to measure (default: all registered)")
    rb.add_argument("--pre", nargs="*", default=[], help="pre-aggregation steps before each aggregator")
    rb.add_argument("--dim", type=positive_int, default=20, help="dimension of the vectors")
    rb.add_argument("--trials", type=positive_int, default=10, help="honest draws per (n, f)")
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--uploads", metavar="NPZ", help="honest rows from a server run instead of Gaussian draws: "
                    "RUN/arrays/uploads__SCENARIO__METHOD.npz (written with server.log_uploads > 0); "
                    "n = logged honest uploads + F of each --n-f")
    rb.set_defaults(func=_cmd_robustness)
    b = add("bench", help="time the batched engine against a per-agent numpy loop",
                       description="Target localization: batched engine vs the per-agent loop of the "
                                   "published reference code, then scaling to large graphs.")
    b.add_argument("--iterations", type=positive_int, default=200, help="timed iterations at 100 agents")
    b.add_argument("--sizes", type=int_at_least(2), nargs="*", default=[1000, 10000, 100000],
                   help="agent counts for the scaling part")
    b.add_argument("--scale-iterations", type=positive_int, default=100, help="iterations per scaling size")
    b.add_argument("--scale-kernels", nargs="*", default=["torch", "numba"], choices=["torch", "numba", "auto"],
                   metavar="KERNEL", help="scale: the kernels timed at every size (torch, numba, auto; default both)")
    b.add_argument("--scale-rules", nargs="+", default=["loss"], metavar="RULE",
                   help="scale: the weight rules, as lanes of one engine (default: loss)")
    b.add_argument("--scale-loss", type=probability, default=0.0, metavar="P",
                   help="scale: the synchronous network model drops each message with probability P (default 0: "
                        "no network model)")
    b.add_argument("--scale-threads", type=positive_int, default=1,
                   help="scale: torch (and kernel) threads of the timed iterations and of the whole-process run")
    b.add_argument("--process-agents", type=non_negative_int, default=100_000,
                   help="scale: agents of the whole-process run (0: skip it; default 100,000)")
    b.add_argument("--process-iterations", type=positive_int, default=500, help="scale: iterations of the whole-process run")
    b.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="bank: where the batched bank runs (cpu, cuda, cuda:N or auto); per-agent modules always on the CPU")
    b.add_argument("--bank-sizes", type=int_at_least(2), nargs="*", metavar="N",
                   help="bank: agents per timed round (default 10 on the CPU; 10, 100 and 1000 on a GPU)")
    b.add_argument("--bank-threads", type=positive_int, default=1, metavar="T",
                   help="bank: torch threads of the timed rounds (the 2-core CPU baseline: 2)")
    b.add_argument("--bank-layouts", nargs="*", choices=["modules", "batched"], metavar="BANK",
                   help="bank: the layouts timed (default: both on the CPU, batched on a GPU)")
    b.add_argument("--bank-clients", type=non_negative_int, default=100, metavar="N",
                   help="bank: clients of the timed BR-MTRL server round on --device (0: no server round)")
    b.add_argument("--graph-sizes", type=positive_int, nargs="*", default=[100_000, 1_000_000], metavar="N",
                   help="graphs: agents of the random families built (default 100,000 and 1,000,000)")
    b.add_argument("--graph-networkx-max", type=non_negative_int, default=100_000, metavar="N",
                   help="graphs: time networkx's generators up to this many agents (default 100,000)")
    b.add_argument("--only", nargs="*", choices=["linear", "bank", "scale", "graphs", "digits", "server", "aggregators",
                                                   "network", "resam", "process"],
                   help="run only these parts (default: all)")
    b.add_argument("--process-repeats", type=positive_int, default=5,
                   help="process: alternated runs of `p2pmtl run target_localization` and a bare torch import")
    b.add_argument("--agg-n", type=int_at_least(3), default=1000, help="aggregators: number of client vectors")
    b.add_argument("--agg-dim", type=positive_int, default=1_000_000,
                   help="aggregators: vector dimension (the default 1000 x 1M needs ~10 GB of memory)")
    b.add_argument("--agg-threads", type=positive_int, default=1, metavar="T",
                   help="aggregators: torch threads, which the aggregators' selections use too (default 1)")
    b.add_argument("--agg-repeats", type=positive_int, default=1, metavar="R",
                   help="aggregators: timed calls per rule, the best one reported (default 1)")
    b.set_defaults(func=_cmd_bench)
    return p


class _CurrentStderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at each message (not the stream
    of the first call: ``main`` may run again with stderr redirected, as in tests or notebooks)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    """``p2pmtl`` messages on stderr as plain lines; ``--quiet`` keeps warnings and errors."""
    logger = logging.getLogger("p2pmtl")
    if not any(getattr(h, "_p2pmtl", False) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._p2pmtl = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one ``warning: ...`` line (no source path or code excerpt)."""
    return f"warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. Errors end in one line on stderr: status 2 for bad input (config, names,
    paths), 1 for a failed run or an output folder that cannot be written (full disk,
    permissions, ``--out`` a file), 130 for Ctrl-C. ``P2PMTL_TRACEBACK=1`` shows tracebacks."""
    import os

    from .io.rundir import OutputError

    import warnings

    warnings.formatwarning = _format_warning
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if os.environ.get("P2PMTL_TRACEBACK"):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: cannot read or write files{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("P2PMTL_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {_one_line(e)} (set P2PMTL_TRACEBACK=1 for the traceback)",
              file=sys.stderr)
        return 1


def console() -> None:
    """The ``p2pmtl`` command (and ``python -m p2pmtl``): :func:`main`, then :func:`fast_exit`."""
    fast_exit(main())


def fast_exit(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown of its modules: with
    torch loaded that teardown alone takes 0.4-0.6 s on this project's 2-core machines (a
    quarter of a bare ``python -c "import torch"``). Everything a normal exit does for the user
    still happens first: the ``atexit`` handlers (loggers, worker pools, temporary folders,
    coverage), then standard output and error and C's stdio buffers are flushed. It falls back
    to a normal exit where that matters or cannot be assured: a tracer or profiler attached
    (debuggers, coverage's tracer, cProfile writing its file at exit), another non-daemon
    thread still running, or ``P2PMTL_NORMAL_EXIT`` set."""
    import atexit
    import os
    import threading

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    busy = any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    if run_exitfuncs is None or busy or sys.gettrace() or sys.getprofile() or os.environ.get("P2PMTL_NORMAL_EXIT"):
        sys.exit(code)
    try:
        run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError, TypeError):
            pass
        os._exit(code)


if __name__ == "__main__":
    console()
