"""Human activity recognition on a tiny UCI-HAR-format dataset written by the test itself,
and the stacked optimizers against torch.optim."""
import json

import pytest
import torch

from p2pmtl.cli import main
from p2pmtl.data import write_tiny_har
from p2pmtl.tasks.optim import StackedAdam, StackedSGD


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_stacked_optimizer_equals_torch_per_row(name):
    torch.manual_seed(0)
    rows, dim = 4, 7
    theta = torch.randn(rows, dim, dtype=torch.float64)
    params = [torch.nn.Parameter(theta[i].clone()) for i in range(rows)]
    make = (lambda p: torch.optim.Adam([p], lr=0.01)) if name == "adam" else (lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9))
    opts = [make(p) for p in params]
    stacked = StackedAdam(rows, dim, lr=0.01, dtype=torch.float64) if name == "adam" else StackedSGD(rows, dim, 0.01, 0.9, torch.float64)
    for step in range(6):
        grad = torch.randn(rows, dim, dtype=torch.float64)
        mask = torch.tensor([True, step % 2 == 0, step % 3 == 0, False])
        theta = stacked.step(theta, grad, mask)
        for i in range(rows):
            if mask[i]:
                params[i].grad = grad[i].clone()
                opts[i].step()
    for i in range(rows):
        assert torch.allclose(theta[i], params[i].detach(), rtol=1e-12, atol=1e-14)


def test_har_experiment_end_to_end_on_a_tiny_file(tmp_path):
    root = write_tiny_har(tmp_path / "UCI HAR Dataset", n_subjects=4, n_per_subject=40, seed=1)
    out = tmp_path / "run"
    code = main(["run", "experiments/har.toml", "--out", str(out), "--no-progress", "--no-figures",
                 "--set", f"task.data_root={json.dumps(str(root))}", "--set", "graph.n=4",
                 "--set", "iterations=40", "--set", "output.record_every=10", "--set", "output.window=20",
                 "--set", "scenarios.1.byzantine=1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    res = summary["results"]
    assert set(res) == {"no_attack", "byzantine_5"}
    for rules in res.values():
        for r in rules.values():
            assert 0.0 <= r["test_acc"]["last_window_mean"] <= 1.0
            assert r["test_loss"]["last_window_mean"] > 0


def test_har_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "experiments/har.toml", "--out", str(tmp_path / "x"), "--no-progress",
                 "--set", f"task.data_root={json.dumps(str(tmp_path / 'nowhere'))}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "train" in err
