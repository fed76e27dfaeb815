"""The ``[clock]`` and ``[network]`` tables: simulated time of compute and messages."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..graphs.config import GraphConfig
from ..validation import MAX_SECONDS, Probability, Seconds, Strict


class ClockConfig(Strict):
    """Simulated time of a synchronous round: compute, then one link latency."""

    compute_time: Seconds = Field(1.0, description="simulated seconds per local step")
    latency: Seconds = Field(0.0, description="simulated seconds per message hop")


class DistConfig(Strict):
    """A non-negative random quantity, drawn once per agent or per link: ``constant`` (value),
    ``uniform`` (low, high), ``lognormal`` (median, sigma: exp(N(log median, sigma^2))) or
    ``edge_attr`` (the graph's edge attribute ``attr``, ``default`` where an edge lacks it).
    A bare number means a constant."""

    kind: Literal["constant", "uniform", "lognormal", "edge_attr"] = Field(
        "constant", description="the distribution: constant (value), uniform (low, high), lognormal (median, "
                                "sigma) or edge_attr (a graph edge attribute)")
    value: float = Field(0.0, ge=0, le=MAX_SECONDS, description="constant: the value of every draw")
    low: float = Field(0.0, ge=0, le=MAX_SECONDS, description="uniform: the lower end")
    high: float = Field(0.0, ge=0, le=MAX_SECONDS, description="uniform: the upper end (>= low)")
    median: float = Field(1.0, gt=0, le=MAX_SECONDS, description="lognormal: the median of the draws")
    sigma: float = Field(0.0, ge=0, le=10, description="at most 10: exp(N(0, sigma^2)) overflows soon after")
    attr: Optional[str] = Field(None, description="edge_attr: the name of the graph's edge attribute (per link)")
    default: Optional[float] = Field(None, ge=0, le=MAX_SECONDS,
                                     description="edge_attr: the value where an edge lacks the attribute "
                                                 "(none: every edge must have it)")

    @model_validator(mode="before")
    @classmethod
    def _number(cls, data):
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"kind": "constant", "value": data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "DistConfig":
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform needs low <= high, got low = {self.low}, high = {self.high}")
        if self.kind == "edge_attr" and not self.attr:
            raise ValueError("kind = 'edge_attr' needs attr = the name of an edge attribute of the graph")
        return self

    def lower_bound(self) -> Optional[float]:
        """The smallest value a draw can take (None: unknown before the graph is built)."""
        return {"constant": self.value, "uniform": self.low, "lognormal": 0.0}.get(self.kind, self.default)

    def typical(self) -> Optional[float]:
        """A typical draw: the value, the midpoint or the median."""
        return {"constant": self.value, "uniform": (self.low + self.high) / 2,
                "lognormal": self.median}.get(self.kind, self.default)

    def positive_floor(self, key: str, floor: float, unit: str) -> None:
        """Refuse a distribution whose draws can fall below ``floor`` (> 0), naming ``key``."""
        field = {"constant": "value", "uniform": "low", "lognormal": "median", "edge_attr": "default"}[self.kind]
        value = getattr(self, field)
        if value is not None and value < floor:
            raise ValueError(f"{key}.{field} = {value}: {unit} must be >= {floor:g} "
                             f"(a draw near 0 makes times unbounded)")


class StragglerConfig(Strict):
    """A ``fraction`` of agents computes ``slowdown`` times slower: the same agents all run
    (``mode = "fixed"``) or each agent anew at each step (``"random"``)."""

    fraction: Probability = Field(0.0, description="fraction of the agents that straggle")
    slowdown: float = Field(10.0, ge=1, allow_inf_nan=False,
                            description="factor on the compute time of a straggling step")
    mode: Literal["fixed", "random"] = Field(
        "fixed", description="fixed: the same agents straggle all run; random: drawn anew at each step")


class ChurnConfig(Strict):
    """A ``fraction`` of agents alternates online / offline periods of exponential length
    (means in simulated seconds). Offline agents neither compute, send nor receive; they keep
    their model and rejoin with it."""

    fraction: Probability = Field(0.0, description="fraction of the agents that go on and off line")
    mean_online: float = Field(50.0, gt=0, allow_inf_nan=False,
                               description="mean length of an online period (simulated seconds)")
    mean_offline: float = Field(10.0, gt=0, allow_inf_nan=False,
                                description="mean length of an offline period (simulated seconds)")


class TopologyChangeConfig(Strict):
    """Time-varying edges: ``static`` (the graph), ``redraw`` (a fresh graph of the same family
    every ``every`` rounds) or ``schedule`` (the listed graphs in turn, ``every`` rounds each).
    Agents keep their scores for an edge while it is absent."""

    kind: Literal["static", "redraw", "schedule"] = Field(
        "static", description="static: the graph all run; redraw: a fresh graph of the same family every `every` "
                              "rounds; schedule: the listed graphs in turn")
    every: int = Field(1, ge=1, description="rounds per graph (async: nominal rounds of compute_time)")
    schedule: list[GraphConfig] = Field(
        default_factory=list, description="kind = schedule: the graphs in turn (graph tables over the same nodes)")

    @model_validator(mode="after")
    def _schedule(self) -> "TopologyChangeConfig":
        if self.kind == "schedule" and not self.schedule:
            raise ValueError("kind = 'schedule' needs schedule = [graph tables]")
        if self.kind != "schedule" and self.schedule:
            raise ValueError(f"schedule given but kind = {self.kind!r}; use kind = 'schedule'")
        return self


class NetworkConfig(Strict):
    """The network model on the SimPy clock (SPEC sec. 7). Present: timing per agent and per link;
    absent: the plain synchronous clock of ``[clock]``. Compute time of a step =
    ``clock.compute_time`` x the agent's ``speed`` factor (x ``stragglers.slowdown``); a message
    on link l -> k takes ``latency`` + bytes / ``bandwidth`` (bytes/s; none = infinite)."""

    protocol: Literal["sync", "async"] = Field(
        "sync", description="sync: round-tagged gossip (combine when all messages arrived or at the deadline); "
                            "async: every agent combines at its own pace with the freshest models it holds")
    deadline: Optional[float] = Field(
        None, gt=0, le=MAX_SECONDS, description="sync: seconds after its round starts when an agent combines what it has")
    speed: DistConfig = Field(DistConfig(value=1.0),
                              description="per-agent factor on clock.compute_time (a bare number: constant)")
    latency: Optional[DistConfig] = Field(None, description="per link; default: clock.latency")
    latency_per_message: bool = Field(False, description="redraw the latency of every message (links stay FIFO)")
    bandwidth: Optional[DistConfig] = Field(None, description="bytes per second per link; default: infinite")
    loss: Probability = Field(0.0, description="probability that a message is lost")
    stragglers: StragglerConfig = Field(StragglerConfig(), description="agents that compute slower")
    churn: ChurnConfig = Field(ChurnConfig(), description="agents that go off line and come back")
    topology: TopologyChangeConfig = Field(TopologyChangeConfig(), description="time-varying edges")

    @field_validator("speed")
    @classmethod
    def _speed(cls, v):
        if v.kind in ("constant", "uniform") and (v.lower_bound() or 0) <= 0:
            raise ValueError(f"network.speed.{'value' if v.kind == 'constant' else 'low'} = {v.lower_bound()}: "
                             "a compute-time factor must be > 0")
        return v

    @field_validator("bandwidth")
    @classmethod
    def _bandwidth(cls, v):
        if v is not None:
            v.positive_floor("network.bandwidth", 1.0, "bytes per second (omit bandwidth for infinite)")
        return v
