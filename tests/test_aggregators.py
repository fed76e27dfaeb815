"""Robust aggregators: exact outputs on hand-computed cases, robustness properties, errors."""
from __future__ import annotations

import inspect
import math
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from p2pmtl.robust import aggregators as A
from p2pmtl.robust.aggregators import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    CenteredClipping,
    ClipToCenter,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighborMixing,
    Pipeline,
    TrimmedMean,
    make_aggregator,
)

F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def col(values) -> torch.Tensor:
    """A stack of 1-D vectors."""
    return t([[v] for v in values])


# parameters that make every aggregator valid for n = 7 inputs
PARAMS_N7 = {
    "mean": {},
    "geometric_median": {},
    "krum": {"f": 2},
    "multi_krum": {"f": 2, "m": 3},
    "coordinate_median": {},
    "trimmed_mean": {"f": 2},
    "centered_clipping": {"tau": 1.0, "iters": 3},
}


def test_registry_lists_everything():
    # the rest of the family (mda, bulyan, bucketing, ...): tests/test_aggregator_family.py
    family = {"mda", "meamed", "monna", "bulyan", "smea", "caf"}
    assert set(AGGREGATORS.names()) == set(PARAMS_N7) | family
    assert set(PRE_AGGREGATORS.names()) == {"nnm", "clip_to_center", "bucketing", "arc"}
    assert all(desc for _, desc in AGGREGATORS.describe())
    assert all(desc for _, desc in PRE_AGGREGATORS.describe())


def _valid_for_11(name: str) -> dict:
    """Parameters that make the registered ``name`` valid for n = 11 inputs."""
    cls = AGGREGATORS.get(name) if name in AGGREGATORS.names() else PRE_AGGREGATORS.get(name)
    params = inspect.signature(cls.__init__).parameters
    given = {"f": 2, "tau": 1.0}
    return {k: v for k, v in given.items() if k in params}


