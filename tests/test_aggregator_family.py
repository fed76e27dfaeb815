"""The resilient-averaging family (p2pmtl.robust.aggregator_family): MDA, MeaMed, MoNNA, Bulyan,
SMEA, CAF, bucketing, ARC. Hand cases computed from the papers' definitions, brute-force float64
references (plain loops over subsets and coordinates), parameter and limit errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from p2pmtl.robust import aggregator_family as fam
from p2pmtl.robust import aggregators as A
from p2pmtl.robust.aggregator_family import (
    AdaptiveRobustClipping,
    Bucketing,
    Bulyan,
    CovarianceBoundAgnosticFilter,
    MeanAroundMedian,
    MinimumDiameterAveraging,
    MoNNA,
    SmallestMaxEigenvalueAveraging,
)
from p2pmtl.robust.aggregators import AGGREGATORS, PRE_AGGREGATORS, make_aggregator

F64 = torch.float64
NEW_AGGREGATORS = ["mda", "meamed", "monna", "bulyan", "smea", "caf"]
NEW_PRE = ["bucketing", "arc"]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def col(values) -> torch.Tensor:
    return t([[v] for v in values])


def test_registered_with_descriptions():
    agg = dict(AGGREGATORS.describe())
    pre = dict(PRE_AGGREGATORS.describe())
    assert all(agg.get(name) for name in NEW_AGGREGATORS)
    assert all(pre.get(name) for name in NEW_PRE)
    assert all(AGGREGATORS.entry(name).builtin for name in NEW_AGGREGATORS)


# ------------------------------------------------------------------ hand cases


def test_mda_hand_cases_and_ties():
    mda = MinimumDiameterAveraging(f=1)
    assert torch.equal(mda(col([0, 1, 2, 10])), t([1]))  # drop 10: diameter 2
    assert mda.last_subset == [0, 1, 2]
    # {0,1,2} and {1,2,3} both have diameter 2: the lexicographically first wins
    assert torch.equal(mda(col([0, 1, 2, 3])), t([1])) and mda.last_subset == [0, 1, 2]
    assert torch.equal(mda(col([3, 2, 1, 0])), t([2])) and mda.last_subset == [0, 1, 2]
    # even n, 2-D, duplicates: the three copies of (1, 1) and (1, 2) have diameter 1
    x = t([[1, 1], [5, 5], [1, 1], [1, 2], [1, 1], [9, 0]])
    out = MinimumDiameterAveraging(f=2)(x)
    assert out.tolist() == pytest.approx([1.0, 1.25], abs=1e-15)
    # all equal: every subset ties, the first is kept
    m = MinimumDiameterAveraging(f=2)
    assert torch.equal(m(t([[4, -1]] * 5)), t([4, -1])) and m.last_subset == [0, 1, 2]
    assert torch.equal(MinimumDiameterAveraging(f=0)(col([0, 1, 2, 10])), t([3.25]))
    assert torch.equal(MinimumDiameterAveraging(f=0)(col([7])), t([7]))


def test_smea_hand_cases_and_ties():
    sm = SmallestMaxEigenvalueAveraging(f=1)
    assert torch.equal(sm(col([0, 1, 2, 10])), t([1])) and sm.last_subset == [0, 1, 2]
    assert torch.equal(sm(col([0, 1, 2, 3])), t([1])) and sm.last_subset == [0, 1, 2]  # tie: variance 2/3
    # {(0,0), (1,0), (0,1)}: covariance [[2/9, -1/9], [-1/9, 2/9]], top eigenvalue 1/3
    out = sm(t([[0, 0], [1, 0], [0, 1], [5, 5]]))
    assert out.tolist() == pytest.approx([1 / 3, 1 / 3], abs=1e-15) and sm.last_subset == [0, 1, 2]
    sm2 = SmallestMaxEigenvalueAveraging(f=2)
    assert torch.equal(sm2(t([[2, 3]] * 5)), t([2, 3])) and sm2.last_subset == [0, 1, 2]


def test_meamed_hand_cases_odd_even_and_ties():
    mm = MeanAroundMedian(f=1)
    # even n: medians 2.5; second column: 1 and 4 tie at 1.5 from 2.5 -> the lower value
    assert torch.equal(mm(t([[1, 1], [2, 2], [3, 3], [100, 4]])), t([2, 2]))
    assert torch.equal(mm(t([[4, 4], [3, 1], [2, 3], [1, 2]])), t([2, 2]))  # order does not matter
    # odd n: median 3; k = 4: 3, 2, 4, then 1 vs 5 tie -> 1
    assert torch.equal(mm(col([5, 4, 3, 2, 1])), t([2.5]))
    assert torch.equal(MeanAroundMedian(f=2)(col([1, 2, 3, 4, 100])), t([3]))
    assert torch.equal(MeanAroundMedian(f=0)(col([1, 2, 3, 4, 100])), t([22]))
    # duplicates: median 2, closest three are the three 2s
    assert torch.equal(MeanAroundMedian(f=2)(col([2, 9, 2, -9, 2])), t([2]))


def test_monna_hand_cases():
    x = col([0, 1, -1, 10, 20])
    assert torch.equal(MoNNA(f=2)(x), t([0]))
    assert torch.equal(MoNNA(f=1)(x), t([2.5]))
    assert torch.equal(MoNNA(f=1)(col([0, 1, -1])), t([0.5]))  # 1 and -1 tie: lower index
    assert MoNNA(f=2, trusted=4)(x).item() == pytest.approx(31 / 3, abs=1e-14)  # 20, 10, then 1 (19 away)
    # itself, its duplicate (index 1), then 0 and 10 tie at 5: index 0
    assert MoNNA(f=1, trusted=3)(col([0, 5, 10, 5])).item() == pytest.approx(10 / 3, abs=1e-15)
    # a duplicate of the trusted input: both at distance 0, itself counted once
    assert torch.equal(MoNNA(f=1, trusted=2)(col([3, 9, 3])), t([3]))


def test_monna_trusted_index_and_dropped_trusted_row():
    with pytest.raises(ValueError, match=r"monna: trusted = 3 is not an input index: needs 0 <= trusted < n = 3"):
        MoNNA(f=1, trusted=3)(col([0, 1, 2]))
    x = col([math.nan, 0, 1, 2, 50, 7])
    # trusted row 3 (value 2) is the third finite row: nearest 3 of 0, 1, 2, 50, 7 (f = 2)
    assert torch.equal(MoNNA(f=2, trusted=3)(x), t([1]))
    # the trusted row itself non-finite: the coordinate-wise median (2) of the finite rows anchors
    m = MoNNA(f=2, trusted=0)
    assert torch.equal(m(x), t([1])) and m.last_dropped == 1


def test_bulyan_hand_case_follows_the_paper():
    b = Bulyan(f=1)
    out = b(col([0, 1, 2, 3, 4, 5, 100]))
    # Krum with 4, 3, 2, 1, 0 neighbours on the remaining set (worked out in the docstring)
    assert b.last_selection == [2, 3, 1, 4, 0]
    assert torch.equal(out, t([2]))
    # f = 0: theta = beta = n, the mean
    assert torch.equal(Bulyan(f=0)(col([0, 1, 2, 10])), t([3.25]))
    with pytest.raises(ValueError, match=r"bulyan: needs n >= 4f \+ 3, got n = 10 and f = 2 \(4f \+ 3 = 11\)"):
        Bulyan(f=2)(torch.zeros(10, 3, dtype=F64))
    Bulyan(f=2)(torch.zeros(11, 3, dtype=F64))


def test_caf_hand_case():
    c = CovarianceBoundAgnosticFilter(f=1)
    out = c(col([0, 1, 2, 10]))
    assert out.item() == pytest.approx(257 / 239, abs=1e-14) and c.last_steps == 2
    assert torch.equal(CovarianceBoundAgnosticFilter(f=0)(col([0, 1, 2, 10])), t([3.25]))
    # all equal: lambda = 0 at once
    c2 = CovarianceBoundAgnosticFilter(f=2)
    assert torch.equal(c2(t([[1.5, -2]] * 5)), t([1.5, -2])) and c2.last_steps == 1


def test_bucketing_hand_case_and_determinism():
    x = col([1, 2, 4, 8, 16])
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    expected = [sum(x[i, 0].item() for i in perm[j:j + 2]) / len(perm[j:j + 2]) for j in (0, 2, 4)]
    b = Bucketing(s=2, seed=0)
    first = b(x)
    assert first.shape == (3, 1) and first[:, 0].tolist() == pytest.approx(expected, abs=1e-15)
    seconds = [b(x) for _ in range(3)]
    b2 = Bucketing(s=2, seed=0)  # a fresh instance repeats the sequence
    assert torch.equal(b2(x), first) and all(torch.equal(b2(x), s) for s in seconds)
    # the permutation changes from call to call and with the seed
    y = col(range(12))
    b3 = Bucketing(s=1, seed=3)
    outs = [b3(y)[:, 0].tolist() for _ in range(3)]
    assert all(sorted(o) == list(range(12)) for o in outs) and len({tuple(o) for o in outs}) == 3
    assert Bucketing(s=1, seed=4)(y)[:, 0].tolist() != outs[0]
    # sizes: ceil(n / s) buckets; s >= n: one bucket, the mean
    assert Bucketing(s=5)(col(range(11))).shape == (3, 1) and Bucketing(s=5).output_rows(11) == 3
    assert torch.equal(Bucketing(s=20)(x), t([[6.2]]))
    assert torch.equal(Bucketing(s=2)(t([[3, 3]] * 4)), t([[3, 3]] * 2))


def test_arc_hand_cases():
    x = t([[3, 4], [0, 1], [6, 8], [0, 2], [0, 0]])
    # f = 1: k = floor(2 * 1 * 4 / 5) = 1: the norm-10 input clipped to the next norm, 5
    assert torch.equal(AdaptiveRobustClipping(f=1)(x), t([[3, 4], [0, 1], [3, 4], [0, 2], [0, 0]]))
    # f = 2: k = floor(12 / 5) = 2: norms 10 and 5 clipped to 2
    out = AdaptiveRobustClipping(f=2)(x)
    torch.testing.assert_close(out, t([[1.2, 1.6], [0, 1], [1.2, 1.6], [0, 2], [0, 0]]), rtol=0, atol=1e-15)
    assert torch.equal(AdaptiveRobustClipping(f=0)(x), x)
    # ties at the threshold keep scale 1: norms 5, 5, 5, 1 (f = 1, n = 4: k = floor(6 / 4) = 1)
    y = t([[3, 4], [4, 3], [0, 5], [1, 0]])
    assert torch.equal(AdaptiveRobustClipping(f=1)(y), y)
    assert [AdaptiveRobustClipping(f=f).clipped_count(10) for f in range(5)] == [0, 1, 3, 4, 4]


# ------------------------------------------------------------------ brute-force references


def _sq(a, b) -> float:
    return sum((u - v) ** 2 for u, v in zip(a, b))


def _mean(rows) -> list[float]:
    return [sum(c) / len(rows) for c in zip(*rows)]


def _median(values) -> float:
    s = sorted(values)
    m = len(s)
    return s[m // 2] if m % 2 else 0.5 * s[m // 2 - 1] + 0.5 * s[m // 2]


def _closest_mean(values, k) -> float:
    med = _median(values)
    return sum(sorted(values, key=lambda v: (abs(v - med), v))[:k]) / k


def ref_mda(x, f):
    best = None
    for s in itertools.combinations(range(len(x)), len(x) - f):
        diam = max((_sq(x[i], x[j]) for i, j in itertools.combinations(s, 2)), default=0.0)
        if best is None or diam < best[0]:
            best = (diam, s)
    return _mean([x[i] for i in best[1]]), list(best[1])


def ref_smea(x, f):
    lams = []
    subsets = list(itertools.combinations(range(len(x)), len(x) - f))
    for s in subsets:
        pts = np.array([x[i] for i in s])
        cov = (pts - pts.mean(0)).T @ (pts - pts.mean(0)) / len(s)
        lams.append(np.linalg.eigvalsh(cov)[-1])
    low = min(lams)
    s = next(s for s, lam in zip(subsets, lams) if lam <= low + 1e-9 * abs(low))
    return _mean([x[i] for i in s]), list(s)


def ref_meamed(x, f):
    return [_closest_mean(list(c), len(x) - f) for c in zip(*x)]


def ref_monna(x, f, trusted):
    order = sorted(range(len(x)), key=lambda i: (i != trusted, _sq(x[i], x[trusted]), i))
    return _mean([x[i] for i in order[: len(x) - f]])


def ref_bulyan(x, f):
    n = len(x)
    remaining, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        k = max(len(remaining) - f - 2, 0)
        scores = [sum(sorted(_sq(x[i], x[j]) for j in remaining if j != i)[:k]) for i in remaining]
        i = remaining[scores.index(min(scores))]  # first minimum: remaining is ascending
        picked.append(i)
        remaining.remove(i)
    beta = n - 4 * f
    return [_closest_mean([x[i][c] for i in picked], beta) for c in range(len(x[0]))], picked


def ref_caf(x, f):
    x = np.array(x)
    n = len(x)
    c = np.ones(n)
    best, best_lam, first = None, math.inf, True
    while first or c.sum() > n - 2 * f:
        first = False
        mu = (c[:, None] * x).sum(0) / c.sum()
        z = x - mu
        cov = (c[:, None] * z).T @ z / c.sum()
        lam, vecs = np.linalg.eigh(cov)
        if lam[-1] < best_lam:
            best, best_lam = mu, lam[-1]
        tau = (z @ vecs[:, -1]) ** 2
        c = c * (1 - tau / tau[c > 0].max())
    return best.tolist()


def ref_arc(x, f):
    n = len(x)
    k = (2 * f * (n - f)) // n
    norms = [math.sqrt(_sq(r, [0] * len(r))) for r in x]
    thr = sorted(norms, reverse=True)[k]
    return [[v * min(1.0, thr / nr) if nr > 0 else v for v in r] for r, nr in zip(x, norms)]


def _stacks(seed, count, integer):
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        n = int(torch.randint(5, 9, (1,), generator=g))
        d = int(torch.randint(1, 4, (1,), generator=g))
        if integer:  # small integers: exact distances, many ties
            x = torch.randint(-3, 4, (n, d), generator=g).to(F64)
        else:
            x = torch.randn(n, d, dtype=F64, generator=g)
            x[: n // 4] += 20.0 * torch.randn(d, dtype=F64, generator=g)
        yield x


@pytest.mark.parametrize("integer", [False, True])
def test_subset_rules_match_brute_force(integer):
    for x in _stacks(11 + integer, 25, integer):
        n = x.shape[0]
        rows = x.tolist()
        for f in range(0, (n - 1) // 2 + 1):
            mda = MinimumDiameterAveraging(f=f)
            out = mda(x)
            ref, subset = ref_mda(rows, f)
            assert mda.last_subset == subset, (rows, f)
            torch.testing.assert_close(out, t(ref), rtol=1e-12, atol=1e-12)
            sm = SmallestMaxEigenvalueAveraging(f=f)
            out = sm(x)
            ref, subset = ref_smea(rows, f)
            assert sm.last_subset == subset, (rows, f)
            torch.testing.assert_close(out, t(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("integer", [False, True])
def test_coordinate_and_neighbour_rules_match_brute_force(integer):
    for x in _stacks(21 + integer, 25, integer):
        n = x.shape[0]
        rows = x.tolist()
        for f in range(0, (n - 1) // 2 + 1):
            torch.testing.assert_close(MeanAroundMedian(f=f)(x), t(ref_meamed(rows, f)), rtol=1e-12, atol=1e-12)
            for trusted in (0, n - 1):
                torch.testing.assert_close(MoNNA(f=f, trusted=trusted)(x), t(ref_monna(rows, f, trusted)),
                                           rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(AdaptiveRobustClipping(f=f)(x), t(ref_arc(rows, f)), rtol=1e-12, atol=1e-12)
        for f in range(0, (n - 3) // 4 + 1):
            b = Bulyan(f=f)
            out = b(x)
            ref, picked = ref_bulyan(rows, f)
            assert b.last_selection == picked, (rows, f)
            torch.testing.assert_close(out, t(ref), rtol=1e-12, atol=1e-12)


def test_caf_matches_brute_force():
    for x in _stacks(31, 25, integer=False):
        n = x.shape[0]
        for f in range(0, (n - 1) // 2 + 1):
            torch.testing.assert_close(CovarianceBoundAgnosticFilter(f=f)(x), t(ref_caf(x.tolist(), f)),
                                       rtol=1e-9, atol=1e-9)


def test_bucketing_matches_brute_force():
    for s in (1, 2, 3, 4):
        for x in _stacks(41 + s, 5, integer=False):
            n = x.shape[0]
            gen = torch.Generator().manual_seed(7)
            b = Bucketing(s=s, seed=7)
            for _ in range(2):
                perm = torch.randperm(n, generator=gen).tolist()
                ref = [_mean([x[i].tolist() for i in perm[j:j + s]]) for j in range(0, n, s)]
                torch.testing.assert_close(b(x), t(ref), rtol=1e-12, atol=1e-12)


def test_combination_unranking_and_enumeration_order():
    for n in range(1, 8):
        for r in range(0, n + 1):
            combos = list(itertools.combinations(range(n), r))
            assert [tuple(fam._unrank_combination(n, r, i)) for i in range(len(combos))] == combos
            got = torch.cat(list(fam._excluded_sets(n, r, 3, torch.device("cpu")))).tolist()
            assert [tuple(row) for row in got] == combos
            kept = [tuple(sorted(set(range(n)) - set(c))) for c in combos]
            assert kept == sorted(kept, reverse=True)  # complements: reverse lexicographic


# ------------------------------------------------------------------ common properties


def _instances():
    return [MinimumDiameterAveraging(f=2), MeanAroundMedian(f=2), MoNNA(f=2), Bulyan(f=1),
            SmallestMaxEigenvalueAveraging(f=2), CovarianceBoundAgnosticFilter(f=2)]


@pytest.mark.parametrize("agg", _instances(), ids=lambda a: a.name)
def test_all_equal_inputs_return_that_vector(agg):
    v = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = agg(v.expand(7, 5).clone())
    assert out.dtype == F64 and out.shape == (5,)
    torch.testing.assert_close(out, v, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("agg", _instances() + [make_aggregator("mean", pre=["bucketing"], s=3),
                                                make_aggregator("mean", pre=["arc"], f=2)],
                         ids=lambda a: a.name)
def test_column_chunking_and_float32(agg, monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 23, dtype=F64, generator=g)
    x[:2] += 50.0
    whole = agg(x)
    if isinstance(agg, A.Pipeline):  # bucketing draws a new permutation per call: rebuild
        agg = make_aggregator("mean", pre=[agg.pre[0].name], **agg.pre[0].params())
    monkeypatch.setattr(A, "CHUNK_COLUMNS", 5)
    torch.testing.assert_close(agg(x), whole, rtol=1e-9, atol=1e-9)
    if isinstance(agg, A.Pipeline):
        agg = make_aggregator("mean", pre=[agg.pre[0].name], **agg.pre[0].params())
    out32 = agg(x.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), whole, rtol=1e-4, atol=1e-4)


def test_robust_rules_ignore_far_outliers():
    g = torch.Generator().manual_seed(5)
    for trial in range(10):
        honest = torch.randn(9, 4, dtype=F64, generator=g)
        noise = torch.randn(2, 4, dtype=F64, generator=g)
        far = 1e6 + noise if trial % 2 else 1e6 * noise  # a tight far pair, or two scattered
        x = torch.cat([honest, far])  # n = 11, f = 2: the trusted input (0) is honest
        for agg in (MinimumDiameterAveraging(f=2), MeanAroundMedian(f=2), MoNNA(f=2), Bulyan(f=2),
                    SmallestMaxEigenvalueAveraging(f=2), CovarianceBoundAgnosticFilter(f=2)):
            assert (agg(x) - honest.mean(0)).norm() < 2.0, agg.name
        for name in ("mda", "smea"):
            agg = make_aggregator(name, f=2)
            agg(x)
            assert agg.last_subset == list(range(9))
        assert AdaptiveRobustClipping(f=2)(x).norm(dim=1).max() <= honest.norm(dim=1).max() + 1e-12


def test_bulyan_on_hostile_rows():
    """Not in the hostile test's ROBUST list (f = 2 needs n >= 11 there): the same check at n = 11."""
    g = torch.Generator().manual_seed(6)
    for dtype, big in ((F64, 1e308), (torch.float32, 3e38)):
        honest = 3.0 + 0.1 * torch.randn(9, 5, dtype=F64, generator=g)
        bad = t([[big] * 5, [big, -big, big, -big, big]])
        x = torch.cat([honest[:4], bad, honest[4:]]).to(dtype)
        b = Bulyan(f=2)
        out = b(x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.double() - honest.mean(0)).norm() < 0.6
        x[4, 0] = math.nan  # a huge row dropped: 10 finite rows, f lowered to 1, one huge row left
        out = b(x)
        assert b.last_dropped == 1 and (out.double() - honest.mean(0)).norm() < 0.6


