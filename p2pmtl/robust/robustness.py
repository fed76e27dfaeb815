"""Empirical robustness of an aggregator: how far Byzantine inputs can drag it from the honest mean.

RESAM (Farhadkhani et al., ICML 2022, Definition 1) calls an aggregator F (f, kappa)-resilient
averaging when, for any n inputs of which n - f are honest (set H),

    ||F(x) - xbar_H|| <= kappa * max_{i, j in H} ||x_i - x_j||,

and the variance form of robust averaging bounds ||F(x) - xbar_H||^2 by kappa times the honest
variance (1/|H|) sum_{i in H} ||x_i - xbar_H||^2. This module estimates both constants,

    kappa_hat     = max over attacks and trials of ||F(x) - xbar_H|| / diam(H),
    kappa_hat_var = max over attacks and trials of ||F(x) - xbar_H||^2 / var(H),

by trying a fixed set of forgeries (:data:`FORGERIES`, ALIE and IPM line-searched over their
factor) on honest vectors drawn from N(0, I_d), or on the honest uploads a server run logged
(``server.log_uploads``, :func:`load_uploads`). A lower bound on the true constants: an attack
outside the set can do worse. ``p2pmtl robustness`` prints the table for every registered
aggregator.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch

from .aggregators import AGGREGATORS, check_inputs, make_aggregator


def _alie_z(n: int, f: int) -> float:
    """ALIE's z (Baruch et al. 2019): the quantile of s = floor(n/2 + 1) - f supporters."""
    s = math.floor(n / 2 + 1) - f
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p)))


SEARCH_FACTORS = tuple(float(v) for v in torch.logspace(-1, 2, 13, dtype=torch.float64))
"""The line-searched factors of ``alie_opt`` and ``ipm_opt`` here: 0.1 ... 100, log-spaced."""


def _forgeries(honest: torch.Tensor, n: int, f: int) -> dict[str, torch.Tensor]:
    """One forged row per attack (all f Byzantine inputs send it). ``alie_opt:Z`` and
    ``ipm_opt:EPS`` are ALIE and IPM at each factor of :data:`SEARCH_FACTORS` (the maximum over
    them is the line-searched attack); ``mimic`` copies the honest row farthest from the mean."""
    mean, std = honest.mean(0), honest.std(0, unbiased=False)
    diam = torch.cdist(honest, honest).max()
    far = mean + 1e3 * diam.clamp_min(1.0) * torch.ones_like(mean) / math.sqrt(mean.numel())
    out = {
        "far": far,
        "sign_flip": -mean,
        "alie": mean - _alie_z(n, f) * std,
        "ipm_0.1": -0.1 * mean,
        "ipm_10": -10.0 * mean,
        "mimic": honest[(honest - mean).norm(dim=1).argmax()].clone(),
        "zero": torch.zeros_like(mean),
        "edge": mean + 0.9 * (honest[(honest - mean).norm(dim=1).argmax()] - mean) * 2,
    }
    for c in SEARCH_FACTORS:
        out[f"alie_opt:{c:.3g}"] = mean - c * std
        out[f"ipm_opt:{c:.3g}"] = -c * mean
    return out


FORGERIES = ("far", "sign_flip", "alie", "ipm_0.1", "ipm_10", "mimic", "zero", "edge", "alie_opt", "ipm_opt")


def empirical_resilience(aggregator: Callable[[torch.Tensor], torch.Tensor], n: int, f: int, *, dim: int = 20,
                         trials: int = 10, seed: int = 0,
                         honest: Optional[Sequence[torch.Tensor]] = None) -> dict[str, float]:
    """kappa_hat and kappa_hat_var of ``aggregator`` with ``f`` of ``n`` inputs Byzantine.

    Honest rows: ``trials`` draws of ``n - f`` vectors from N(0, I_dim) (seeded), or the given
    ``honest`` stacks ``[n - f, d]``. Returns ``{"kappa": ..., "kappa_var": ..., "worst_attack": ...}``."""
    if not 0 <= f < n:
        raise ValueError(f"f = {f}: need 0 <= f < n = {n}")
    gen = torch.Generator().manual_seed(seed)
    stacks = list(honest) if honest is not None else [
        torch.randn(n - f, dim, generator=gen, dtype=torch.float64) for _ in range(trials)]
    kappa, kappa_var, worst = 0.0, 0.0, ""
    for h in stacks:
        h = h.to(torch.float64)
        mean = h.mean(0)
        diam = float(torch.cdist(h, h).max())
        var = float(((h - mean) ** 2).sum(1).mean())
        for name, row in _forgeries(h, n, f).items():
            x = torch.cat([h, row.expand(f, -1)]) if f else h
            err = float(torch.linalg.vector_norm(aggregator(x).to(torch.float64) - mean))
            k = err / diam if diam > 0 else (0.0 if err == 0 else math.inf)
            kv = err ** 2 / var if var > 0 else (0.0 if err == 0 else math.inf)
            if k > kappa:
                kappa, worst = k, name.partition(":")[0]
            kappa_var = max(kappa_var, kv)
    return {"kappa": kappa, "kappa_var": kappa_var, "worst_attack": worst}