@pytest.mark.parametrize("name", sorted(AGGREGATORS.names()) + sorted(PRE_AGGREGATORS.names()))
@pytest.mark.parametrize("d", [1, 3, 70_000])
def test_no_component_writes_into_its_input(name, d):
    """A single column's transpose is contiguous: a sort or selection done in place on it would
    reorder the caller's stack."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn((11, d), generator=g)
    before = x.clone()
    if name in AGGREGATORS.names():
        make_aggregator(name, **_valid_for_11(name))(x)
    else:
        make_aggregator("mean", pre=[name], **_valid_for_11(name))(x)
    assert torch.equal(x, before)


# ------------------------------------------------------------------ hand-computed outputs


def test_mean():
    assert torch.equal(Mean()(t([[0, 0], [2, 4]])), t([1, 2]))


def test_krum_hand_case_and_tie_to_lowest_index():
    # f = 1, n = 5, k = n - f - 2 = 2 nearest others:
    # scores: x0: 1+4 = 5, x1: 1+1 = 2, x2: 1+1 = 2, x3: 1+4 = 5, x4: 97^2+98^2 -> tie 1/2 -> x1
    x = col([0, 1, 2, 3, 100])
    assert torch.equal(A.krum_scores(x, 1), t([5, 2, 2, 5, 97**2 + 98**2]))
    assert torch.equal(Krum(f=1)(x), t([1]))
    # mirror image: now indices 1 and 2 hold 2 and 1 -> still the lower index (value 2)
    assert torch.equal(Krum(f=1)(col([0, 2, 1, 3, 100])), t([2]))


def test_krum_duplicates_and_2d():
    # three copies of (1, 1): each has two neighbours at distance 0 -> score 0, index 0 wins
    x = t([[1, 1], [1, 1], [1, 1], [4, 5], [0, 9]])
    assert torch.equal(A.krum_scores(x, 1)[:3], t([0, 0, 0]))
    assert torch.equal(Krum(f=1)(x), t([1, 1]))
    # f = 0, n = 3: k = 1 nearest other; (0,0)-(3,4): 25, (3,4)-(3,5): 1 -> scores 25, 1, 1 -> x1
    assert torch.equal(Krum(f=0)(t([[0, 0], [3, 4], [3, 5]])), t([3, 4]))


def test_multi_krum_hand_cases():
    x = col([0, 1, 2, 3, 100])  # scores 5, 2, 2, 5, huge; stable order 1, 2, 0, 3, 4
    assert torch.equal(MultiKrum(f=1, m=1)(x), t([1]))
    assert torch.equal(MultiKrum(f=1, m=2)(x), t([1.5]))
    assert torch.equal(MultiKrum(f=1, m=3)(x), t([1]))  # (1 + 2 + 0) / 3
    assert torch.equal(MultiKrum(f=1, m=4)(x), t([1.5]))  # (1 + 2 + 0 + 3) / 4
    assert torch.equal(MultiKrum(f=1)(x), t([1.5]))  # m defaults to n - f = 4


def test_coordinate_median_odd_and_even():
    assert torch.equal(CoordinateMedian()(t([[1, 5], [3, 0], [2, 7]])), t([2, 5]))
    # even n: columns sorted (1, 2, 3, 9) and (0, 1, 5, 7) -> midpoints 2.5 and 3
    assert torch.equal(CoordinateMedian()(t([[1, 5], [3, 0], [2, 7], [9, 1]])), t([2.5, 3]))
    assert torch.equal(CoordinateMedian()(t([[4, -1]])), t([4, -1]))
    assert torch.equal(CoordinateMedian()(col([7, -3])), t([2]))


def test_trimmed_mean_f1_on_five_values():
    assert torch.equal(TrimmedMean(f=1)(col([1, 2, 3, 4, 100])), t([3]))
    # second column sorted -5, 0, 7, 7, 10 -> keep 0, 7, 7 (duplicates kept once each)
    out = TrimmedMean(f=1)(t([[1, 10], [100, -5], [3, 0], [2, 7], [4, 7]]))
    assert out.tolist() == pytest.approx([3.0, 14 / 3], abs=1e-15)
    assert torch.equal(TrimmedMean(f=2)(col([1, 2, 3, 4, 100])), t([3]))
    assert torch.equal(TrimmedMean(f=0)(col([1, 2, 3, 4, 100])), t([22]))


@pytest.mark.parametrize("n, f", [(5, 1), (13, 3), (33, 5), (100, 10), (300, 60)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trimmed_mean_is_the_mean_of_each_sorted_columns_middle(n, f, dtype):
    """Bit for bit the plain definition: sort each column, average its n - 2f middle values
    (torch's sort and mean), with ties and signed zeros, over several column chunks."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn((n, 70_000 if n == 100 else 3_000), generator=g, dtype=dtype)
    x[torch.rand(x.shape, generator=g) < 0.2] = 0.5
    x[:, 3] = 0.0
    x[: n // 2, 4] = -0.0
    plain = x.T.contiguous().sort(dim=1).values[:, f:n - f].mean(dim=1)
    assert torch.equal(TrimmedMean(f=f)(x), plain)


def test_centered_clipping_hand_cases():
    x = col([0.5, -0.5, 10])
    # from the median 0.5: differences 0, -1, 9.5 -> clipped 0, -1, 1 -> mean 0 -> 0.5
    assert CenteredClipping(tau=1.0)(x).tolist() == pytest.approx([0.5], abs=1e-15)
    # from the mean 10/3: clipped -1, -1, 1 -> 10/3 - 1/3 = 3
    assert CenteredClipping(tau=1.0, center="mean")(x).tolist() == pytest.approx([3.0], abs=1e-14)
    # from 0: clipped 0.5, -0.5, 1 -> 1/3; second step from 1/3: 1/6, -5/6, 1 -> 1/3 + 1/9
    cc = CenteredClipping(tau=1.0, iters=2)
    assert cc.from_center(x, t([0.0])).tolist() == pytest.approx([1 / 3 + 1 / 9], abs=1e-15)
    # 2-D: (3, 4) has norm 5 -> clipped to (0.6, 0.8); mean with two zeros
    y = t([[3, 4], [0, 0], [0, 0]])
    assert CenteredClipping(tau=1.0).from_center(y, t([0, 0])).tolist() == pytest.approx([0.2, 0.8 / 3], abs=1e-15)


def test_geometric_median_hand_cases():
    # unit vectors from (0.5, 0.5) to the four points sum to zero
    z = GeometricMedian()(t([[0, 0], [1, 0], [0, 1], [100, 100]]))
    assert z.tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    # collinear: the 1-D median
    assert GeometricMedian()(col([0, 1, 5])).tolist() == pytest.approx([1.0], abs=1e-5)


def test_nnm_hand_cases():
    # f = 1, k = 2: 0 -> {0, 1}, 1 -> {1, 0}, 10 -> {10, 1}
    x = col([0, 1, 10])
    assert torch.equal(NearestNeighborMixing(f=1)(x), col([0.5, 0.5, 5.5]))
    # equidistant neighbours: 1 sees 0 and 2 at distance 1 -> the lower index (0) is chosen
    assert torch.equal(NearestNeighborMixing(f=1)(col([0, 1, 2])), col([0.5, 0.5, 1.5]))
    # then the mean: (0.5 + 0.5 + 5.5) / 3
    assert make_aggregator("mean", pre=["nnm"], f=1)(x).tolist() == pytest.approx([6.5 / 3], abs=1e-15)
    assert torch.equal(NearestNeighborMixing(f=0)(x), col([11 / 3] * 3))


def test_clip_to_center_hand_case():
    # median 1: differences -1, 0, 9 -> -1, 0, 1
    assert torch.equal(ClipToCenter(tau=1.0)(col([0, 1, 10])), col([0, 1, 2]))
    out = ClipToCenter(tau=1.0)(t([[0, 0], [0, 0], [3, 4]]))  # center (0, 0)
    assert out.tolist() == [[0, 0], [0, 0], [pytest.approx(0.6), pytest.approx(0.8)]]


# ------------------------------------------------------------------ common properties


def _all_components():
    for name, params in PARAMS_N7.items():
        yield name, make_aggregator(name, **params)
    yield "nnm+mean", make_aggregator("mean", pre=["nnm"], f=2)
    yield "clip_to_center+krum", make_aggregator("krum", pre=["clip_to_center"], f=2, tau=0.5)


@pytest.mark.parametrize("name,agg", list(_all_components()), ids=lambda v: v if isinstance(v, str) else "")
def test_all_equal_inputs_return_that_vector(name, agg):
    v = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = agg(v.expand(7, 5).clone())
    assert out.dtype == F64 and out.shape == (5,)
    torch.testing.assert_close(out, v, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name,agg", list(_all_components()), ids=lambda v: v if isinstance(v, str) else "")
def test_column_chunking_and_float32(name, agg, monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 23, dtype=F64, generator=g)
    x[:2] += 50.0
    whole = agg(x)
    monkeypatch.setattr(A, "CHUNK_COLUMNS", 5)
    torch.testing.assert_close(agg(x), whole, rtol=1e-9, atol=1e-9)
    out32 = agg(x.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), whole, rtol=1e-4, atol=1e-4)


def test_pairwise_distances_match_direct():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 40, dtype=F64, generator=g) + 1000.0
    torch.testing.assert_close(A.pairwise_sq_distances(x), torch.cdist(x, x) ** 2, rtol=1e-9, atol=1e-9)
    d32 = A.pairwise_sq_distances(x.float())
    torch.testing.assert_close(d32, torch.cdist(x, x) ** 2, rtol=1e-4, atol=1e-3)
    assert (A.pairwise_sq_distances(x).diagonal() == 0).all()


# ------------------------------------------------------------------ geometric median


def _objective(z: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(x - z, axis=1).sum())


def _reference_gm(x: np.ndarray) -> np.ndarray:
    """Unsmoothed float64 Weiszfeld run to a fixed point, then polished by BFGS (scipy)."""
    z = x.mean(axis=0)
    for _ in range(20000):
        w = 1.0 / np.linalg.norm(x - z, axis=1)
        z_new = (w[:, None] * x).sum(axis=0) / w.sum()
        if np.linalg.norm(z_new - z) <= 1e-15 * max(np.linalg.norm(z), 1.0):
            z = z_new
            break
        z = z_new

    def grad(v, x):
        diff = v - x
        return (diff / np.linalg.norm(diff, axis=1)[:, None]).sum(axis=0)

    res = minimize(_objective, z, args=(x,), jac=grad, method="BFGS", options={"gtol": 1e-12})
    return res.x if res.fun <= _objective(z, x) else z


@pytest.mark.parametrize("d", [2, 50])
def test_geometric_median_matches_reference(d):
    rng = np.random.default_rng(d)
    for trial in range(3):
        x = rng.normal(size=(30, d)) * rng.uniform(0.5, 3.0, size=d)
        x[:5] += 20.0  # a skewed cloud, so the median is far from the mean
        ref = _reference_gm(x)
        z = GeometricMedian()(torch.from_numpy(x)).numpy()
        assert np.linalg.norm(z - ref) <= 1e-6 * max(1.0, np.linalg.norm(ref))
        assert _objective(z, x) <= _objective(ref, x) + 1e-9


def test_geometric_median_stays_put_under_minority_corruption():
    g = torch.Generator().manual_seed(6)
    gm = GeometricMedian()
    for _ in range(5):
        honest = torch.randn(21, 2, dtype=F64, generator=g)
        direction = torch.randn(10, 2, dtype=F64, generator=g)
        clean = gm(honest)
        far = gm(torch.cat([honest, 1e6 * direction]))
        farther = gm(torch.cat([honest, 1e9 * direction]))
        radius = (honest - clean).norm(dim=1).max()
        assert (far - clean).norm() < 1.0 < radius  # 10 of 31 points moved: z moves < 1
        assert (farther - far).norm() < 1e-3  # and distance no longer matters


def test_layerwise_geometric_median_equals_per_segment():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(11, 10, dtype=F64, generator=g)
    x[:3, 3:8] += 30.0
    segs = [3, 5, 2]
    out = GeometricMedian(segments=segs)(x)
    expected = torch.cat([GeometricMedian()(x[:, 0:3]), GeometricMedian()(x[:, 3:8]), GeometricMedian()(x[:, 8:10])])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(out, GeometricMedian()(x), atol=1e-3)
    with pytest.raises(ValueError, match="sum to 9"):
        GeometricMedian(segments=[3, 5, 1])(x)


# ------------------------------------------------------------------ Krum family robustness


def test_krum_never_selects_a_far_outlier():
    g = torch.Generator().manual_seed(8)
    for trial in range(30):
        n = int(torch.randint(5, 16, (1,), generator=g))
        f = (n - 3) // 2
        honest = torch.randn(n - f, 6, dtype=F64, generator=g)
        if trial % 2:
            outliers = 1e4 + torch.randn(f, 6, dtype=F64, generator=g)  # a tight far cluster
        else:
            outliers = 1e4 * torch.randn(f, 6, dtype=F64, generator=g)  # scattered
        x = torch.cat([outliers, honest])[torch.randperm(n, generator=g)]
        chosen = Krum(f=f)(x)
        assert any(torch.equal(chosen, h) for h in honest)
        assert MultiKrum(f=f)(x).norm() < 10.0


def test_krum_treats_non_finite_inputs_as_infinitely_far():
    x = col([0, 1, 2, 3, float("inf")])
    assert torch.equal(Krum(f=1)(x), t([1]))
    assert torch.equal(MultiKrum(f=1, m=2)(x), t([1.5]))
    x = col([0, 1, float("nan"), 2, 3])
    assert torch.equal(A.pairwise_sq_distances(x)[2], t([math.inf, math.inf, 0, math.inf, math.inf]))
    assert torch.equal(Krum(f=1)(x), t([1]))


def _brute_force_scores(x: torch.Tensor, f: int) -> list[float]:
    n = x.shape[0]
    scores = []
    for i in range(n):
        dists = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(dists[: n - f - 2]))
    return scores


