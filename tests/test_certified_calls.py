"""Certified calls (``_Component.certifies``): the Gram-distance and selection components skip
the stack's finiteness pass when their first pass (the Gram matrix, the sorting network, the
sort) proves the stack ordinary, and start again on the usual path otherwise. Results,
``last_dropped`` and errors must be the usual path's, whatever the input."""
from __future__ import annotations

import inspect

import pytest
import torch

from p2pmtl.robust import aggregators as agg
from p2pmtl.robust.aggregators import AGGREGATORS, PRE_AGGREGATORS, make_aggregator

CERTIFYING = sorted(name for name in AGGREGATORS.names() if AGGREGATORS.get(name).certifies)
CERTIFYING_PRE = sorted(name for name in PRE_AGGREGATORS.names() if PRE_AGGREGATORS.get(name).certifies)


def test_the_gram_distance_and_selection_rules_certify():
    assert {"krum", "multi_krum", "bulyan", "caf", "mda", "coordinate_median", "trimmed_mean",
            "centered_clipping", "geometric_median"} <= set(CERTIFYING)
    assert CERTIFYING_PRE == ["nnm"]


def _stack(kind: str, dtype: torch.dtype, n: int = 15, d: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(kind))
    x = torch.randn((n, d), generator=g, dtype=torch.float64).to(dtype)
    if kind == "nan row":
        x[3, 5] = float("nan")
    elif kind == "inf rows":
        x[0, :] = float("inf")
        x[7, 2] = -float("inf")
    elif kind == "huge rows":  # beyond the overflow bound: the guarded path
        x[1] = 1e30 if dtype == torch.float32 else 1e300
    elif kind == "large rows":  # far, but below the bound: certified
        x[1] += 1e6
    elif kind == "near the bound":
        x[2, 0] = 0.9 * agg._overflow_limit(agg._compute_dtype(dtype), n, d)
    return x


def _usual(component):
    """The same component on the usual path (an instance attribute hides the class's flag)."""
    component.certifies = False
    return component


def _build(name: str, pre: bool, **extra):
    cls = PRE_AGGREGATORS.get(name) if pre else AGGREGATORS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in {"f": 2, "tau": 1.0, **extra}.items() if k in accepted}
    if pre:
        return make_aggregator("mean", pre=[name], **kwargs)
    return make_aggregator(name, **kwargs)


@pytest.mark.parametrize("kind", ["ordinary", "nan row", "inf rows", "huge rows", "large rows", "near the bound"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CERTIFYING + ["nnm"])
def test_certified_and_usual_calls_agree(name, dtype, kind):
    x = _stack(kind, dtype)
    pre = name in CERTIFYING_PRE
    certified, usual = _build(name, pre), _build(name, pre)
    _usual(usual.pre[0] if pre else usual)
    a, b = certified(x), usual(x)
    assert torch.equal(a, b), (name, kind)
    assert certified.last_dropped == usual.last_dropped


@pytest.mark.parametrize("kind", ["ordinary", "nan row", "inf rows", "huge rows"])
@pytest.mark.parametrize("n", [7, 150])
def test_certified_selections_agree_on_both_selection_paths(kind, n):
    """The sorting network (up to 128 rows) and numpy's sort (above) both bound the stack; the
    trimmed mean with f = 0, the mean-centred clipping and several column chunks too."""
    x = torch.randn((n, 70_000), generator=torch.Generator().manual_seed(n), dtype=torch.float32)
    if kind == "nan row":
        x[3, 66_000] = float("nan")
    elif kind == "inf rows":
        x[0, 5] = float("inf")
    elif kind == "huge rows":
        x[1, 69_999] = 1e30
    for name, extra in (("coordinate_median", {}), ("trimmed_mean", {}), ("trimmed_mean", {"f": 0}),
                        ("centered_clipping", {}), ("centered_clipping", {"center": "mean"}),
                        ("geometric_median", {"max_iter": 3}),
                        ("geometric_median", {"max_iter": 2, "segments": [30_000, 40_000]})):
        certified, usual = _build(name, False, **extra), _build(name, False, **extra)
        _usual(usual)
        assert torch.equal(certified(x), usual(x)), (name, extra, kind)
        assert certified.last_dropped == usual.last_dropped


def _count_finiteness_passes(monkeypatch) -> list[int]:
    calls = []
    real = agg._finite_rows

    def counting(x, who):
        calls.append(1)
        return real(x, who)

    monkeypatch.setattr(agg, "_finite_rows", counting)
    return calls


def test_an_ordinary_stack_skips_the_finiteness_pass(monkeypatch):
    calls = _count_finiteness_passes(monkeypatch)
    krum = make_aggregator("krum", f=2)
    x = _stack("ordinary", torch.float32)
    krum(x)
    assert calls == [] and krum.last_dropped == 0
    make_aggregator("meamed", f=2)(x)  # a component that does not certify
    assert calls == [1]


@pytest.mark.parametrize("kind", ["nan row", "inf rows", "huge rows"])
def test_a_hostile_stack_takes_the_usual_path(monkeypatch, kind):
    calls = _count_finiteness_passes(monkeypatch)
    krum = make_aggregator("krum", f=2)
    out = krum(_stack(kind, torch.float32))
    assert calls == [1] and torch.isfinite(out).all()
    assert krum.last_dropped == {"nan row": 1, "inf rows": 2, "huge rows": 0}[kind]


def test_errors_are_the_usual_paths():
    krum = make_aggregator("krum", f=2)
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3") as plain:
        krum(torch.randn(6, 4))
    x = torch.randn(8, 4)
    x[:2] = float("nan")  # 6 finite rows left: f cannot be lowered below 2 - 2 = 0, so it fits
    assert torch.isfinite(krum(x)).all() and krum.last_dropped == 2
    assert "after dropping" not in str(plain.value)


def test_a_subclass_that_grams_a_part_is_not_certified(monkeypatch):
    """Certification needs the Gram matrix of the whole stack the call received."""

    class FirstRowsKrum(agg.Krum):
        def _aggregate(self, x):
            return super()._aggregate(x[:-1])

    calls = _count_finiteness_passes(monkeypatch)
    x = _stack("ordinary", torch.float32)
    x[-1] = float("inf")
    out = FirstRowsKrum(f=2)(x)
    assert calls == [1] and torch.isfinite(out).all()
