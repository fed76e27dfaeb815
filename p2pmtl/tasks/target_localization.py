"""Target localization (Li2020 sec. 7; numbers from the authors' reference code, SPEC sec. 2).

Agent k at x_k estimates its group's target w_k from streaming data: a noisy unit direction
u = (w_k - x_k)/||w_k - x_k|| + N(0, s_u^2 I) and a noisy distance d = u^T (w_k - x_k) + N(0, s_d^2).
Loss l(w; u, d) = (d - u^T (w - x_k))^2.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..core.ops import rowdot
from .base import TASKS, StackedPopulation
from pydantic import Field, field_validator
from typing import Literal
from ..validation import MAX_COORDINATE, Coordinate, Magnitude, Strict, ordered_pair


class TargetLocalizationConfig(Strict):
    """Li2020 sec. 7 target localization (see SPEC section 2)."""

    name: Literal["target_localization"] = Field("target_localization", description="the task (this table's settings)")
    targets: list[tuple[Coordinate, Coordinate]] = Field(
        [(10, 10), (10, 20), (20, 10), (20, 20)], description="target positions, one task each (|x| <= 1e6)")
    target_jitter: Magnitude = Field(1.0, description="each target shifted by U[0, jitter]")
    adapt: Literal["pseudo_observation", "lms"] = Field(
        "pseudo_observation", description="local step: pseudo_observation psi = theta + mu (q - theta) (reference "
                                           "code) or lms psi = theta + mu u (d - u^T (theta - x))")
    mu: float = Field(0.1, gt=0, le=2, description="step size of the local adaptation step")
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
        return ordered_pair("task.init_range", v)

NOISE_CHUNK = 32  # steps of noise drawn at once per run (fixed: part of what a seed means)


class AgentSetup:
    """One run's fixed quantities, drawn from its own seed (independent of batching)."""

    def __init__(self, cfg: TargetLocalizationConfig, n: int, pos: np.ndarray | None, rng: np.random.Generator):
        ntar = len(cfg.targets)
        base = np.asarray(cfg.targets, dtype=np.float64)
        self.targets = base + cfg.target_jitter * rng.random(base.shape)
        self.group = np.minimum(np.arange(n) * ntar // n, ntar - 1)  # contiguous equal blocks
        self.pos = pos if pos is not None else rng.uniform(0.0, cfg.box, size=(n, 2))
        self.s_u = cfg.noise_u[0] + cfg.noise_u[1] * rng.random(n)
        noisy = rng.choice(n, size=min(cfg.noisy_agents, n), replace=False)
        self.s_u[noisy] = cfg.noisy_u_std
        self.s_d = cfg.noise_d[0] + cfg.noise_d[1] * rng.random(n)
        lo, hi = cfg.init_range
        self.theta0 = rng.uniform(lo, hi, size=(n, 2))


@TASKS.register("target_localization", "Li2020 linear regression: 4 targets, streaming range/bearing data",
                config=TargetLocalizationConfig)
class TargetLocalization(StackedPopulation):
    """All agents of R runs (the world, N0 nodes) in M lanes. Data tensors are world-level
    ``[N0, ...]`` and broadcast over lanes through the ``[M, N0, D]`` view of the models."""

    metric_names = ("loss", "msd")
    default_dtype = torch.float64

    @staticmethod
    def make_setup(cfg: TargetLocalizationConfig, graph, rng: np.random.Generator) -> AgentSetup:
        from ..graphs.families import positions

        return AgentSetup(cfg, graph.number_of_nodes(), positions(graph), rng)

    @classmethod
    def for_world(cls, cfg, world, lanes: int, dtype: torch.dtype) -> "TargetLocalization":
        return cls(cfg.task, world.setups, [s["data"] for s in world.seeds], world.edges, dtype=dtype, lanes=lanes)

    def __init__(
        self,
        cfg: TargetLocalizationConfig,
        setups: list[AgentSetup],
        data_seeds: list[int],
        world_edges: EdgeIndex,
        dtype: torch.dtype = torch.float64,
        lanes: int = 1,
    ) -> None:
        self.cfg, self.dtype, self.mu = cfg, dtype, cfg.mu
        self.world_edges = world_edges
        self.runs, self.lanes = len(setups), lanes
        self.sizes = [s.pos.shape[0] for s in setups]
        self.world_nodes = n0 = sum(self.sizes)
        self.num_nodes = lanes * n0

        def cat(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.as_tensor(np.concatenate(arrays), dtype=dtype)

        self.x = cat([s.pos for s in setups])
        self.wstar = cat([s.targets[s.group] for s in setups])
        self.s_u = cat([s.s_u for s in setups]).unsqueeze(1)
        self.s_d = cat([s.s_d for s in setups])
        self.groups = np.concatenate([s.group for s in setups])
        self.group_names = [f"target {g}" for g in range(len(cfg.targets))]
        self.diff = self.wstar - self.x
        self.unit = self.diff / self.diff.norm(dim=1, keepdim=True)
        self.theta = cat([s.theta0 for s in setups]).repeat(lanes, 1)  # [M*N0, 2]
        self.generators = [torch.Generator().manual_seed(s) for s in data_seeds]
        self._chunk_start = None

    def _lanes(self, t: torch.Tensor) -> torch.Tensor:
        """``[M*N0, D]`` seen as ``[M, N0, D]`` so world data broadcasts over lanes."""
        return t.view(self.lanes, self.world_nodes, -1)

    def _draw_chunk(self) -> None:
        """Noise for NOISE_CHUNK steps; each run from its own generator, so a run's numbers do
        not depend on what it is batched with. Derived per-step data are computed here too."""
        eps = torch.cat([
            torch.randn((NOISE_CHUNK, n, 3), generator=g, dtype=self.dtype)
            for n, g in zip(self.sizes, self.generators)
        ], dim=1)  # [C, N0, 3]
        u = torch.addcmul(self.unit, self.s_u, eps[..., :2])  # u = unit + s_u eps
        d = torch.addcmul(rowdot(self.diff, u), self.s_d, eps[..., 2])  # d = u^T (w - x) + s_d eps
        self._u, self._d = u, d
        self._q = torch.addcmul(self.x, d.unsqueeze(-1), u)  # pseudo-observation x + d u
        self._c = d + rowdot(u, self.x)  # d + u^T x, so that l(w) = (c - u^T w)^2

    def sample(self, step: int, active=None) -> None:
        if self._chunk_start is None or step - self._chunk_start >= NOISE_CHUNK or step < self._chunk_start:
            self._draw_chunk()
            self._chunk_start = step
        i = step - self._chunk_start
        self.u, self.d, self.q, self.c = self._u[i], self._d[i], self._q[i], self._c[i]

    def adapt(self, active=None) -> torch.Tensor:
        """``pseudo_observation`` (reference code): psi = theta + mu (q - theta), q = x + d u.
        ``lms``: psi = theta + mu u (d - u^T (theta - x)) = theta + mu u (c - u^T theta), SGD on l/2."""
        theta = self._lanes(self.theta)
        if self.cfg.adapt == "pseudo_observation":
            psi = torch.lerp(theta, self.q, self.mu)
        else:
            err = self.c - rowdot(theta, self.u)
            psi = torch.addcmul(theta, err.unsqueeze(-1), self.u, value=self.mu)
        return self._hold(psi.view(self.num_nodes, -1), active)

    def gradients(self, active=None) -> torch.Tensor:
        """The gradient the local step follows, psi = theta - mu g: ``pseudo_observation``
        g = theta - q (the gradient of ||theta - q||^2 / 2); ``lms`` g = -u (c - u^T theta) (the
        gradient of l / 2). Rows of agents that are not ``active`` are zero."""
        theta = self._lanes(self.theta)
        if self.cfg.adapt == "pseudo_observation":
            g = theta - self.q
        else:
            g = -(self.c - rowdot(theta, self.u)).unsqueeze(-1) * self.u
        g = g.reshape(self.num_nodes, -1)
        if active is not None:
            g = torch.where(active.repeat(self.lanes).unsqueeze(1), g, 0.0)
        return g

    def edge_losses(self, msgs: Messages, lane: int) -> torch.Tensor:
        """(d_k - u_k^T (psi_l - x_k))^2 = (c_k - u_k^T psi_l)^2 for edge l -> k of one lane:
        l's model on k's current sample."""
        e = self.world_edges
        r = e.gather(self.c, "dst") - rowdot(e.gather(self.u, "dst"), msgs.per_edge()[msgs.lane_edges(lane)])
        return r * r

    def metrics(self) -> dict[str, torch.Tensor]:
        """loss: instantaneous loss after combining (Li2020 Fig. 1); msd: ||theta_k - w_k||^2."""
        theta = self._lanes(self.theta)
        r = self.c - rowdot(theta, self.u)
        err = theta - self.wstar
        return {"loss": (r * r).view(-1), "msd": rowdot(err, err).view(-1)}

    # -- for adaptive attacks (p2pmtl.robust.attacks) -------------------------------------------------
    def losses_of(self, values: torch.Tensor, receivers: torch.Tensor, lane: int = 0) -> torch.Tensor:
        """Loss of arbitrary models ``values [K, 2]`` on the current samples of world agents
        ``receivers [K]``: (c_k - u_k^T w)^2 (the same formula as ``edge_losses``)."""
        r = self.c[receivers] - rowdot(self.u[receivers], values)
        return r * r

    def loss_grads_of(self, values: torch.Tensor, receivers: torch.Tensor, lane: int = 0) -> torch.Tensor:
        """Gradient of ``losses_of`` with respect to the model: -2 (c_k - u_k^T w) u_k, ``[K, 2]``."""
        r = self.c[receivers] - rowdot(self.u[receivers], values)
        return -2.0 * r.unsqueeze(1) * self.u[receivers]