def test_multi_krum_m1_is_krum_and_m_max_is_mean_of_kept():
    g = torch.Generator().manual_seed(9)
    for _ in range(10):
        n, f = 12, 3
        x = torch.randn(n, 4, dtype=F64, generator=g)
        torch.testing.assert_close(torch.as_tensor(_brute_force_scores(x, f), dtype=F64), A.krum_scores(x, f))
        assert torch.equal(MultiKrum(f=f, m=1)(x), Krum(f=f)(x))
        scores = _brute_force_scores(x, f)
        kept = sorted(range(n), key=lambda i: (scores[i], i))[: n - f]
        out = MultiKrum(f=f, m=n - f)(x)
        torch.testing.assert_close(out, x[kept].mean(0), rtol=1e-12, atol=1e-12)
        assert (out - x.mean(0)).norm() < 1.0  # no outliers: near the plain mean


# ------------------------------------------------------------------ centered clipping


def test_centered_clipping_huge_tau_is_mean_after_one_step_from_any_center():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(9, 5, dtype=F64, generator=g) * 10
    for tau in (1e12, float("inf")):
        cc = CenteredClipping(tau=tau)
        for _ in range(3):
            v0 = torch.randn(5, dtype=F64, generator=g) * 100
            torch.testing.assert_close(cc.from_center(x, v0), x.mean(0), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(cc(x), x.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(CenteredClipping(tau=tau, center="mean")(x), x.mean(0))


def test_centered_clipping_with_outliers_stays_near_honest_mean():
    g = torch.Generator().manual_seed(11)
    honest = torch.randn(20, 10, dtype=F64, generator=g) + 3.0
    x = torch.cat([honest, 1e3 * torch.ones(4, 10, dtype=F64)])
    for iters in (1, 5):
        out = CenteredClipping(tau=2.0, iters=iters)(x)  # from the median
        assert (out - honest.mean(0)).norm() < 1.5, iters
    # from the mean (dragged ~520 away) each step moves at most tau: it takes many steps back
    out = CenteredClipping(tau=2.0, iters=1000, center="mean")(x)
    assert (out - honest.mean(0)).norm() < 1.5
    assert (x.mean(0) - honest.mean(0)).norm() > 100


# ------------------------------------------------------------------ pre-aggregation and factory


def test_nnm_then_mean_on_clean_identical_data_is_identity():
    v = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(12))
    x = v.expand(8, 6).clone()
    torch.testing.assert_close(NearestNeighborMixing(f=3)(x), x, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(make_aggregator("mean", pre=["nnm"], f=3)(x), v, rtol=1e-15, atol=1e-15)


def test_make_aggregator_routes_parameters():
    p = make_aggregator("krum", pre=["nnm"], f=2)
    assert isinstance(p, Pipeline) and p.name == "nnm+krum"
    assert p.pre[0].f == 2 and p.aggregator.f == 2
    p = make_aggregator("centered_clipping", pre=["clip_to_center"], tau=2.0, iters=3, **{"clip_to_center.tau": 5.0})
    assert p.pre[0].tau == 5.0 and p.aggregator.tau == 2.0 and p.aggregator.iters == 3
    p = make_aggregator("mean", pre=["nnm", "clip_to_center"], f=1, tau=0.5)
    assert [s.name for s in p.pre] == ["nnm", "clip_to_center"] and p.pre[1].tau == 0.5
    gm = make_aggregator("geometric_median", segments=[2, 3], max_iter=7)
    assert isinstance(gm, GeometricMedian) and gm.segments == (2, 3) and gm.max_iter == 7
    assert repr(gm) == "GeometricMedian(nu=1e-06, tol=1e-07, max_iter=7, segments=(2, 3), solver='auto')"


# ------------------------------------------------------------------ errors


def test_error_krum_f_too_large():
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3, got n = 6 and f = 2"):
        Krum(f=2)(torch.zeros(6, 3, dtype=F64))
    Krum(f=2)(torch.zeros(7, 3, dtype=F64))
    with pytest.raises(ValueError, match="n = 4 and f = 1"):
        MultiKrum(f=1)(torch.zeros(4, 3, dtype=F64))


def test_error_multi_krum_m_out_of_range():
    with pytest.raises(ValueError, match="m = 0"):
        MultiKrum(f=1, m=0)
    with pytest.raises(ValueError, match=r"m = 5 must lie in \[1, n - f\] = \[1, 4\]"):
        MultiKrum(f=1, m=5)(torch.zeros(5, 2, dtype=F64))


def test_error_trimmed_mean_needs_n_above_2f():
    with pytest.raises(ValueError, match="needs n > 2f, got n = 4 and f = 2"):
        TrimmedMean(f=2)(torch.zeros(4, 2, dtype=F64))
    TrimmedMean(f=2)(torch.zeros(5, 2, dtype=F64))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), "1"])
