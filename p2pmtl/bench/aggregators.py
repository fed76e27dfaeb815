"""Benchmark of the robust aggregators (:mod:`p2pmtl.robust.aggregators`) at federated-server scale.

Run with ``python -m p2pmtl.bench.aggregators [--n N --dim D --f F --threads T --repeats R]``.
The input is a random float32 ``[n, dim]`` stack (standard normal rows) in which 20% of the
rows, at random positions, are far outliers (``1000 + N(0, 1)`` per coordinate). Figures are
printed, never asserted. ``peak_rss_mb`` is the process's maximum resident set size so far
(``getrusage``), so it only grows down the table: read each row as "peak up to and including
this aggregator" (the input itself takes ``4 n dim`` bytes).

Beside each aggregator: its *bound* measured in the same run on the same input (``read``: one
pass over the stack, ``x.sum(0)``, times the passes the rule needs at least: 1 for the
coordinate-wise rules, one per Weiszfeld iteration for the geometric median; ``gram``: the
Gram matrix ``x @ x.T`` for the distance-based rules, Krum, Multi-Krum, NNM) and, when the
optional ``byzfl`` package is installed (``pip install byzfl``), ByzFL's implementation of the
same rule at the same iteration budget (the geometric median: 3 smoothed-Weiszfeld iterations
from zero, ByzFL's default, against ours with ``max_iter = 3, tol = 0``). The default
geometric median (tolerance 1e-7) is timed twice: as configured (``solver = "auto"``) and with
``solver = "direct"`` (two reads per step), the naive way beside it.

The default size (1000 x 1,000,000, 4 GB of input) needs ~10 GB of memory in all.
"""
from __future__ import annotations

import argparse
import resource
import sys
import warnings
from typing import Callable

import torch

from ..arg_types import int_at_least, non_negative_int, positive_int
from ..robust.aggregators import make_aggregator
from .common import best_time


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)  # KiB on Linux, bytes on macOS


