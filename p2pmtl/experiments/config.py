"""Experiment configuration: TOML file -> typed, validated objects (pydantic).

Every error names the key, the value given and what is allowed, and is raised before any work
starts. ``--set a.b=value`` overrides parse ``value`` as a TOML value (strings may be bare).
"""
from __future__ import annotations

import tomllib
import typing
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.device import check_device_spec
from ..kernels import check_kernel_spec
from ..engine.roles import RolesConfig
from ..graphs.config import GraphConfig
from ..graphs.families import family_nodes
from ..io.rundir import check_name
from ..network.config import ClockConfig, NetworkConfig
from ..robust.attacks import ATTACKS
from ..rules.weights import RULES
from ..server.config import ServerConfig
from ..tasks import TASKS
from ..validation import (  # noqa: F401  (ConfigError, ConfigWarning: re-exported for users)
    ConfigError,
    ConfigWarning,
    Strict,
    plain,
    registered,
)


def _safe_name(v: str) -> str:
    from ..io.rundir import SAFE_NAME_RULE

    try:
        return check_name("name", v)
    except ValueError:
        raise ValueError(f"not a safe name (it names a folder); allowed: {SAFE_NAME_RULE}") from None


DEFAULT_TASK = "target_localization"


def task_config_model(name: str) -> type[BaseModel]:
    """The config model a task registered with ``TASKS.register(name, ..., config=Model)``."""
    if name not in TASKS:
        raise ValueError(f"task.name = {name!r}: unknown; allowed: {', '.join(TASKS.names())}")
    model = (TASKS.entry(name).extra or {}).get("config")
    if model is None:
        raise ValueError(f"task {name!r} registered no config model (TASKS.register(..., config=Model))")
    return model