# ------------------------------------------------------------------ errors


def test_parameter_validation_messages():
    for cls in (MinimumDiameterAveraging, MeanAroundMedian, MoNNA, Bulyan, SmallestMaxEigenvalueAveraging,
                CovarianceBoundAgnosticFilter, AdaptiveRobustClipping):
        with pytest.raises(ValueError, match=r"f = -1: must be an integer >= 0"):
            cls(f=-1)
        with pytest.raises(ValueError, match=r"f = True: must be an integer >= 0"):
            cls(f=True)
        with pytest.raises(ValueError, match=r"f = 1.5: must be an integer >= 0"):
            cls(f=1.5)
    with pytest.raises(ValueError, match=r"trusted = -1: must be an integer >= 0"):
        MoNNA(f=1, trusted=-1)
    with pytest.raises(ValueError, match=r"s = 0: must be an integer >= 1"):
        Bucketing(s=0)
    with pytest.raises(ValueError, match=r"seed = -2: must be an integer >= 0"):
        Bucketing(seed=-2)
    with pytest.raises(ValueError, match=r"max_subsets = 0: must be an integer >= 1"):
        MinimumDiameterAveraging(f=1, max_subsets=0)
    with pytest.raises(ValueError, match=r"unknown parameter.*seed.*mda: f, max_subsets"):
        make_aggregator("mda", f=1, seed=3)
    p = make_aggregator("krum", pre=["bucketing", "arc"], f=1, s=3, seed=5)
    assert p.pre[0].s == 3 and p.pre[0].seed == 5 and p.pre[1].f == 1 and p.aggregator.f == 1
    assert repr(p.pre[0]) == "Bucketing(s=3, seed=5)"