def bench_input(n: int, dim: int, outlier_fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """float32 ``[n, dim]``: N(0, 1) rows, ``round(outlier_fraction * n)`` of them shifted by 1000."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, dim), generator=g, dtype=torch.float32)
    bad = torch.randperm(n, generator=g)[: round(outlier_fraction * n)]
    x[bad] += 1000.0
    return x


GM_ITERATIONS = 3
"""Weiszfeld iterations of the geometric-median row (ByzFL's default ``T``)."""
GM_LABEL = f"geometric_median, {GM_ITERATIONS} it"
GM_DIRECT_LABEL = "geometric_median, direct"
"""The default geometric median with ``solver = "direct"``: the naive way beside the default
(``auto``), which iterates in the span of the rows where that pays."""


def bench_specs(n: int, dim: int, f: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """(label, aggregator) in table order. Centered clipping uses ``tau = sqrt(dim)`` (about the
    norm of an honest row's deviation from the honest center) and one step from the median."""
    return [
        ("mean", make_aggregator("mean")),
        ("geometric_median", make_aggregator("geometric_median")),
        (GM_DIRECT_LABEL, make_aggregator("geometric_median", solver="direct")),
        (GM_LABEL, make_aggregator("geometric_median", max_iter=GM_ITERATIONS, tol=0.0)),
        ("krum", make_aggregator("krum", f=f)),
        ("multi_krum", make_aggregator("multi_krum", f=f, m=n - f)),
        ("coordinate_median", make_aggregator("coordinate_median")),
        ("trimmed_mean", make_aggregator("trimmed_mean", f=f)),
        ("centered_clipping", make_aggregator("centered_clipping", tau=float(dim) ** 0.5, iters=1)),
        ("nnm+mean", make_aggregator("mean", pre=["nnm"], f=f)),
        ("nnm+krum", make_aggregator("krum", pre=["nnm"], f=f)),
    ]


BOUNDS = {"mean": ("read", 1), GM_LABEL: ("read", GM_ITERATIONS), "krum": ("gram", 1),
          "multi_krum": ("gram", 1), "coordinate_median": ("read", 1), "trimmed_mean": ("read", 1),
          "centered_clipping": ("read", 1), "nnm+mean": ("gram", 1), "nnm+krum": ("gram", 1)}
"""The bound each row is held to: (kind, passes)."""


def byzfl_specs(f: int) -> dict[str, Callable]:
    """ByzFL's implementation of each row's rule, keyed by row label (empty without byzfl)."""
    try:
        import byzfl
    except ImportError:
        return {}
    nnm, avg, krum = byzfl.NNM(f=f), byzfl.Average(), byzfl.Krum(f=f)
    return {
        "mean": byzfl.Average(),
        GM_LABEL: byzfl.GeometricMedian(nu=0.1, T=GM_ITERATIONS),
        "krum": byzfl.Krum(f=f),
        "multi_krum": byzfl.MultiKrum(f=f),
        "coordinate_median": byzfl.Median(),
        "trimmed_mean": byzfl.TrMean(f=f),
        "nnm+mean": lambda x: avg(nnm(x)),
        "nnm+krum": lambda x: krum(nnm(x)),
    }


def _best(fn: Callable, x: torch.Tensor, repeats: int) -> float:
    """Fastest of ``repeats`` calls ``fn(x)`` after one untimed call on the first 64 columns (a
    warm-up without a large allocation: the first call in a process of an aggregator with a
    compiled selection loads numba and the kernel from its cache, about 0.25 s once)."""
    fn(x[:, :64])
    return best_time(lambda: fn(x), repeats, warmup=False)


def benchmark_aggregators(
    n: int = 1000, dim: int = 1_000_000, f: int = 100, threads: int = 1, repeats: int = 1
) -> list[dict]:
    """Seconds per call of each aggregator (best of ``repeats``) on :func:`bench_input`, with the
    peak RSS so far. Rows: ``{"aggregator", "seconds", "peak_rss_mb"}``."""
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: must be >= 1")
    if threads < 1:
        raise ValueError(f"threads = {threads}: must be >= 1")
    if n < 3 or dim < 1 or not 0 <= f <= (n - 3) // 2:
        raise ValueError(f"n = {n}, dim = {dim}, f = {f}: allowed: n >= 3, dim >= 1 and 0 <= f <= (n - 3) / 2 "
                         f"(Krum's n >= 2f + 3, the tightest of the rules timed)")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = bench_input(n, dim)
        bound = {"read": _best(lambda v: v.sum(dim=0), x, max(repeats, 3)),
                 "gram": _best(lambda v: v @ v.T, x, max(repeats, 3))}
        theirs = byzfl_specs(f)
        rows = []
        for label, agg in bench_specs(n, dim, f):
            row = {"aggregator": label, "seconds": _best(agg, x, repeats), "peak_rss_mb": _peak_rss_mb()}
            if label in BOUNDS:
                kind, passes = BOUNDS[label]
                row["bound"] = f"{kind} x{passes}" if passes > 1 else kind
                row["bound_seconds"] = bound[kind] * passes
            if label in theirs:
                try:
                    row["byzfl_seconds"] = _best(theirs[label], x, repeats)
                except (MemoryError, RuntimeError) as e:  # e.g. ByzFL's NNM builds [n, n - f, d]
                    if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
                        raise
                    row["byzfl_seconds"] = None
                    row["byzfl_note"] = "out of memory"
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(old_threads)


def node_aggregator_rows(n: int = 1000, degree: float = 10.0, dim: int = 1000, repeats: int = 3,
                         seed: int = 0) -> list[dict]:
    """Seconds per combination of the robust-gossip step ``node_aggregator`` at every receiver
    of a G(n, p) graph (mean degree ``degree``, so about a dozen neighbourhood sizes), float32
    messages of ``dim`` parameters: one aggregator call per receiver (the naive way) against
    one batched call per neighbourhood size (the built-ins' ``_batched``). Rows: ``{"aggregator",
    "per_receiver_s", "batched_s"}``."""
    import networkx as nx

    from ..core.edges import EdgeIndex
    from ..rules.combine import CombineContext
    from ..rules.robust_gossip import NodeAggregatorStep

    edges = EdgeIndex.from_graph(nx.gnp_random_graph(n, degree / n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    own = torch.randn((n, dim), generator=g)
    ctx = CombineContext(edges, own[edges.src], None, torch.zeros(edges.num_edges), own)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Krum refuses the smallest neighbourhoods
        for name, params in (("mean", {}), ("coordinate_median", {}), ("krum", {"f": 1}), ("geometric_median", {})):
            step = NodeAggregatorStep(aggregator=name, aggregator_params=params)
            batched = best_time(lambda: step.combine(ctx), repeats)
            step._batched_ordinary = lambda stack, rows, size, out: (list(range(rows.numel())), 0)  # one call each
            rows.append({"aggregator": name, "per_receiver_s": best_time(lambda: step.combine(ctx), repeats),
                         "batched_s": batched})
    return rows


def format_table(rows: list[dict]) -> str:
    """Seconds per call, the bound and our time over it, ByzFL's time over ours (> 1: we are
    faster), peak RSS."""
    lines = [f"{'aggregator':<24} {'seconds':>9} {'bound':>8} {'bound s':>9} {'/bound':>7} {'ByzFL s':>9} "
             f"{'ByzFL/ours':>10} {'peak_rss_mb':>12}"]
    for r in rows:
        ours, b, z = r["seconds"], r.get("bound_seconds"), r.get("byzfl_seconds")
        over = f"{ours / b:.2f}x" if b else "-"
        vs = f"{z / ours:.2f}x" if z else r.get("byzfl_note", "-")
        lines.append(f"{r['aggregator']:<24} {ours:>9.3f} {r.get('bound', '-'):>8} {(f'{b:.3f}' if b else '-'):>9} "
                     f"{over:>7} {(f'{z:.3f}' if z else '-'):>9} {vs:>10} {r['peak_rss_mb']:>12.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2pmtl.bench.aggregators", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int_at_least(3), default=1000, help="number of client vectors (default 1000)")
    ap.add_argument("--dim", type=positive_int, default=1_000_000, help="vector dimension (default 1,000,000)")
    ap.add_argument("--f", type=non_negative_int, default=100,
                    help="Byzantine inputs the aggregators assume (default 100; n >= 2f + 3 for Krum)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=positive_int, default=1, help="timed calls per aggregator, best kept (default 1)")
    args = ap.parse_args(argv)
    if args.n < 2 * args.f + 3:
        ap.error(f"--f {args.f} with --n {args.n}: allowed: n >= 2f + 3 (Krum's condition, the tightest of the "
                 f"rules timed)")
    print(f"n = {args.n}, dim = {args.dim}, f = {args.f} assumed ({round(0.2 * args.n)} outliers), "
          f"float32, threads = {args.threads}, best of {args.repeats}")
    print(format_table(benchmark_aggregators(args.n, args.dim, args.f, args.threads, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