def validate_task(value: Any) -> BaseModel:
    """The ``[task]`` table validated by the config model of the task it names (default: target
    localization). Dispatching on the registry, not a closed union, lets plugins add tasks;
    pydantic keeps the error locations (``task.mu``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError("expected a table with name = <task> and its settings")
    name = value.get("name", DEFAULT_TASK)
    if not isinstance(name, str):
        raise ValueError(f"task.name = {name!r}: expected a task name; allowed: {', '.join(TASKS.names())}")
    model = task_config_model(name)
    return model.model_validate({**value, "name": name})


class AttackConfig(BaseModel):
    """``name`` picks an attack (``p2pmtl list``); other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = Field("uniform", description="the attack the Byzantine agents run (`p2pmtl list`); the other "
                                             "keys of the table are its parameters")

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

    name: str = Field(description="names the scenario in every output file (letters, digits, . _ + = -)")
    byzantine: Union[int, list[int]] = Field(0, description="a count (placed by `placement`) or node ids")
    placement: Literal["random", "degree"] = Field(
        "random", description="a count of Byzantine agents goes to random nodes or to the highest-degree ones")
    attack: AttackConfig = Field(AttackConfig(), description="what the Byzantine agents send (unused when byzantine = 0)")
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
    """The gossip rules, one lane each: weights (and optionally their own combine step)."""

    names: list[str] = Field(["noncoop", "average", "loss", "distance"],
                             description="weight rules compared as lanes of one engine (`p2pmtl list`)")
    nu: float = Field(0.1, gt=0, le=1, description="forgetting factor of the smoothed scores")
    init_score: float = Field(10.0, gt=0, allow_inf_nan=False, description="initial value of every smoothed score")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-rule parameters, e.g. { cosine = { floor = 0.1 } }")
    combine: str = Field("weighted_average", description="combine step of every lane whose rule names none "
                                                         "(`p2pmtl list`): weighted_average is Li2020 eq. 3")
    combine_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the combine step")

    @field_validator("names")
    @classmethod
    def _known(cls, v):
        registered(v, RULES)
        if not v:
            raise ValueError("give at least one weight rule")
        return v

    @field_validator("combine")
    @classmethod
    def _combine(cls, v):
        from ..rules.combine import COMBINES

        registered([v], COMBINES)
        return v

    @model_validator(mode="after")
    def _build(self) -> "RulesConfig":
        """Every rule and the combine step are built once here, so bad parameters fail now."""
        from ..rules.combine import make_combine
        from ..rules.weights import make_rule

        for name in self.params:
            if name not in self.names:
                raise ValueError(f"rules.params.{name}: not among rules.names ({', '.join(self.names)})")
        for name in self.names:
            try:
                make_rule(name, nu=self.nu, init_score=self.init_score, **self.params.get(name, {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"rules.params.{name}: {e}") from None
        try:
            make_combine(self.combine, **self.combine_params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"rules.combine_params: {e}") from None
        return self


class OutputConfig(Strict):
    window: int = Field(100, ge=1, description="summary: mean over the last `window` iterations")
    record_every: int = Field(1, ge=1, description="write metrics every k iterations")
    per_agent: bool = Field(True, description="write one metrics.csv row per agent (else means only)")
    network_per_agent: bool = Field(
        False, description="with [network]: write the network accounts (sim_time, bytes_sent, bytes_received, "
                           "time_compute, time_send, time_wait, staleness) per agent in metrics.csv and per task "
                           "group in curves.csv too; default: for all agents together (curves.csv group 'all': "
                           "mean, min, max) and in summary.json only")
    records: Literal["csv", "parquet"] = Field(
        "csv", description="format of the per-agent table: csv (metrics.csv) or parquet (metrics.parquet/, a folder "
                           "of Parquet parts with exact float64 values; needs pyarrow: pip install p2pmtl[parquet])")
    csv_writer: Literal["auto", "inline", "process"] = Field(
        "auto", description="where metrics.csv's rows are formatted as text: inline (in the simulation's process), "
                            "process (a helper process beside it, on another core; the same bytes), or auto (inline, "
                            "then a helper once 50,000 rows were written, where a core is free beside the torch "
                            "`threads`)")
    figures: bool = Field(True, description="draw the run's figures when it ends (`p2pmtl plot` redraws them)")
    formats: list[Literal["png", "pdf", "svg"]] = Field(
        ["png"], min_length=1, description="file formats of every figure, e.g. ['png', 'pdf']")

    @field_validator("records")
    @classmethod
    def _records(cls, v: str) -> str:
        import importlib.util

        if v == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ValueError("output.records = 'parquet' needs the pyarrow package, which is not installed; "
                             "pip install p2pmtl[parquet] (or pyarrow), or use records = 'csv'")
        return v


class ExperimentConfig(Strict):
    name: str = Field("experiment", description="names the run (1-100 printable characters); the default run "
                                                "folder uses it with unsafe characters replaced by '_'")
    seed: int = Field(0, ge=0, description="base seed; run r uses seed + r")
    runs: int = Field(1, ge=1, description="independent seeds seed, seed+1, ... batched together")
    iterations: int = Field(500, ge=1, description="rounds of the run (gossip: local step + exchange + combine; "
                                                "server: one federated round)")
    dtype: Optional[Literal["float64", "float32"]] = Field(
        None, description="default: the task's (float64 for target localization, float32 for CNNs)")
    threads: int = Field(1, ge=1, description="torch threads per process")
    device: str = Field("auto", description="where neural models train and are scored: auto (a CUDA GPU when "
                                            "torch sees one, else the CPU), cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        return check_device_spec(v)
    kernel: str = Field("auto", description="gossip rounds of large target-localization worlds: auto (a compiled "
                                            "numba kernel from 100,000 edges, 5,000 in asynchronous gossip, when "
                                            "numba is installed), numba (wherever it applies) or torch; the same "
                                            "numbers either way")

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v):
        return check_kernel_spec(v)
    jobs: int = Field(1, ge=1, description="scenarios (server mode: scenario x method) in parallel processes")
    mode: Literal["gossip", "server"] = Field(
        "gossip", description="gossip: decentralized ATC diffusion over the graph; server: federated rounds on a "
                              "star (node 0 is the server), BR-MTRL")
    graph: GraphConfig = Field(description="the communication graph (a registered family or a topology file)")
    task: Any = Field(default_factory=lambda: validate_task({}), validate_default=False,
                      description="the task: name = a registered task (`p2pmtl list`), then its settings; "
                                  "default target_localization")

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v):
        return validate_task(v)
    rules: RulesConfig = Field(RulesConfig(), description="gossip mode: the weight rules compared and their combine step")
    roles: Optional[RolesConfig] = Field(
        None, description="gossip mode: nodes that are servers (they aggregate their children's messages with a "
                          "robust aggregator and send the result down); none: every node is a learner")
    scenarios: list[ScenarioConfig] = Field(
        [ScenarioConfig(name="no_attack")], description="the attack settings run one after another (or in parallel, `jobs`)")
    clock: ClockConfig = Field(ClockConfig(), description="simulated time: compute and transmission delays of a round")
    network: Optional[NetworkConfig] = Field(
        None, description="unreliable network (losses, delays, churn, stragglers, topology changes); none: a "
                          "perfect synchronous network")
    output: OutputConfig = Field(OutputConfig(), description="what the run records and draws")
    server: ServerConfig = Field(ServerConfig(), description="server mode: methods, aggregation and client sampling")
    sweep: Optional[dict[str, Any]] = Field(
        None, description="the grid of `p2pmtl sweep` (validated there; `p2pmtl run` ignores it)")
    plugins: list[str] = Field(
        default_factory=list, description="modules or .py files (relative to this file) imported before the "
                                          "config is validated, and in every worker process: the components they "
                                          "register can be named in this config")

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
        from ..robust.aggregators import check_inputs
        from ..server.aggregation import build_aggregator

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
                try:
                    check_inputs(agg, picked)
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
                        if not (m.partition("+")[0] == "fedavg" or m.startswith("dsgd")):
                            raise ValueError(f"server.methods: {m!r} needs a representation/head split; a linear "
                                             f"task ({self.task.name}) allows fedavg[+<aggregator>] and "
                                             f"dsgd[+<aggregator>]")
        return self

    @model_validator(mode="after")
    def _roles_fit(self) -> "ExperimentConfig":
        """``[roles]``: gossip mode, synchronous rounds (any ``[network]`` with protocol sync); server ids in the graph
        (when its size is known), at least one learner, Byzantine agents among the learners."""
        roles = self.roles
        if roles is None or not roles.servers:
            return self
        if self.mode == "server":
            raise ValueError("roles: works in mode = 'gossip' only (mode = 'server' has its own server, node 0); "
                             "remove [roles] or set mode = 'gossip'")
        if self.network is not None and self.network.protocol != "sync":
            raise ValueError(f"roles: servers need synchronous rounds; network.protocol = "
                             f"{self.network.protocol!r} is not allowed with [roles] (allowed: 'sync')")
        n = family_nodes(self.graph.family, self.graph.params)
        if n is None:
            return self
        roles.check_nodes(n)
        learners = n - len(roles.servers)
        for s in self.scenarios:
            key = f"scenarios.{s.name}.byzantine"
            if isinstance(s.byzantine, int) and s.byzantine >= learners:
                raise ValueError(f"{key} = {s.byzantine}: at most {learners - 1} of the {learners} learners may be "
                                 f"Byzantine (servers are trusted)")
            if isinstance(s.byzantine, list):
                bad = sorted(set(s.byzantine) & set(roles.servers))
                if bad:
                    raise ValueError(f"{key} = {s.byzantine}: {bad} are servers (roles.servers); servers are "
                                     f"trusted, allowed: learner ids")
                if len(s.byzantine) >= learners:
                    raise ValueError(f"{key}: every one of the {learners} learners is Byzantine; leave at least "
                                     f"one normal")
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


def format_validation_error(err: ValidationError, source: str, data: Optional[dict] = None) -> str:
    """One line per problem: ``key = value: what is allowed``."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        loc = ".".join(parts)
        msg = plain(e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _allowed_hint(e["loc"], data)
            lines.append(f"  {loc}: {msg}")
            continue
        given = e.get("input")
        given_txt = "" if isinstance(given, dict) else f" = {given!r}"
        if not loc or msg.startswith(f"{loc}.") or msg.startswith(f"{loc} ="):
            lines.append(f"  {msg}")  # the message already names the full key
            continue
        lines.append(f"  {loc}{given_txt}: {msg}")
    return "\n".join(lines)


def _allowed_hint(loc: tuple, data: Optional[dict] = None) -> str:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if model is ExperimentConfig and part == "task":
            task = (data or {}).get("task")
            name = task.get("name", DEFAULT_TASK) if isinstance(task, dict) else DEFAULT_TASK
            try:
                model = task_config_model(name)
            except ValueError:
                return ""
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


def prepare_plugins(data: dict, base: Optional[Path], extra: Iterable[str] = (), key: str = "plugins") -> list[str]:
    """Import the plugins a file names (``data[key]``, paths relative to ``base``) and the
    ``extra`` ones (``--plugin``, paths relative to the current folder), then store them in
    ``data[key]`` as absolute specs (what worker processes import). A plugin that cannot be
    imported is a :class:`ConfigError` naming it."""
    from .plugins import PluginError, load_plugins, resolve_spec

    own = data.get(key, [])
    if isinstance(own, str):
        own = [own]
    if not isinstance(own, list) or not all(isinstance(s, str) for s in own):
        raise ConfigError(f"{key} = {own!r}: expected a list of module names or .py paths")
    try:
        specs = [resolve_spec(s) for s in extra] + [resolve_spec(s, base) for s in own]
        specs = list(dict.fromkeys(specs))
        load_plugins(specs)
    except PluginError as e:
        raise ConfigError(f"{key}: {e}") from None
    data[key] = specs
    return specs


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Iterable[str] = (),
    data: Optional[dict] = None,
    plugins: Iterable[str] = (),
) -> ExperimentConfig:
    """Read, override and validate a config; raise :class:`ConfigError` on any problem.
    ``plugins`` (and the config's own ``plugins`` key) are imported first."""
    import copy

    source = str(path) if path is not None else "<dict>"
    data = read_toml(path) if data is None else copy.deepcopy(data)
    for o in overrides:
        apply_override(data, o)
    prepare_plugins(data, Path(path).resolve().parent if path is not None else None, plugins)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, data)) from None


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
