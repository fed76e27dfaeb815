"""Learning tasks: data streams, models, losses and metrics, as batched populations."""
from .base import TASKS, Population, StackedPopulation
from . import target_localization  # noqa: F401  (registers the task)

__all__ = ["TASKS", "Population", "StackedPopulation"]