def test_error_tau_not_positive(tau):
    with pytest.raises(ValueError, match="tau"):
        CenteredClipping(tau=tau)
    with pytest.raises(ValueError, match="tau"):
        ClipToCenter(tau=tau)
    with pytest.raises(ValueError, match="tau"):
        make_aggregator("mean", pre=["clip_to_center"], tau=tau)


def test_error_other_parameters():
    with pytest.raises(ValueError, match="f = -1"):
        Krum(f=-1)
    with pytest.raises(ValueError, match="f = True"):
        TrimmedMean(f=True)
    with pytest.raises(ValueError, match="f = 1.5"):
        NearestNeighborMixing(f=1.5)
    with pytest.raises(ValueError, match="iters = 0"):
        CenteredClipping(tau=1.0, iters=0)
    with pytest.raises(ValueError, match="center = 'zero'.*median, mean"):
        CenteredClipping(tau=1.0, center="zero")
    with pytest.raises(ValueError, match="nu = 0"):
        GeometricMedian(nu=0)
    with pytest.raises(ValueError, match="max_iter = 0"):
        GeometricMedian(max_iter=0)
    with pytest.raises(ValueError, match=r"segments\[1\] = 0"):
        GeometricMedian(segments=[2, 0])
    with pytest.raises(ValueError, match="solver = 'fast': must be one of 'auto', 'direct', 'gram'"):
        GeometricMedian(solver="fast")
    with pytest.raises(ValueError, match="needs n > f"):
        NearestNeighborMixing(f=3)(torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        Mean()(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="floating"):
        Mean()(torch.zeros(3, 2, dtype=torch.int64))


def test_error_unknown_names_and_parameters():
    with pytest.raises(KeyError, match="unknown aggregator 'median'.*coordinate_median.*geometric_median"):
        make_aggregator("median")
    with pytest.raises(KeyError, match="unknown pre-aggregation step 'buckets'.*clip_to_center, nnm"):
        make_aggregator("mean", pre=["buckets"])
    with pytest.raises(ValueError, match="unknown parameter.*beta.*krum: f"):
        make_aggregator("krum", f=1, beta=0.3)
    with pytest.raises(ValueError, match="unknown parameter.*f.*mean: \\(none\\)"):
        make_aggregator("mean", f=1)
    with pytest.raises(ValueError, match="unknown parameter.*nnm.tau"):
        make_aggregator("mean", pre=["nnm"], f=1, **{"nnm.tau": 1.0})
    with pytest.raises(ValueError, match="'krum' needs parameter.*f"):
        make_aggregator("krum")
    with pytest.raises(ValueError, match="'centered_clipping' needs parameter.*tau"):
        make_aggregator("centered_clipping", iters=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coordinate_median_selection_equals_two_torch_medians(dtype):
    """The selection paths (CPU float32/64: the sorting network, numpy's sort above 128 rows)
    return exactly the midpoint of torch's lower and upper medians, ties, zero columns, signed
    zeros and NaN included, for odd and even n (a chunk that holds a NaN goes to torch's
    medians; a column whose middle value is a zero and that holds a -0.0 gets torch's medians
    alone, in a chunk whose other columns keep the selection's values)."""
    from p2pmtl.robust.aggregators import coordinatewise_median

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4, 10, 13, 26, 100, 257):
        for special in ("zeros", "signed zeros", "signed zeros and NaN"):
            x = torch.randn(n, 300, generator=g, dtype=dtype)
            x[:, :20] = torch.randint(-1, 2, (n, 20), generator=g).to(dtype)  # ties and +0.0
            if special != "zeros":
                x[:, 20:40] = torch.where(torch.rand(n, 20, generator=g) < 0.5, -0.0, 0.0).to(dtype)
                x[:, 40:50] = torch.where(torch.rand(n, 10, generator=g) < 0.2, -0.0, x[:, 40:50])
                x[:n // 2 + 1, 50:60] = -0.0  # all -0.0 at the middle
            if special == "signed zeros and NaN":
                x[torch.rand(n, 300, generator=g) < 0.02] = math.nan
            lower, upper = x.median(0).values, x.neg().median(0).values.neg()
            want = lower if n % 2 else 0.5 * lower + 0.5 * upper
            got = coordinatewise_median(x)
            assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)), (n, special)
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.signbit(), want.signbit()), (n, special)


