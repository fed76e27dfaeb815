"""Empirical resilience (RESAM Definition 1): exact on hand cases, and the known facts."""
import math

import torch

from p2pmtl.cli import main
from p2pmtl.robust.aggregators import make_aggregator
from p2pmtl.robust.robustness import empirical_resilience, resilience_table


def test_hand_case_of_the_mean():
    """Honest rows (0, 0) and (2, 0): mean (1, 0), diameter 2, variance 1. With f = 1 the mean
    of the three inputs moves by ||row - (1, 0)|| / 3, so kappa_hat is the worst forgery's."""
    honest = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    r = empirical_resilience(lambda x: x.mean(0), n=3, f=1, honest=[honest])
    assert r["worst_attack"] == "far"
    diam = 2.0
    far = torch.tensor([1.0, 0.0], dtype=torch.float64) + 1e3 * diam * torch.ones(2, dtype=torch.float64) / math.sqrt(2)
    shift = float((far - torch.tensor([1.0, 0.0], dtype=torch.float64)).norm()) / 3
    assert math.isclose(r["kappa"], shift / diam, rel_tol=1e-9)
    assert math.isclose(r["kappa_var"], shift ** 2 / 1.0, rel_tol=1e-9)


def test_no_byzantine_input_means_no_error_for_the_mean():
    r = empirical_resilience(make_aggregator("mean"), n=8, f=0, trials=3)
    assert r["kappa"] < 1e-12


def test_robust_aggregators_are_far_below_the_mean():
    rows = {r["aggregator"]: r for r in resilience_table([(10, 2)], ["mean", "geometric_median", "coordinate_median",
                                                                       "trimmed_mean", "krum"], trials=3)}
    assert rows["mean"]["kappa"] > 50 and rows["mean"]["known_bound"] == math.inf
    for name in ("geometric_median", "coordinate_median", "trimmed_mean", "krum"):
        assert rows[name]["kappa"] < 2.0, rows[name]


def test_cli_prints_a_table_and_rejects_unknown_names(capsys):
    assert main(["robustness", "--n-f", "7:1", "--aggregators", "mean", "krum", "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "krum" in out and "kappa_hat" in out
    assert main(["robustness", "--aggregators", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
