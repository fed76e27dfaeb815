"""Aggregators and pre-aggregation steps on hostile stacks: rows with NaN/inf entries are dropped
(``last_dropped`` counts them), huge finite rows (1e308 in float64, 3e38 in float32) never make
distances, norms or means overflow, and the robust rules stay near the honest rows."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from p2pmtl.robust import aggregators as A
from p2pmtl.robust.aggregators import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    CenteredClipping,
    GeometricMedian,
    Krum,
    MultiKrum,
    NearestNeighborMixing,
    TrimmedMean,
    accepted_params,
    make_aggregator,
)

F64, F32 = torch.float64, torch.float32
NAN, INF = math.nan, math.inf
HUGE = {F64: 1e308, F32: 3e38, torch.bfloat16: 3e38, torch.float16: 6e4}
N, D = 9, 5
BAD_AT = (1, 5)  # rows of the 9 that are hostile

AGG_NAMES = [e.name for e in AGGREGATORS.entries() if e.builtin]
PRE_NAMES = [e.name for e in PRE_AGGREGATORS.entries() if e.builtin]
ALL_NAMES = AGG_NAMES + PRE_NAMES
# close to the honest rows when at most f rows are bad (centered clipping from the median)
ROBUST = ["geometric_median", "krum", "multi_krum", "coordinate_median", "trimmed_mean", "centered_clipping",
          "mda", "meamed", "monna", "smea", "caf"]  # bulyan: f = 2 needs n >= 11 (tests/test_aggregator_family.py)
NON_FINITE_KINDS = ["nan", "inf", "-inf", "mixed"]
HUGE_KINDS = ["huge", "huge_pm"]


def test_the_registries_hold_the_components_tested_here():
    assert set(ROBUST) | {"mean"} <= set(AGG_NAMES)
    assert {"nnm", "clip_to_center", "bucketing", "arc"} <= set(PRE_NAMES)
    assert "bulyan" in AGG_NAMES


def build(name: str, f: int = 1, tau: float = 1.0, n: int = N):
    """A registered component with valid parameters for n inputs (f, tau where accepted; bulyan's f
    capped at (n - 3) // 4, as it needs n >= 4f + 3)."""
    cls = AGGREGATORS.get(name) if name in AGG_NAMES else PRE_AGGREGATORS.get(name)
    if name == "bulyan":
        f = min(f, (n - 3) // 4)
    given_params = {"f": f, "tau": tau}
    return cls(**{k: v for k, v in given_params.items() if k in accepted_params(cls)})


def bad_rows(kind: str, dtype: torch.dtype) -> torch.Tensor:
    big = HUGE[dtype]
    rows = {
        "nan": [[NAN] * D, [NAN] * D],
        "inf": [[INF] * D, [INF] * D],
        "-inf": [[-INF] * D, [-INF] * D],
        "mixed": [[NAN, INF, -INF, big, 1.0], [big, -big, 1.0, -INF, 0.0]],
        "huge": [[big] * D, [big] * D],
        "huge_pm": [[big, -big, big, -big, big], [-big] * D],
        "nan+huge": [[NAN, 0.0, 0.0, 0.0, 0.0], [big] * D],
    }[kind]
    return torch.tensor(rows, dtype=F64)


def hostile_stack(kind: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(9 rows in ``dtype``, two of them hostile; the 7 honest rows as float64), honest rows
    drawn around a random point with spread 0.1 per coordinate."""
    g = torch.Generator().manual_seed(seed)
    point = 3.0 * torch.randn(D, dtype=F64, generator=g)
    honest = (point + 0.1 * torch.randn(N - 2, D, dtype=F64, generator=g)).to(dtype).to(F64)
    bad = bad_rows(kind, dtype)
    rows, h, b = [], iter(honest), iter(bad)
    for i in range(N):
        rows.append(next(b) if i in BAD_AT else next(h))
    return torch.stack(rows).to(dtype), honest


def expected_dropped(kind: str) -> int:
    return {"huge": 0, "huge_pm": 0, "nan+huge": 1}.get(kind, 2)


def summary(name: str, out: torch.Tensor) -> torch.Tensor:
    """An aggregator's output, or the mean of a pre-aggregation step's output rows (float64)."""
    return (out if name in AGG_NAMES else out.double().mean(0)).double()


# ------------------------------------------------------------------ every component stays finite


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", NON_FINITE_KINDS + HUGE_KINDS + ["nan+huge"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_component_is_finite_on_hostile_rows(name, kind, dtype):
    x, _ = hostile_stack(kind, dtype)
    comp = build(name, f=1)
    out = comp(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), (name, kind, out)
    assert comp.last_dropped == expected_dropped(kind)
    if name in PRE_NAMES:  # dropped rows do not come back (bucketing: one row per bucket)
        rows = N - expected_dropped(kind)
        assert out.shape == (comp.output_rows(rows) if name == "bucketing" else rows, D)
    else:
        assert out.shape == (D,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["mixed", "huge_pm"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_half_precisions_stay_finite(name, kind, dtype):
    x, _ = hostile_stack(kind, dtype)
    out = build(name, f=2)(x)
    assert out.dtype == dtype and torch.isfinite(out).all(), (name, kind, out)


# ------------------------------------------------------------------ robust ones stay near the honest rows


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", NON_FINITE_KINDS + HUGE_KINDS + ["nan+huge"])
@pytest.mark.parametrize("name", ROBUST + ["clip_to_center"])
def test_robust_components_stay_near_the_honest_mean(name, kind, dtype):
    x, honest = hostile_stack(kind, dtype, seed=1)
    f = 2 if kind in HUGE_KINDS else 1  # finite bad rows left after dropping
    out = summary(name, build(name, f=f)(x))
    # honest rows: spread 0.1 per coordinate (radius ~0.3); centered clipping / clip_to_center
    # may move by 2 tau / 9 towards the bad rows
    assert (out - honest.mean(0)).norm() < 0.6, (name, kind, out, honest.mean(0))


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", NON_FINITE_KINDS)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_dropped_rows_leave_the_honest_computation(name, kind, dtype):
    """With the bad rows non-finite, the result is that of the 7 honest rows alone."""
    x, honest = hostile_stack(kind, dtype, seed=2)
    keep = [i for i in range(N) if i not in BAD_AT]
    alone = build(name, f=1)(x[keep])  # fresh instances: bucketing draws a permutation per call
    torch.testing.assert_close(build(name, f=1)(x), alone, rtol=0, atol=0)


def pipeline(pre: str, agg: str, f: int, tau: float = 1.0):
    """``make_aggregator(agg, pre=[pre])`` with f and tau passed where some component takes them."""
    classes = [PRE_AGGREGATORS.get(pre), AGGREGATORS.get(agg)]
    taken = {k for cls in classes for k in accepted_params(cls)}
    return make_aggregator(agg, pre=[pre], **{k: v for k, v in {"f": f, "tau": tau}.items() if k in taken})


@pytest.mark.parametrize("pre", PRE_NAMES)
@pytest.mark.parametrize("agg", ["geometric_median", "krum", "coordinate_median", "trimmed_mean"])
@pytest.mark.parametrize("kind", ["mixed", "huge_pm", "nan+huge"])
def test_pipelines_stay_finite_and_near_the_honest_mean(pre, agg, kind):
    for dtype in (F64, F32):
        x, honest = hostile_stack(kind, dtype, seed=3)
        p = pipeline(pre, agg, f=2 if kind in HUGE_KINDS else 1)
        if pre == "bucketing" and agg == "krum" and kind in HUGE_KINDS:
            with pytest.raises(ValueError, match=r"needs n >= 2f \+ 3, got n = 5 and f = 2"):
                p(x)  # 9 rows in buckets of 2: 5 inputs, too few for krum with f = 2
            continue
        out = p(x)
        assert out.dtype == dtype and torch.isfinite(out).all() and p.last_dropped == expected_dropped(kind)
        assert (out.double() - honest.mean(0)).norm() < 0.6, (pre, agg, kind, out)


def test_mean_of_huge_rows_is_finite_but_not_robust():
    for dtype in (F64, F32):
        big = HUGE[dtype]
        x = torch.zeros(N, D, dtype=F64)
        x[:3] = big  # three huge rows: their sum overflows, the mean does not
        out = make_aggregator("mean")(x.to(dtype))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), torch.full((D,), big / 3, dtype=F64), rtol=1e-6, atol=0)
        x[:] = big  # every row at the top of the range: the mean is that value, not inf
        assert torch.equal(make_aggregator("mean")(x.to(dtype)), x[0].to(dtype))


# ------------------------------------------------------------------ all rows non-finite, counts, f


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_rows_non_finite_raises(name, dtype):
    x = torch.tensor([[NAN] * D, [INF] * D, [-INF] * D] * 3, dtype=dtype)
    x[0, 1:] = 1.0  # one bad entry is enough
    with pytest.raises(ValueError, match="all 9 inputs are non-finite"):
        build(name, f=1)(x)
    if name in PRE_NAMES:
        with pytest.raises(ValueError, match="all 9 inputs are non-finite"):
            pipeline(name, "mean", f=1)(x)


def test_last_dropped_counts_each_call():
    g = torch.Generator().manual_seed(4)
    for dropped in range(0, 5):
        x = torch.randn(N, D, dtype=F64, generator=g)
        x[torch.randperm(N, generator=g)[:dropped], 2] = NAN
        for name in ALL_NAMES:
            comp = build(name, f=1)
            out = comp(x)
            assert comp.last_dropped == dropped and torch.isfinite(out).all(), (name, dropped)
        p = make_aggregator("krum", pre=["nnm", "clip_to_center"], f=1, tau=1.0)
        p(x)
        assert p.last_dropped == dropped and p.pre[0].last_dropped == dropped
        assert p.pre[1].last_dropped == 0 and p.aggregator.last_dropped == 0
    comp = build("krum", f=1)
    comp(torch.randn(N, D, dtype=F64, generator=g))
    assert comp.last_dropped == 0  # reset by the next call


def test_f_is_lowered_only_when_the_remaining_rows_need_it():
    x = torch.arange(9, dtype=F64)[:, None]
    x[[0, 2, 4, 6]] = NAN  # 5 finite rows: Krum fits f <= 1
    with pytest.raises(ValueError, match="needs n >= 2f"):
        Krum(f=3)(x[[1, 3, 5, 7, 8]])  # without dropped rows f is used as given
    kept = x[[1, 3, 5, 7, 8]]
    assert torch.equal(Krum(f=3)(x), Krum(f=1)(kept))  # f = 1 of the remaining 5
    assert torch.equal(MultiKrum(f=3, m=6)(x), MultiKrum(f=1, m=4)(kept))  # m capped at n - f = 4
    assert TrimmedMean(f=4)(x).tolist() == [5.0]  # f = 2 of 5: the median
    assert NearestNeighborMixing(f=8)(x).shape == (5, 1)
    # still too few: the message says rows were dropped
    x[[1, 3, 5]] = INF
    with pytest.raises(ValueError, match="after dropping 7 non-finite of 9 inputs"):
        Krum(f=1)(x)
    # the config check on a fresh or used instance still sees the configured f
    k = Krum(f=3)
    with pytest.raises(ValueError, match="needs n >= 2f"):
        k._check_n(8)


def test_centered_clipping_from_center_on_hostile_rows():
    for dtype in (F64, F32):
        x, honest = hostile_stack("mixed", dtype, seed=5)
        cc = CenteredClipping(tau=1.0, iters=3)
        out = cc.from_center(x, honest[0].to(dtype))
        assert cc.last_dropped == 2 and torch.isfinite(out).all()
        x, honest = hostile_stack("huge_pm", dtype, seed=5)
        out = cc.from_center(x, honest[0].to(dtype))
        assert cc.last_dropped == 0 and (out.double() - honest.mean(0)).norm() < 0.6
        with pytest.raises(ValueError, match="center v0 must be finite"):
            cc.from_center(x, torch.full((D,), NAN, dtype=dtype))


# ------------------------------------------------------------------ the overflow-safe kernels


def test_kernels_do_not_overflow_in_float32():
    x, honest = hostile_stack("huge_pm", F32, seed=6)
    d2 = A.pairwise_sq_distances(x)
    assert torch.isfinite(d2).all() and d2.dtype == F64
    h = [i for i in range(N) if i not in BAD_AT]
    torch.testing.assert_close(d2[h][:, h], torch.cdist(honest, honest) ** 2, rtol=1e-5, atol=1e-5)
    assert d2[1, 5] == pytest.approx(float((x[1].double() - x[5].double()).square().sum()), rel=1e-12)
    dist = A.distances_to(x, honest.mean(0).float())
    assert torch.isfinite(dist).all()
    assert torch.isfinite(A.krum_scores(x, 1)).all()
    z, _ = A.weiszfeld(x)
    assert (z.double() - honest.mean(0)).norm() < 0.6


def test_kernels_keep_honest_distances_exact_enough_in_float64():
    x, honest = hostile_stack("huge_pm", F64, seed=7)
    h = [i for i in range(N) if i not in BAD_AT]
    d2 = A.pairwise_sq_distances(x)
    torch.testing.assert_close(d2[h][:, h], torch.cdist(honest, honest) ** 2, rtol=1e-6, atol=1e-9)
    assert torch.isinf(d2[1, 0])  # ~1e617: beyond float64, reported as +inf rather than NaN
    assert not torch.isnan(d2).any()
    z, _ = A.weiszfeld(x)
    assert torch.isfinite(z).all() and (z - honest.mean(0)).norm() < 0.6


@pytest.mark.parametrize("name", ["mean", "geometric_median", "krum", "multi_krum", "coordinate_median",
                                  "trimmed_mean", "nnm", "mda", "meamed", "monna", "bulyan", "smea", "caf",
                                  "arc"])
def test_scale_equivariant_rules_commute_with_huge_scales(name):
    """Far up in the float64 range (every row huge, so the guarded path runs), a scale-free rule
    gives the scaled result of the ordinary stack."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(N, D, dtype=F64, generator=g)
    x[:2] += 30.0
    comp = build(name, f=2)
    scale = 2.0 ** 1000
    ref = comp(x)
    tol = 1e-6 if name == "geometric_median" else 1e-12
    torch.testing.assert_close(comp(x * scale) / scale, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(comp((x * 2.0**100).float()).double() / 2.0**100, ref, rtol=1e-4, atol=1e-4)


def test_geometric_median_starts_from_the_median_on_huge_rows():
    """From the mean (dragged ~2e307 away) 100 Weiszfeld steps would not come back."""
    x, honest = hostile_stack("huge", F64, seed=9)
    gm = GeometricMedian()
    out = gm(x)
    assert (out - honest.mean(0)).norm() < 0.6 and gm.last_iterations[0] < 100


# ------------------------------------------------------------------ property: any hostile minority

HOSTILE = [NAN, INF, -INF, 1e308, -1e308, 3e38, -3e38, 1.7976931348623157e308, 1e-320, 0.0, 1e200, -1e30]


def _components(n: int = N):
    out = [(name, build(name, f=1, n=n)) for name in ALL_NAMES]
    out.append(("nnm+clip_to_center+geometric_median",
                make_aggregator("geometric_median", pre=["nnm", "clip_to_center"], f=1, tau=1.0)))
    out.append(("nnm+krum", make_aggregator("krum", pre=["nnm"], f=1)))
    # NNM then a row-combination rule: fused on ordinary stacks (no mixed rows formed)
    out.append(("nnm+multi_krum", make_aggregator("multi_krum", pre=["nnm"], f=1)))
    out.append(("nnm+geometric_median", make_aggregator("geometric_median", pre=["nnm"], f=1)))
    out.append(("nnm+mean", make_aggregator("mean", pre=["nnm"], f=1)))
    # the geometric median's Gram iteration, which the cost model keeps for wide stacks
    out.append(("geometric_median(solver=gram)", make_aggregator("geometric_median", solver="gram")))
    return out


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(5, 11),
    d=st.integers(1, 6),
    data=st.data(),
    wide=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_hostile_minority_leaves_every_component_finite(n, d, data, wide, seed):
    dtype = F64 if wide else F32
    bad = data.draw(st.integers(1, (n - 1) // 2), label="bad rows")
    value = st.sampled_from(HOSTILE) | st.floats(allow_nan=True, allow_infinity=True, width=64 if wide else 32)
    entries = data.draw(st.lists(value, min_size=bad * d, max_size=bad * d), label="hostile entries")
    rows = data.draw(st.permutations(range(n)), label="order")[:bad]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(d, dtype=F64, generator=g) + 0.5 * torch.randn(n, d, dtype=F64, generator=g))
    x[list(rows)] = torch.tensor(entries, dtype=F64).reshape(bad, d)
    x = x.to(dtype)  # float32: entries beyond its range become +/-inf, as a float32 upload would
    expect_dropped = int((~torch.isfinite(x).all(1)).sum())
    for name, comp in _components(n):
        out = comp(x)
        assert out.dtype == dtype and torch.isfinite(out).all(), (name, x, out)
        assert comp.last_dropped == expect_dropped, name
