"""Weight-rule maths on small hand-computed cases (Li2020 eqs. 4, 9-10)."""
import math

import numpy as np
import pytest
import torch

from p2pmtl.core.edges import EdgeIndex
from p2pmtl.rules.weights import Average, DistanceBased, LossBased, NonCooperative


def star_in(n_neighbours: int) -> EdgeIndex:
    """Receiver 0 hears from 1..n (and itself); the others hear only themselves."""
    src = np.arange(1, n_neighbours + 1)
    return EdgeIndex.from_arrays(src, np.zeros_like(src), n_neighbours + 1)


def stat_for(edges: EdgeIndex, values: dict) -> torch.Tensor:
    """Per-edge statistic for edges into node 0 from {sender: value}; others get 1."""
    s = torch.ones(edges.num_edges, dtype=torch.float64)
    for e, (a, b) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())):
        if b == 0:
            s[e] = values[a]
    return s


def weights_into_0(edges: EdgeIndex, w: torch.Tensor) -> dict:
    return {a: float(w[e]) for e, (a, b) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())) if b == 0}


def test_loss_rule_worked_example_filters_higher_loss():
    edges = star_in(2)
    rule = LossBased(nu=1.0, init_score=10.0)  # nu = 1: the score is the latest loss
    rule.reset(edges)
    w = weights_into_0(edges, rule.weights(edges, stat_for(edges, {0: 2.0, 1: 1.0, 2: 4.0}), None))
    assert w[0] == pytest.approx(1 / 3)
    assert w[1] == pytest.approx(2 / 3)
    assert w[2] == 0.0  # loss 4 > own loss 2: filtered out


def test_loss_rule_smoothing_follows_eq_9():
    edges = star_in(1)
    rule = LossBased(nu=0.1, init_score=10.0)
    rule.reset(edges)
    rule.weights(edges, stat_for(edges, {0: 1.0, 1: 3.0}), None)
    rule.weights(edges, stat_for(edges, {0: 1.0, 1: 3.0}), None)
    own = 0.9 * (0.9 * 10 + 0.1 * 1) + 0.1 * 1
    nb = 0.9 * (0.9 * 10 + 0.1 * 3) + 0.1 * 3
    phi = weights_into_0(edges, rule.phi)
    assert phi[0] == pytest.approx(own) and phi[1] == pytest.approx(nb)
    # nb > own, so the neighbour is filtered and the agent keeps only itself
    w = weights_into_0(edges, rule.weights(edges, stat_for(edges, {0: 1.0, 1: 3.0}), None))
    assert w == {0: 1.0, 1: 0.0}


def test_agent_always_keeps_itself_and_weights_sum_to_one():
    torch.manual_seed(0)
    n = 30
    src, dst = np.random.default_rng(0).integers(0, n, (2, 200))
    edges = EdgeIndex.from_arrays(src, dst, n)
    for rule in (LossBased(nu=0.3), DistanceBased(nu=0.3), Average(), NonCooperative()):
        rule.reset(edges)
        for _ in range(5):
            w = rule.weights(edges, torch.rand(edges.num_edges, dtype=torch.float64) * 5, None)
        assert torch.allclose(edges.segment_sum(w), torch.ones(n, dtype=torch.float64))
        assert (w >= 0).all()
        assert (w[edges.self_edge] > 0).all()


def test_distance_rule_is_inverse_score_without_filter():
    edges = star_in(2)
    rule = DistanceBased(nu=1.0)
    rule.reset(edges)
    w = weights_into_0(edges, rule.weights(edges, stat_for(edges, {0: 2.0, 1: 1.0, 2: 4.0}), None))
    total = 1 / 2 + 1 + 1 / 4
    assert w == pytest.approx({0: 0.5 / total, 1: 1 / total, 2: 0.25 / total})


def test_average_and_noncoop():
    edges = star_in(3)
    avg, nc = Average(), NonCooperative()
    avg.reset(edges)
    nc.reset(edges)
    assert weights_into_0(edges, avg.weights(edges)) == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25})
    assert weights_into_0(edges, nc.weights(edges)) == {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}


def test_non_finite_message_gets_no_weight():
    edges = star_in(3)
    valid = torch.ones(edges.num_edges, dtype=torch.bool)
    bad = next(e for e, (a, b) in enumerate(zip(edges.src.tolist(), edges.dst.tolist())) if (a, b) == (2, 0))
    valid[bad] = False
    stat = stat_for(edges, {0: 2.0, 1: 1.0, 2: float("nan"), 3: 1.0})
    for rule in (LossBased(nu=1.0), DistanceBased(nu=1.0), Average()):
        rule.reset(edges)
        w = rule.weights(edges, stat, valid)
        assert torch.isfinite(w).all()
        got = weights_into_0(edges, w)
        assert got[2] == 0.0
        assert sum(got.values()) == pytest.approx(1.0)
    avg = Average()
    avg.reset(edges)
    assert weights_into_0(edges, avg.weights(edges, None, valid)) == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 0, 3: 1 / 3})


def test_non_finite_loss_is_filtered_and_score_kept():
    edges = star_in(2)
    rule = LossBased(nu=0.5, init_score=1.0)
    rule.reset(edges)
    w = weights_into_0(edges, rule.weights(edges, stat_for(edges, {0: 1.0, 1: math.inf, 2: 0.5}), None))
    assert w[1] == 0.0 and sum(w.values()) == pytest.approx(1.0)
    assert weights_into_0(edges, rule.phi)[1] == 1.0  # not updated by a non-finite loss


def test_zero_losses_give_finite_weights():
    edges = star_in(3)
    for rule in (LossBased(nu=1.0), DistanceBased(nu=1.0)):
        rule.reset(edges)
        w = rule.weights(edges, stat_for(edges, {0: 0.0, 1: 0.0, 2: 0.0, 3: 5.0}), None)
        assert torch.isfinite(w).all()
        got = weights_into_0(edges, w)
        assert got[0] == pytest.approx(1 / 3) and got[1] == pytest.approx(1 / 3)
        assert sum(got.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [{"nu": 0.0}, {"nu": 1.5}, {"init_score": 0.0}])
def test_rule_parameters_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LossBased(**bad)
