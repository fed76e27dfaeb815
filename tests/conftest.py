import pytest
import torch

torch.set_num_threads(1)


def tiny_config_dict(**over) -> dict:
    """A small target-localization experiment (20 agents) for fast tests."""
    d = {
        "name": "tiny",
        "seed": 0,
        "iterations": 30,
        "graph": {"family": "random_geometric", "n": 20, "radius": 1.5, "box": 3.0, "max_neighbors": 5},
        "rules": {"names": ["noncoop", "average", "loss", "distance"]},
        "output": {"window": 10},
        "scenarios": [
            {"name": "clean", "byzantine": 0},
            {"name": "attacked", "byzantine": 4, "attack": {"name": "uniform", "low": 15.0, "high": 16.0}},
        ],
    }
    d.update(over)
    return d


@pytest.fixture
def tiny_dict():
    return tiny_config_dict()