@pytest.mark.parametrize("name,bound", [("mda", "n > 2f"), ("meamed", "n > 2f"), ("monna", "n > 2f"),
                                        ("smea", "n > 2f"), ("caf", "n > 2f")])
def test_needs_n_above_2f(name, bound):
    with pytest.raises(ValueError, match=rf"{name}: needs {bound}, got n = 4 and f = 2"):
        make_aggregator(name, f=2)(torch.zeros(4, 2, dtype=F64))
    make_aggregator(name, f=2)(torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"arc: f = 3 assumed Byzantine inputs but only n = 3 inputs"):
        AdaptiveRobustClipping(f=3)(torch.zeros(3, 2, dtype=F64))


def test_enumeration_limit():
    with pytest.raises(ValueError, match=r"mda: exact enumeration of the C\(n, f\) = C\(40, 5\) = 658008 subsets "
                                         r"of n - f = 35 inputs exceeds max_subsets = 1000"):
        MinimumDiameterAveraging(f=5, max_subsets=1000)(torch.zeros(40, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"C\(100, 5\) = 75287520 .* max_subsets = 2000000"):
        MinimumDiameterAveraging(f=5)(torch.zeros(100, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"smea: .* C\(60, 4\) = 487635 .* max_subsets = 200000"):
        SmallestMaxEigenvalueAveraging(f=4)(torch.zeros(60, 2, dtype=F64))
    assert MinimumDiameterAveraging.MAX_SUBSETS == fam.MAX_SUBSETS == 2_000_000
    assert SmallestMaxEigenvalueAveraging.MAX_SUBSETS == fam.SMEA_MAX_SUBSETS == 200_000
    # exactly at the limit it runs
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    MinimumDiameterAveraging(f=3, max_subsets=math.comb(8, 3))(x)
    SmallestMaxEigenvalueAveraging(f=3, max_subsets=math.comb(8, 3))(x)


def test_pipeline_checks_follow_bucketing_rows():
    """Bucketing (s = 2) turns 9 inputs into 5 and 8 into 4: Krum (f = 1) needs 5, so the
    pipeline fits 9 uploads but not 8; the check counts the rows each part receives."""
    from p2pmtl.robust.aggregators import check_inputs
    from p2pmtl.server.federated import upload_shortfall

    agg = make_aggregator("krum", pre=["bucketing"], f=1, s=2)
    check_inputs(agg, 9)
    with pytest.raises(ValueError, match="krum"):
        check_inputs(agg, 8)
    assert upload_shortfall(agg, 9) is None and "krum" in upload_shortfall(agg, 8)
    assert agg(torch.arange(18, dtype=torch.float64).view(9, 2)).shape == (2,)
