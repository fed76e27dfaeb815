"""The robust-gossip step ``node_aggregator`` aggregates every receiver's neighbourhood of one
size in one batched call for the built-in mean, coordinate median, trimmed mean, Krum,
Multi-Krum and geometric median
(``Aggregator._batched``), and one call per receiver otherwise: the same values as the
per-receiver loop, hostile stacks and refusals included."""
from __future__ import annotations

import warnings

import networkx as nx
import pytest
import torch

from p2pmtl.core.edges import EdgeIndex
from p2pmtl.robust import aggregators as agg
from p2pmtl.rules.combine import CombineContext
from p2pmtl.rules.robust_gossip import NodeAggregatorStep

F32, F64 = torch.float32, torch.float64
BATCHED = {"mean": {}, "coordinate_median": {}, "trimmed_mean": {"f": 1}, "krum": {"f": 1},
           "multi_krum": {"f": 1}, "geometric_median": {}}


def _case(dtype, seed=0, n=40, d=30, p=0.2, huge=None):
    g = nx.gnp_random_graph(n, p, seed=seed)
    edges = EdgeIndex.from_graph(g)
    gen = torch.Generator().manual_seed(seed)
    own = (torch.randn((n, d), generator=gen, dtype=F64) + 3.0).to(dtype)
    own[:3] += 40.0  # far senders
    msgs = own[edges.src].clone()
    if huge is not None:  # one sender's messages beyond the overflow bound: its receivers' guarded path
        msgs[edges.src == 5] = huge
    valid = (torch.rand(edges.num_edges, generator=gen) > 0.1) | (edges.src == edges.dst)
    return CombineContext(edges, msgs, valid, torch.zeros(edges.num_edges, dtype=dtype), own)


def _per_receiver(step, ctx, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(NodeAggregatorStep, "_batched_ordinary",
                  lambda self, stack, rows, size, out: (list(range(rows.numel())), 0))
        return step.combine(ctx)


def _spy(monkeypatch) -> list:
    calls = []
    for name in BATCHED:
        cls = agg.AGGREGATORS.get(name)
        real = cls._batched

        def spy(self, x, real=real):
            calls.append(x.shape[0])
            return real(self, x)

        monkeypatch.setattr(cls, "_batched", spy)
    return calls


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batched_receivers_equal_the_per_receiver_loop(monkeypatch, name, dtype):
    ctx = _case(dtype)
    step = NodeAggregatorStep(aggregator=name, aggregator_params=BATCHED[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # krum refuses the smallest neighbourhoods
        want = _per_receiver(step, ctx, monkeypatch)
        refused_alone = step.refused
        calls = _spy(monkeypatch)
        got = step.combine(ctx)
    sizes = torch.bincount(ctx.edges.dst[ctx.valid], minlength=ctx.edges.num_nodes)
    assert 1 < len(calls) <= len(torch.unique(sizes))  # one call per neighbourhood size (Krum: those it takes)
    assert sum(calls) > 20  # most receivers went through a batched call
    tol = 1e-5 if dtype == F32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert step.refused == refused_alone


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_a_stack_with_huge_entries_takes_the_guarded_call(monkeypatch, name):
    """The receivers of a sender at 1e300 get the aggregator's own guarded path (one call
    each); the others are batched; the result is the per-receiver loop's."""
    ctx = _case(F64, seed=1, huge=1e300)
    step = NodeAggregatorStep(aggregator=name, aggregator_params=BATCHED[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = _per_receiver(step, ctx, monkeypatch)
        calls = _spy(monkeypatch)
        got = step.combine(ctx)
    hearing = ctx.edges.dst[(ctx.edges.src == 5) & ctx.valid].unique()
    assert sum(calls) <= ctx.edges.num_nodes - hearing.numel()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_a_geometric_median_per_receiver_takes_its_own_steps(monkeypatch):
    """Each stack leaves the batched loop at its own tolerance: the step counts are those of
    one call per receiver."""
    ctx = _case(F64, seed=2)
    step = NodeAggregatorStep(aggregator="geometric_median")
    alone, together = [], []
    real_aggregate, real_batched = agg.GeometricMedian._aggregate, agg.GeometricMedian._batched

    def aggregate(self, x):
        out = real_aggregate(self, x)
        alone.extend(self.last_iterations)
        return out

    def batched(self, x):
        out = real_batched(self, x)
        together.extend(self.last_iterations)
        return out

    monkeypatch.setattr(agg.GeometricMedian, "_aggregate", aggregate)
    monkeypatch.setattr(agg.GeometricMedian, "_batched", batched)
    _per_receiver(step, ctx, monkeypatch)
    step.combine(ctx)
    assert len(set(alone)) > 1 and sorted(together) == sorted(alone)


def test_pipelines_and_plugins_keep_one_call_per_receiver(monkeypatch):
    """A pipeline (pre-aggregation steps) and a plugin subclass are never batched."""
    calls = _spy(monkeypatch)
    ctx = _case(F64, seed=3)
    NodeAggregatorStep(aggregator="mean", pre=["nnm"], aggregator_params={"f": 1}).combine(ctx)

    class Doubled(agg.Mean):
        def _aggregate(self, x):
            return 2.0 * x.mean(dim=0)

    step = NodeAggregatorStep(aggregator="mean")
    step._agg = Doubled()
    out = step.combine(ctx)
    assert calls == []
    assert torch.isfinite(out).all()


def test_the_bench_times_both_ways():
    """`p2pmtl bench --only aggregators` prints the per-receiver loop beside the batched calls
    (tiny sizes here; figures are never asserted)."""
    from p2pmtl.bench.aggregators import node_aggregator_rows

    rows = node_aggregator_rows(n=60, degree=5.0, dim=20, repeats=1)
    assert [r["aggregator"] for r in rows] == ["mean", "coordinate_median", "krum", "geometric_median"]
    assert all(r["per_receiver_s"] > 0 and r["batched_s"] > 0 for r in rows)
