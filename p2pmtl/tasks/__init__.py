"""Learning tasks: data streams, models, losses and metrics, as batched populations."""
from .base import TASKS, Population, StackedPopulation
from . import digits, har, target_localization  # noqa: F401  (register the tasks)

__all__ = ["TASKS", "Population", "StackedPopulation"]
