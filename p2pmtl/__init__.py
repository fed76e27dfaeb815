"""p2pmtl: decentralized peer-to-peer multi-task learning with Byzantine agents.

ATC diffusion with the loss-based filtered weights of Li, Abbas and Koutsoukos (NeurIPS 2020),
compared with non-cooperation, averaging and distance-based weights; a server mode (BR-MTRL,
Le and Moothedath 2025) with robust aggregators; all on a SimPy clock.

The public API is re-exported here (imported on first use, so ``import p2pmtl`` stays quick)::

    import p2pmtl
    res = p2pmtl.run("target_localization", overrides=["iterations=100"])
    res.table("loss")

Extension points: subclass a base class and register it with its decorator, e.g.
``@p2pmtl.register_attack("mine", "what it sends")`` on a :class:`p2pmtl.Attack` subclass.
See the documentation's how-to pages.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # running and results
    "load_config": ("p2pmtl.api", "load_config"),
    "run": ("p2pmtl.api", "run"),
    "sweep": ("p2pmtl.api", "sweep"),
    "study": ("p2pmtl.api", "study"),
    "load_results": ("p2pmtl.api", "load_results"),
    "load_plugins": ("p2pmtl.experiments.plugins", "load_plugins"),
    "RunResults": ("p2pmtl.experiments.results", "RunResults"),
    "SweepResults": ("p2pmtl.experiments.results", "SweepResults"),
    "StudyResults": ("p2pmtl.experiments.results", "StudyResults"),
    "ExperimentConfig": ("p2pmtl.experiments.config", "ExperimentConfig"),
    "ConfigError": ("p2pmtl.validation", "ConfigError"),
    "ConfigWarning": ("p2pmtl.validation", "ConfigWarning"),
    "Strict": ("p2pmtl.validation", "Strict"),
    "resolve_device": ("p2pmtl.core.device", "resolve_device"),
    # extension points: base classes and what they are given
    "WeightRule": ("p2pmtl.rules.weights", "WeightRule"),
    "RuleContext": ("p2pmtl.rules.weights", "RuleContext"),
    "CombineStep": ("p2pmtl.rules.combine", "CombineStep"),
    "CombineContext": ("p2pmtl.rules.combine", "CombineContext"),
    "Attack": ("p2pmtl.robust.attacks", "Attack"),
    "AttackContext": ("p2pmtl.robust.attacks", "AttackContext"),
    "Aggregator": ("p2pmtl.robust.aggregators", "Aggregator"),
    "PreAggregator": ("p2pmtl.robust.aggregators", "PreAggregator"),
    "Population": ("p2pmtl.tasks.base", "Population"),
    "StackedPopulation": ("p2pmtl.tasks.base", "StackedPopulation"),
    "SplitModel": ("p2pmtl.tasks.models", "SplitModel"),
    "ArrayDataset": ("p2pmtl.data", "ArrayDataset"),
    "EdgeIndex": ("p2pmtl.core.edges", "EdgeIndex"),
    "EdgeListGraph": ("p2pmtl.graphs.edge_list", "EdgeListGraph"),
    "Messages": ("p2pmtl.core.messages", "Messages"),
    # registries
    "RULES": ("p2pmtl.rules.weights", "RULES"),
    "COMBINES": ("p2pmtl.rules.combine", "COMBINES"),
    "ATTACKS": ("p2pmtl.robust.attacks", "ATTACKS"),
    "AGGREGATORS": ("p2pmtl.robust.aggregators", "AGGREGATORS"),
    "PRE_AGGREGATORS": ("p2pmtl.robust.aggregators", "PRE_AGGREGATORS"),
    "GRAPHS": ("p2pmtl.graphs.families", "GRAPHS"),
    "TASKS": ("p2pmtl.tasks", "TASKS"),
    "MODELS": ("p2pmtl.tasks.models", "MODELS"),
    "IMAGE_SETS": ("p2pmtl.data", "IMAGE_SETS"),
}

# decorator name -> registry (see the registries above)
_REGISTER = {
    "register_rule": "RULES",
    "register_combine": "COMBINES",
    "register_attack": "ATTACKS",
    "register_aggregator": "AGGREGATORS",
    "register_pre_aggregator": "PRE_AGGREGATORS",
    "register_graph": "GRAPHS",
    "register_model": "MODELS",
    "register_dataset": "IMAGE_SETS",
}

__all__ = ["__version__", *_EXPORTS, *_REGISTER, "register_task"]


def register_task(name: str, description: str, *, config: Any) -> Any:
    """Register a :class:`Population` subclass as task ``name`` with its config model (a
    :class:`Strict` pydantic model with ``name: Literal["<name>"]``); configs then validate
    ``[task] name = "<name>"`` with that model."""
    from .tasks import TASKS

    return TASKS.register(name, description, config=config)


def _register_decorator(registry_name: str):
    def register(name: str, description: str, **extra: Any):
        registry = __getattr__(registry_name)
        return registry.register(name, description, **extra)

    register.__doc__ = (f"Decorator: register a component in ``p2pmtl.{registry_name}`` under ``name`` with a "
                        "one-line ``description`` (shown by ``p2pmtl list``).")
    return register


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _REGISTER:
        value = _register_decorator(_REGISTER[name])
        value.__name__ = name
        globals()[name] = value
        return value
    raise AttributeError(f"module 'p2pmtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
