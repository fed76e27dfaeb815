"""The geometric median's Weiszfeld iteration in the span of the rows (``_gram_weiszfeld``):
the same iterates as the direct loop up to rounding, taken only where the cost model says it
pays, and handed back to the direct loop where the Gram formula cannot be trusted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pmtl.robust import aggregators as agg
from p2pmtl.robust.aggregators import GeometricMedian

F32, F64 = torch.float32, torch.float64


def _wide(n: int, d: int, dtype: torch.dtype, seed: int, offset: float = 0.0, outliers: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, d), generator=g, dtype=F64) * torch.rand(d, generator=g, dtype=F64).add_(0.5)
    x += offset  # a common offset (model parameters are not centred)
    x[:outliers] += 50.0 * torch.randn(d, generator=g, dtype=F64)  # far rows, placed first
    return x.to(dtype)


def _exact_median(x: torch.Tensor, max_iter: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """The direct loop in float64 on the same (float32) data."""
    return GeometricMedian(max_iter=max_iter, tol=tol, solver="direct")(x.double())


def _spy(monkeypatch) -> list:
    calls = []
    real = agg._gram_weiszfeld

    def spy(x, **kw):
        out = real(x, **kw)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(agg, "_gram_weiszfeld", spy)
    return calls


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("offset, outliers", [(0.0, 0), (0.0, 4), (1e3, 4)])
@pytest.mark.parametrize("max_iter, tol", [(3, 0.0), (100, 1e-7)])
def test_gram_iterates_match_the_direct_loop(monkeypatch, dtype, offset, outliers, max_iter, tol):
    x = _wide(17, 8_000, dtype, seed=outliers + int(offset), offset=offset, outliers=outliers)
    calls = _spy(monkeypatch)
    gram = GeometricMedian(max_iter=max_iter, tol=tol)
    z = gram(x)
    assert calls == [True]  # the cost model took the Gram path, and it finished there
    direct = GeometricMedian(max_iter=max_iter, tol=tol, solver="direct")
    ref = direct(x)
    assert z.dtype == ref.dtype == dtype
    if dtype == F64:
        assert float((z - ref).norm() / (ref - offset).norm()) < 1e-12
    else:  # as accurate as the direct loop against float64 arithmetic on the same data
        exact = _exact_median(x, max_iter, tol)
        spread = float((exact - offset).norm())
        gram_err, direct_err = (float((v.double() - exact).norm()) / spread for v in (z, ref))
        assert gram_err <= 1.5 * direct_err + 1e-7, (gram_err, direct_err)
    if tol == 0.0:
        assert gram.last_iterations == direct.last_iterations == [max_iter]
    else:  # the stopping test sees the same steps up to rounding
        assert abs(gram.last_iterations[0] - direct.last_iterations[0]) <= 1


def test_gram_path_finds_the_geometric_median(monkeypatch):
    """Against the objective's minimiser (BFGS on sum_i ||x_i - z||, float64)."""
    from scipy.optimize import minimize

    x = _wide(12, 6_000, F64, seed=3, outliers=3).numpy()

    def objective(z):
        return np.linalg.norm(x - z, axis=1).sum()

    def grad(z):
        diff = z - x
        return (diff / np.linalg.norm(diff, axis=1)[:, None]).sum(axis=0)

    ref = minimize(objective, np.median(x, axis=0), jac=grad, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15}).x
    calls = _spy(monkeypatch)
    z = GeometricMedian()(torch.from_numpy(x)).numpy()
    assert calls == [True]
    assert np.linalg.norm(z - ref) <= 1e-6 * np.linalg.norm(ref)
    assert objective(z) <= objective(ref) + 1e-9