KNOWN_BOUNDS: dict[str, Callable[[int, int], float]] = {
    # RESAM (Farhadkhani et al. 2022), the resilience constant of minimum diameter averaging
    "mda": lambda n, f: 2 * f / (n - f),
    # the plain mean is not resilient for any f >= 1 (one input moves it arbitrarily far)
    "mean": lambda n, f: 0.0 if f == 0 else math.inf,
}


def load_uploads(path: str) -> list[torch.Tensor]:
    """The honest uploads a server run logged (``server.log_uploads``): one ``[k, d]`` float64
    stack per logged round, from ``arrays/uploads__SCENARIO__METHOD.npz`` of a run folder."""
    import numpy as np

    with np.load(path) as z:
        keys = sorted((k for k in z.files if k.startswith("round")), key=lambda k: int(k[5:]))
        if not keys:
            raise ValueError(f"{path}: no logged uploads (keys round<T>); run with server.log_uploads > 0")
        return [torch.from_numpy(z[k]).to(torch.float64) for k in keys]


def resilience_table(ns_fs: Iterable[tuple[int, int]], names: Optional[Sequence[str]] = None, *, dim: int = 20,
                     trials: int = 10, seed: int = 0, pre: Sequence[str] = (),
                     honest: Optional[Sequence[torch.Tensor]] = None) -> list[dict]:
    """One row per (aggregator, n, f): kappa_hat, kappa_hat_var, the worst forgery and the known
    bound where one is known. Aggregators that cannot run at (n, f) are skipped.

    With ``honest`` (e.g. :func:`load_uploads` of a run), the honest rows are those stacks
    instead of Gaussian draws: ``n`` is then each stack's row count plus ``f`` (stacks with the
    most common row count are used; the ``n`` of ``ns_fs`` is ignored, only ``f`` is read)."""
    if honest is not None:
        counts = [len(h) for h in honest]
        k = max(set(counts), key=counts.count)
        honest = [h for h in honest if len(h) == k]
        ns_fs = [(k + f, f) for f in dict.fromkeys(f for _, f in ns_fs)]
    rows = []
    for n, f in ns_fs:
        for name in names or AGGREGATORS.names():
            try:
                agg = make_aggregator(name, pre=pre, **({"f": f} if _takes_f(name, pre) else {}))
                _check_all(agg, n)
            except (ValueError, TypeError):
                continue
            r = empirical_resilience(agg, n, f, dim=dim, trials=trials, seed=seed, honest=honest)
            bound = KNOWN_BOUNDS.get(name)
            rows.append({"aggregator": "+".join([*pre, name]), "n": n, "f": f, **r,
                         "known_bound": bound(n, f) if bound else None})
    return rows


def _takes_f(name: str, pre: Sequence[str]) -> bool:
    from .aggregators import PRE_AGGREGATORS, accepted_params

    return any("f" in accepted_params(c) for c in [AGGREGATORS.get(name), *(PRE_AGGREGATORS.get(p) for p in pre)])


def _check_all(agg, n: int) -> None:
    check_inputs(agg, n)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'aggregator':<28} {'n':>4} {'f':>3} {'kappa_hat':>10} {'kappa_var':>10} {'worst':>10} {'bound':>8}"]
    for r in rows:
        b = "-" if r["known_bound"] is None else f"{r['known_bound']:.3g}"
        lines.append(f"{r['aggregator']:<28} {r['n']:>4} {r['f']:>3} {r['kappa']:>10.3g} {r['kappa_var']:>10.3g} "
                     f"{r['worst_attack']:>10} {b:>8}")
    return "\n".join(lines)