def test_aggregator_bench_reports_bounds_and_byzfl_when_installed():
    """`p2pmtl bench --only aggregators` rows carry their bound (and ByzFL's time when the
    optional byzfl package is importable); tiny sizes, figures are never asserted."""
    from p2pmtl.bench.aggregators import benchmark_aggregators, byzfl_specs, format_table

    rows = benchmark_aggregators(n=12, dim=2000, f=2)
    by = {r["aggregator"]: r for r in rows}
    assert by["krum"]["bound"] == "gram" and by["krum"]["bound_seconds"] > 0
    assert by["geometric_median, 3 it"]["bound"] == "read x3"
    assert by["geometric_median, direct"]["seconds"] > 0  # the naive way beside the default
    if byzfl_specs(2):
        assert by["coordinate_median"]["byzfl_seconds"] > 0
    assert "ByzFL/ours" in format_table(rows)


@pytest.mark.parametrize("first", ["byzantine", "honest"])
def test_gram_distances_centred_on_2f_plus_1_rows_keep_honest_distances(first):
    """The aggregators centre the Gram chunks on the median of the first 2f + 1 rows only: with
    at most f of them Byzantine (here placed first, 1e4 away), the honest rows' float32
    distances still match float64 ones; a centre from the Byzantine rows alone (a median of the
    first f rows) would cancel them away (checked as the control)."""
    g = torch.Generator().manual_seed(3)
    n, f, d = 23, 5, 20_000
    honest = 100.0 + 1e-3 * torch.randn(n - f, d, generator=g, dtype=torch.float64)
    byz = 1e4 + torch.randn(f, d, generator=g, dtype=torch.float64)
    x64 = torch.cat([byz, honest]) if first == "byzantine" else torch.cat([honest, byz])
    x = x64.float()
    exact = torch.cdist(x.double(), x.double()) ** 2  # the float32 inputs' distances, in float64
    h = slice(f, n) if first == "byzantine" else slice(0, n - f)
    got = A._gram_sq_distances(x, finite=True, f=f)
    torch.testing.assert_close(got[h, h], exact[h, h], rtol=1e-4, atol=1e-12)
    assert A._centre_rows(n, f) == 2 * f + 1 and A._centre_rows(n, None) == n and A._centre_rows(n, 0) == 9
    if first == "byzantine":  # control: centring on Byzantine rows loses the honest distances
        bad = A._gram_sq_distances(x, finite=True, f=(f - 1) // 2)  # median of max(f, 9) rows: 5 Byzantine of 9
        assert not torch.allclose(bad[h, h], exact[h, h], rtol=1e-4, atol=1e-12)


def test_mean_fast_path_proves_finiteness_by_a_sum():
    """The mean's one-read path: a NaN or inf entry falls to the guarded path (the finite rows'
    mean), and means whose float64 sum overflows (entries near 1e308) are still returned as
    they are, as the element-wise check did."""
    huge = torch.tensor([[1e308] * 4, [0.0] * 4], dtype=F64)  # means 5e307: finite, their sum is not
    assert torch.equal(Mean()(huge), huge.mean(dim=0)) and torch.isfinite(huge.mean(dim=0)).all()
    assert math.isinf(float(huge.mean(dim=0).sum()))
    x = torch.tensor([[1.0, 2.0], [3.0, math.nan], [5.0, 6.0]], dtype=F64)
    m = Mean()
    assert torch.equal(m(x), t([3.0, 4.0])) and m.last_dropped == 1
    y = torch.tensor([[1.0, math.inf], [3.0, -math.inf], [5.0, 6.0]], dtype=torch.float32)
    assert torch.equal(m(y), torch.tensor([5.0, 6.0])) and m.last_dropped == 2


@pytest.mark.parametrize("argv, said", [
    (["--n", "2"], "argument --n: 2: allowed: an integer >= 3"),
    (["--n", "5", "--dim", "0"], "argument --dim: 0: allowed: an integer >= 1"),
    (["--n", "5", "--f", "-1"], "argument --f: -1: allowed: an integer >= 0"),
    (["--n", "5", "--f", "2"], "--f 2 with --n 5: allowed: n >= 2f + 3"),
    (["--n", "5", "--threads", "0"], "argument --threads: 0: allowed: an integer >= 1"),
])
def test_aggregator_bench_refuses_bad_sizes_before_timing(argv, said, capsys):
    """`python -m p2pmtl.bench.aggregators` names the option, the value and the range (these
    failed inside a rule: "m = -98: must be an integer >= 1"); so does the function."""
    from p2pmtl.bench.aggregators import benchmark_aggregators, main as bench_main

    with pytest.raises(SystemExit) as exc:
        bench_main(argv)
    assert exc.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"n = 5, dim = 10, f = 2: allowed: n >= 3, dim >= 1 and 0 <= f"):
        benchmark_aggregators(n=5, dim=10, f=2)