def test_float32_under_a_large_offset_is_as_accurate_as_the_direct_loop(monkeypatch):
    """Rows 1e4 away from the origin but about 1 apart: an uncentred float32 Gram matrix would
    lose every digit of the distances (1e8 against 1); the centred one is as accurate as the
    direct loop (both limited by float32's resolution at 1e4)."""
    x = _wide(10, 10_000, F64, seed=5, offset=1e4, outliers=2).float()
    calls = _spy(monkeypatch)
    z = GeometricMedian()(x).double()
    assert calls == [True]
    ref = GeometricMedian(solver="direct")(x).double()
    exact = _exact_median(x)
    spread = float((exact - 1e4).norm())
    gram_err, direct_err = float((z - exact).norm()) / spread, float((ref - exact).norm()) / spread
    assert gram_err <= 1.5 * direct_err, (gram_err, direct_err)


def test_a_cluster_at_the_median_hands_over_to_the_direct_loop(monkeypatch):
    """Fourteen equal rows of thirty, the others spread in every direction: the median is that
    row (the other rows' unit vectors sum to less than 14), where the Gram formula's distances
    to it are all cancellation, because the centre (the coordinate median of the first 21 rows,
    five of them in the cluster) lies elsewhere. The direct loop finishes the call, with its own
    result."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn((30, 6_000), generator=g, dtype=F64)
    x[16:] = x[16]
    calls = _spy(monkeypatch)
    z = GeometricMedian()(x)
    assert calls == [False]
    ref = GeometricMedian(solver="direct")(x)
    assert torch.equal(z, ref)
    assert float((z - x[16]).norm()) < 1e-6 * float(x[16].norm())


def test_a_cluster_at_the_centre_stays_in_the_gram_space(monkeypatch):
    """Nine equal rows of fifteen: the centre is that row too, so its distances carry no
    cancellation (``G_ii = 0``): the Gram path finishes, at that row."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn((15, 6_000), generator=g, dtype=F64)
    x[:9] = x[0]
    calls = _spy(monkeypatch)
    z = GeometricMedian()(x)
    assert calls == [True]
    assert float((z - x[0]).norm()) < 1e-6 * float(x[0].norm())


def test_segments_take_the_path_each_on_its_own(monkeypatch):
    """Layer by layer: the wide segment iterates in the Gram space, the narrow one directly."""
    x = _wide(9, 20_050, F64, seed=11, outliers=2)
    calls = _spy(monkeypatch)
    out = GeometricMedian(segments=[20_000, 50])(x)
    assert calls == [True]  # the 50-column segment never asked
    expected = torch.cat([GeometricMedian()(x[:, :20_000]), GeometricMedian()(x[:, 20_000:])])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_solver_gram_forces_the_gram_iteration_on_a_small_stack(monkeypatch):
    """Below the cost model's sizes ``auto`` iterates directly; ``gram`` asks for the Gram
    iteration anyway (the same median), and ``weiszfeld`` takes the same setting."""
    x = _wide(7, 40, F64, seed=2, outliers=2)
    calls = _spy(monkeypatch)
    auto = GeometricMedian()(x)
    assert calls == []
    gram = GeometricMedian(solver="gram")(x)
    z, it = agg.weiszfeld(x, solver="gram")
    assert calls == [True, True]
    torch.testing.assert_close(gram, auto, rtol=0, atol=1e-10)
    torch.testing.assert_close(z, auto, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="solver = 'sgd'"):
        agg.weiszfeld(x, solver="sgd")


def test_server_config_passes_the_solver(tmp_path):
    """A user picks the solver through the server's aggregator settings; a wrong one is named."""
    from p2pmtl.server.aggregation import build_aggregator
    from p2pmtl.server.config import ServerConfig
    from p2pmtl.server.federated import Method

    method = Method.parse("br-mtrl+gm")
    server = ServerConfig(aggregator_params={"solver": "direct"})
    gm = build_aggregator(method, server, [3, 4], [3, 4, 5])
    gm = getattr(gm, "aggregator", gm)
    assert isinstance(gm, GeometricMedian) and gm.solver == "direct"
    with pytest.raises(ValueError, match="solver = 'fastest'"):
        build_aggregator(method, ServerConfig(aggregator_params={"solver": "fastest"}), [3, 4], [3, 4, 5])


