"""Li2020 Theorem 1 on the paper's case study: with the loss-based rule a normal agent is never
worse than non-cooperation, whatever the number of Byzantine neighbours; averaging and
distance-based weights are pulled away. 100 agents, 500 iterations, 3 seeds batched."""
import pytest
import torch

from p2pmtl.experiments.config import load_config
from p2pmtl.experiments.runner import build_world, make_engine

RULES = ["noncoop", "average", "loss", "distance"]
SEEDS = 3


def last_window_loss(byzantine: int) -> dict[str, torch.Tensor]:
    """Per-run mean over normal agents of the loss over the last 100 of 500 iterations."""
    cfg = load_config("experiments/target_localization.toml", [f"runs={SEEDS}", "seed=21"])
    scenario = next(s for s in cfg.scenarios if s.byzantine == byzantine)
    world = build_world(cfg, scenario)
    eng = make_engine(cfg, world, scenario, RULES)
    acc = torch.zeros(eng.pop.num_nodes, dtype=torch.float64)
    for i in range(cfg.iterations):
        eng.step(i)
        if i >= cfg.iterations - 100:
            acc += eng.pop.metrics()["loss"]
    normal = ~eng.is_byzantine
    run = world.run_of_node[normal]
    out = {}
    for j, rule in enumerate(RULES):
        vals = eng.lane_values(acc / 100, j)[normal]
        out[rule] = torch.stack([vals[run == r].mean() for r in range(SEEDS)])
    return out


@pytest.mark.parametrize("byzantine", [20, 99])
def test_loss_based_never_worse_than_noncooperation(byzantine):
    res = last_window_loss(byzantine)
    assert (res["loss"] <= res["noncoop"] * (1 + 1e-12)).all(), res
    if byzantine == 99:  # one normal agent, all neighbours Byzantine: exactly non-cooperation
        assert torch.allclose(res["loss"], res["noncoop"], rtol=0, atol=0)
    else:
        assert (res["loss"] < 0.8 * res["noncoop"]).all(), "cooperation should help with 80 honest agents"
    for bad in ("average", "distance"):
        assert (res[bad] > 20 * res["noncoop"]).all(), (bad, res)


def test_without_attack_loss_based_learns_the_groups():
    res = last_window_loss(0)
    assert (res["loss"] < 0.7 * res["noncoop"]).all()
    assert (res["average"] > 100 * res["loss"]).all()  # averaging mixes the four targets
