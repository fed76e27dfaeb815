"""Benchmark of the robust aggregators (:mod:`p2pmtl.robust.aggregators`) at federated-server scale.

Run with ``python -m p2pmtl.bench.aggregators [--n N --dim D --f F --threads T --repeats R]``.
The input is a random float32 ``[n, dim]`` stack (standard normal rows) in which 20% of the
rows, at random positions, are far outliers (``1000 + N(0, 1)`` per coordinate). Figures are
printed, never asserted. ``peak_rss_mb`` is the process's maximum resident set size so far
(``getrusage``), so it only grows down the table: read each row as "peak up to and including
this aggregator" (the input itself takes ``4 n dim`` bytes).

The default size (1000 x 1,000,000, 4 GB of input) needs ~10 GB of memory in all.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Callable

import torch

from ..robust.aggregators import make_aggregator


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


def bench_specs(n: int, dim: int, f: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """(label, aggregator) in table order. Centered clipping uses ``tau = sqrt(dim)`` (about the
    norm of an honest row's deviation from the honest center) and one step from the median."""
    return [
        ("mean", make_aggregator("mean")),
        ("geometric_median", make_aggregator("geometric_median")),
        ("krum", make_aggregator("krum", f=f)),
        ("multi_krum", make_aggregator("multi_krum", f=f, m=n - f)),
        ("coordinate_median", make_aggregator("coordinate_median")),
        ("trimmed_mean", make_aggregator("trimmed_mean", f=f)),
        ("centered_clipping", make_aggregator("centered_clipping", tau=float(dim) ** 0.5, iters=1)),
        ("nnm+mean", make_aggregator("mean", pre=["nnm"], f=f)),
    ]


def benchmark_aggregators(
    n: int = 1000, dim: int = 1_000_000, f: int = 100, threads: int = 1, repeats: int = 1
) -> list[dict]:
    """Seconds per call of each aggregator (best of ``repeats``) on :func:`bench_input`, with the
    peak RSS so far. Rows: ``{"aggregator", "seconds", "peak_rss_mb"}``."""
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: must be >= 1")
    if threads < 1:
        raise ValueError(f"threads = {threads}: must be >= 1")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = bench_input(n, dim)
        rows = []
        for label, agg in bench_specs(n, dim, f):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = agg(x)
                best = min(best, time.perf_counter() - t0)
                del out
            rows.append({"aggregator": label, "seconds": best, "peak_rss_mb": _peak_rss_mb()})
        return rows
    finally:
        torch.set_num_threads(old_threads)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'aggregator':<20} {'seconds':>10} {'peak_rss_mb':>12}"]
    lines += [f"{r['aggregator']:<20} {r['seconds']:>10.3f} {r['peak_rss_mb']:>12.0f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2pmtl.bench.aggregators", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of client vectors (default 1000)")
    ap.add_argument("--dim", type=int, default=1_000_000, help="vector dimension (default 1,000,000)")
    ap.add_argument("--f", type=int, default=100, help="Byzantine inputs the aggregators assume (default 100)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per aggregator, best kept (default 1)")
    args = ap.parse_args(argv)
    print(f"n = {args.n}, dim = {args.dim}, f = {args.f} assumed ({round(0.2 * args.n)} outliers), "
          f"float32, threads = {args.threads}, best of {args.repeats}")
    print(format_table(benchmark_aggregators(args.n, args.dim, args.f, args.threads, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