def test_the_cost_model_takes_the_gram_path_where_it_pays():
    pays = agg._gram_weiszfeld_pays
    assert pays(100, 1_000_000, 100, 1e-7)  # the usual tolerance: about 12 steps at 0.04 reads a row
    assert pays(300, 300_000, 100, 1e-7)
    assert not pays(1_000, 1_000_000, 3, 0.0)  # a product of 40 reads against 3 steps
    assert pays(1_000, 1_000_000, 100, 0.0)  # but not against 100
    assert not pays(10, 100, 100, 1e-7)  # too small to matter
    assert not pays(1_000, 2_000, 100, 1e-7)  # narrow: the n x n matrix is as large as the stack


# ------------------------------------------------------------------ nearest-neighbour mixing, then a row rule

ROW_RULES = {"mean": {}, "krum": {"f": 5}, "multi_krum": {"f": 5}, "geometric_median": {}}


def test_nnm_then_mean_hand_case():
    """f = 1: [0], [1], [10] mix to [0.5], [0.5], [5.5], whose mean is 13/6."""
    pipe = agg.make_aggregator("mean", pre=["nnm"], f=1)
    out = pipe(torch.tensor([[0.0], [1.0], [10.0]], dtype=F64))
    assert out.tolist() == pytest.approx([13 / 6], rel=1e-15)


def test_nnm_then_krum_hand_case():
    """f = 1, five inputs [0], [1], [2], [3], [100]: each mixes with its 4 nearest (itself
    included): [1.5], [1.5], [1.5], [1.5], [26.5]; Krum (f = 1) picks the first of the four
    equal rows."""
    pipe = agg.make_aggregator("krum", pre=["nnm"], f=1)
    out = pipe(torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=F64))
    assert out.tolist() == [1.5]


def _two_steps(x: torch.Tensor, pre: list[str], rule: str, params: dict):
    steps = [agg.NearestNeighborMixing(f=5) if p == "nnm" else agg.ClipToCenter(tau=10.0) for p in pre]
    y = x
    for step in steps:
        y = step(y)
    final = agg.make_aggregator(rule, **params)
    return final(y), sum(s.last_dropped for s in steps), final


@pytest.mark.parametrize("rule", sorted(ROW_RULES))
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kind", ["ordinary", "nan rows", "huge rows", "after clipping"])
def test_nnm_then_a_row_rule_is_the_rule_on_the_mixed_rows(rule, dtype, kind):
    """The fused pipeline (one weighted sum of the input rows) against its steps run one after
    the other: the same value up to the order of the sums, the same dropped rows."""
    x = _wide(23, 3_000, dtype, seed=13, outliers=5)
    pre = ["nnm"]
    if kind == "nan rows":
        x[4, 7] = float("nan")
        x[9] = float("inf")
    elif kind == "huge rows":
        x[2] = 1e30 if dtype == F32 else 1e300
    elif kind == "after clipping":
        pre = ["clip_to_center", "nnm"]
    params = dict(ROW_RULES[rule])
    pipe = agg.make_aggregator(rule, pre=pre, **({"f": 5, "tau": 10.0} if len(pre) == 2 else {"f": 5}))
    out = pipe(x)
    ref, dropped, final = _two_steps(x, pre, rule, params)
    assert out.dtype == dtype and torch.isfinite(out).all()
    scale = float(ref.double().abs().max())
    tol = 1e-5 if dtype == F32 else 1e-10
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol * scale)
    assert pipe.last_dropped == dropped == {"nan rows": 2}.get(kind, 0)
    if rule == "geometric_median":
        assert abs(pipe.aggregator.last_iterations[0] - final.last_iterations[0]) <= 1


