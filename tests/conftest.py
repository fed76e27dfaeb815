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


# Property-based tests: a bounded number of examples by default (CI stays fast);
# HYPOTHESIS_PROFILE=slow runs many more.
try:
    import os

    from hypothesis import settings

    settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
    settings.register_profile("slow", max_examples=400, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in the dev extra
    pass