@pytest.mark.parametrize("rule", sorted(ROW_RULES))
def test_nnm_then_a_row_rule_never_forms_the_mixed_rows(monkeypatch, rule):
    """Ordinary rows: no [n, d] mixed rows (the mixing product is never called)."""
    monkeypatch.setattr(agg, "_mix_rows", lambda mix, x: pytest.fail("mixed rows formed"))
    out = agg.make_aggregator(rule, pre=["nnm"], f=2)(_wide(12, 500, F32, seed=1))
    assert torch.isfinite(out).all()


def test_nnm_then_the_median_falls_back_where_mixed_rows_coincide(monkeypatch):
    """With two far rows every honest row mixes the same ten: ten equal mixed rows, at which
    the median lies, where the Gram formula cannot be trusted (the centre is elsewhere); the
    mixed rows are then formed and the median runs on them as in the two steps."""
    calls = []
    real = agg._mix_rows
    monkeypatch.setattr(agg, "_mix_rows", lambda mix, x: calls.append(1) or real(mix, x))
    x = _wide(12, 500, F64, seed=1, outliers=2)
    out = agg.make_aggregator("geometric_median", pre=["nnm"], f=2)(x)
    assert calls == [1]
    ref = GeometricMedian()(agg.NearestNeighborMixing(f=2)(x))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("rule, params", [("coordinate_median", {}), ("geometric_median", {"segments": [200, 300]}),
                                          ("geometric_median", {"solver": "direct"})])
def test_other_rules_after_nnm_get_the_mixed_rows(monkeypatch, rule, params):
    """Rules that are no combination of rows (or not found from the Gram matrix: a median per
    segment, the direct loop asked for) receive the mixed rows, as before."""
    calls = []
    real = agg._mix_rows
    monkeypatch.setattr(agg, "_mix_rows", lambda mix, x: calls.append(1) or real(mix, x))
    x = _wide(12, 500, F32, seed=1, outliers=2)
    out = agg.make_aggregator(rule, pre=["nnm"], f=2, **params)(x)
    assert calls == [1]
    ref = agg.make_aggregator(rule, **params)(agg.NearestNeighborMixing(f=2)(x))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_subclass_of_a_row_rule_is_not_fused():
    """A plugin that subclasses Krum but aggregates otherwise gets its own result."""

    class KrumThenDouble(agg.Krum):
        def _aggregate(self, x):
            return 2.0 * super()._aggregate(x)

    x = _wide(12, 500, F64, seed=1, outliers=2)
    pipe = agg.Pipeline([agg.NearestNeighborMixing(f=2)], KrumThenDouble(f=2))
    ref = 2.0 * agg.make_aggregator("krum", pre=["nnm"], f=2)(x)
    torch.testing.assert_close(pipe(x), ref, rtol=1e-12, atol=1e-12)


def test_nnm_then_krum_names_too_few_inputs_as_the_two_steps_do():
    x = _wide(6, 500, F32, seed=1)
    with pytest.raises(ValueError) as fused:
        agg.make_aggregator("krum", pre=["nnm"], f=2)(x)
    with pytest.raises(ValueError) as steps:
        agg.Krum(f=2)(agg.NearestNeighborMixing(f=2)(x))
    assert str(fused.value) == str(steps.value) and "needs n >= 2f + 3" in str(fused.value)


def test_the_gram_buffer_padding_changes_no_bit(monkeypatch):
    """The spare columns of the centred chunk buffer (a row stride off the powers of two) leave
    every product as it was; several chunks and a partial last one."""
    x = _wide(13, 2 * agg.CHUNK_COLUMNS + 100, F32, seed=4, outliers=3)
    padded = agg._centred_gram(x, x[:9], finite=True, with_centre=True)
    monkeypatch.setattr(agg, "_GRAM_ROW_PAD", 0)
    plain = agg._centred_gram(x, x[:9], finite=True, with_centre=True)
    assert torch.equal(padded[0], plain[0]) and padded[1] == plain[1]
