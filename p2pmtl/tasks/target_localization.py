"""Target localization (Li2020 sec. 7; numbers from the authors' reference code, SPEC sec. 2).

Agent k at x_k estimates its group's target w_k from streaming data: a noisy unit direction
u = (w_k - x_k)/||w_k - x_k|| + N(0, s_u^2 I) and a noisy distance d = u^T (w_k - x_k) + N(0, s_d^2).
Loss l(w; u, d) = (d - u^T (w - x_k))^2.

Memory: the streaming data, the local steps, the per-edge scratch and the models (two tensors
in turn) live in tensors kept from step to step, and the noise is drawn lazily
(:class:`NoiseStream`), so a round allocates nothing of the size of the world.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..core.ops import Workspace, gather_rows, per_lane, rowdot, rowdot_into, segment_sum_into
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

NOISE_CHUNK = 32  # steps of noise per draw of a run's generator (fixed: part of what a seed means)
DATA_BLOCK_BYTES = 4 << 20  # bytes of streaming data derived at once, a block of steps (see sample)


COMPILED_NOISE_MIN_AGENTS = 10_000
"""Runs of at least this many agents draw float64 noise with the Box-Muller transform on the
run's threads (:func:`p2pmtl.kernels.normal_draws.normal_fill_`, numba installed): torch's
numbers exactly; smaller runs call torch's ``normal_`` (and do not import numba)."""


def _normal_fill(n: int, dtype: torch.dtype):
    """The fill a :class:`NoiseStream` of ``n`` agents uses: ``fill(t, g)`` as ``t.normal_(generator=g)``."""
    from ..kernels import numba_available

    if dtype == torch.float64 and n >= COMPILED_NOISE_MIN_AGENTS and numba_available():
        from ..kernels.normal_draws import normal_fill_

        return normal_fill_
    return lambda t, g: t.normal_(generator=g)


def _ceil16(k: int) -> int:
    return -(-k // 16) * 16


class NoiseStream:
    """One run's noise: the numbers of ``torch.randn((NOISE_CHUNK, n, 3), generator=g)``,
    chunk after chunk, with ``steps(i, j)`` giving steps i .. j-1 of the current chunk
    (``[j - i, n, 3]``, at most ``block`` steps), drawn lazily into a rolling tensor of
    ``3 n block + 32`` elements instead of a whole chunk at once.

    Why the numbers are the same: for a contiguous tensor torch's ``normal_`` draws one uniform
    per element, in order, then applies Box-Muller within each block of 16 elements, and a chunk
    has 96 n elements (a multiple of 16). Drawing the chunk as consecutive pieces whose bounds
    are multiples of 16 therefore consumes the generator identically and transforms the same
    blocks. A chunk left early is drawn to its end (:meth:`new_chunk`), as the whole-chunk draw
    did; going back within a chunk replays it from the generator state at its start. From
    :data:`COMPILED_NOISE_MIN_AGENTS` agents (float64) the pieces are drawn by
    :func:`~p2pmtl.kernels.normal_draws.normal_fill_`: the same numbers, the transform on the
    run's threads."""

    def __init__(self, n: int, generator: torch.Generator, dtype: torch.dtype, block: int = 1) -> None:
        self.n, self.g = n, generator
        self.size = NOISE_CHUNK * n * 3  # elements of one chunk (a multiple of 16)
        self.buf = torch.empty(3 * n * block + 32, dtype=dtype)
        self.start_state: torch.Tensor | None = None
        self.lo = self.pos = 0  # buf holds chunk elements [lo, pos); pos = elements drawn
        self._fill = _normal_fill(n, dtype)

    def new_chunk(self) -> None:
        """Finish the current chunk (if any) and start the next one."""
        if self.start_state is not None:
            self._skip_to(self.size)
        self.start_state = self.g.get_state()
        self.lo = self.pos = 0

    def _skip_to(self, k: int) -> None:
        """Draw (and drop) chunk elements [pos, k), k a multiple of 16, in pieces that fit buf."""
        piece = self.buf.numel() // 16 * 16
        while self.pos < k:
            m = min(piece, k - self.pos)
            self._fill(self.buf[:m], self.g)
            self.pos += m
        self.lo = self.pos

    def steps(self, i: int, j: int) -> torch.Tensor:
        """Noise of steps i .. j-1 of the current chunk, ``[j - i, n, 3]``: a view valid until
        the next call."""
        need_lo, need_hi = 3 * self.n * i, 3 * self.n * j
        if need_lo < self.lo:  # back within the chunk: replay it from its start
            self.g.set_state(self.start_state)
            self.lo = self.pos = 0
        lo = need_lo - need_lo % 16
        if lo >= self.pos:
            self._skip_to(lo)
        elif lo > self.lo:  # keep the drawn elements [lo, pos), moved to the front
            self.buf[:self.pos - lo] = self.buf[lo - self.lo:self.pos - self.lo].clone()
            self.lo = lo
        hi = min(self.size, _ceil16(need_hi))
        if hi > self.pos:
            self._fill(self.buf[self.pos - self.lo:hi - self.lo], self.g)
            self.pos = hi
        return self.buf[need_lo - self.lo:need_hi - self.lo].view(j - i, self.n, 3)


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
    autograd = False  # closed-form LMS / pseudo-observation steps

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
        # steps of data derived at once: up to a chunk for small worlds (few ops per step), one
        # step for large ones (no temporaries beyond [N0, 3]); 11 values per agent and step
        per_step = 11 * n0 * torch.finfo(dtype).bits // 8
        self._block = max(1, min(NOISE_CHUNK, DATA_BLOCK_BYTES // per_step))
        self._noise = [NoiseStream(n, g, dtype, self._block) for n, g in zip(self.sizes, self.generators)]
        self._chunk_start = None
        self._derived = (0, 0)  # steps [i, j) of the current chunk whose data is derived
        self._ws = Workspace()

    def _lanes(self, t: torch.Tensor) -> torch.Tensor:
        """``[M*N0, D]`` seen as ``[M, N0, D]`` so world data broadcasts over lanes."""
        return t.view(self.lanes, self.world_nodes, -1)

    def sample(self, step: int, active=None) -> None:
        """This step's data: ``u [N0, 2]``, ``d [N0]``, the pseudo-observation ``q [N0, 2]`` and
        ``c [N0]`` (see :meth:`_derive`), views of tensors rewritten by later calls (clone to
        keep them). Noise comes in chunks of NOISE_CHUNK steps per run (a chunk starts at the
        first step, NOISE_CHUNK steps later, or at an earlier step than its start), each run
        from its own generator, so a run's numbers do not depend on what it is batched with.
        Data is derived for a block of steps at once, as many as fit in DATA_BLOCK_BYTES."""
        if self._chunk_start is None or step - self._chunk_start >= NOISE_CHUNK or step < self._chunk_start:
            for stream in self._noise:
                stream.new_chunk()
            self._chunk_start, self._derived = step, (0, 0)
        i = step - self._chunk_start
        lo, hi = self._derived
        if not lo <= i < hi:
            lo, hi = i, min(NOISE_CHUNK, i + self._block)
            if self.runs == 1:
                eps = self._noise[0].steps(lo, hi)
            else:
                out = self._ws.get("eps", (self._block, self.world_nodes, 3), self.dtype)[:hi - lo]
                eps = torch.cat([stream.steps(lo, hi) for stream in self._noise], dim=1, out=out)
            self._derive(eps)
            self._derived = (lo, hi)
        j = i - lo
        self.u, self.d, self.q, self.c = self._u[j], self._d[j], self._q[j], self._c[j]

    def _derive(self, eps: torch.Tensor) -> None:
        """The streaming data of ``k`` steps from their noise ``eps [k, N0, 3]``, each into its
        own kept tensor: u = unit + s_u eps, d = u^T (w - x) + s_d eps', q = x + d u,
        c = d + u^T x (so that l(w) = (c - u^T w)^2)."""
        ws, k, dt = self._ws, eps.shape[0], self.dtype
        kept = lambda name, *dims: ws.get(name, (self._block, self.world_nodes, *dims), dt)[:k]  # noqa: E731
        u = torch.addcmul(self.unit, self.s_u, eps[..., :2], out=kept("u", 2))
        d = rowdot_into(self.diff, u, out=kept("d"), scratch=kept("q", 2))
        d = torch.addcmul(d, self.s_d, eps[..., 2], out=d)
        self._q = torch.addcmul(self.x, d.unsqueeze(-1), u, out=kept("q", 2))
        self._c = rowdot_into(u, self.x, out=kept("c"), scratch=kept("ux", 2)).add_(d)
        self._u, self._d = u, d

    def adapt(self, active=None) -> torch.Tensor:
        """``pseudo_observation`` (reference code): psi = theta + mu (q - theta), q = x + d u.
        ``lms``: psi = theta + mu u (d - u^T (theta - x)) = theta + mu u (c - u^T theta), SGD on l/2.
        Without ``active``, psi is written into a tensor rewritten every step."""
        theta = self._lanes(self.theta)
        ws, shape = self._ws, self.theta.shape
        psi = ws.get("psi", shape, self.dtype) if active is None else torch.empty(shape, dtype=self.dtype)
        psi3 = self._lanes(psi)
        if self.cfg.adapt == "pseudo_observation":
            torch.lerp(theta, self.q, self.mu, out=psi3)
        else:
            err = rowdot_into(theta, self.u, out=ws.get("err", (self.lanes, self.world_nodes), self.dtype),
                              scratch=psi3)  # u^T theta, then c - u^T theta in place
            torch.sub(self.c, err, out=err)
            torch.addcmul(theta, err.unsqueeze(-1), self.u, value=self.mu, out=psi3)
        return self._hold(psi, active)

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
            g = torch.where(per_lane(active, self.lanes).unsqueeze(1), g, 0.0)
        return g

    def edge_losses(self, msgs: Messages, lane: int) -> torch.Tensor:
        """(d_k - u_k^T (psi_l - x_k))^2 = (c_k - u_k^T psi_l)^2 for edge l -> k of one lane:
        l's model on k's current sample. Written into a tensor of that lane rewritten every step."""
        e, ws, dt = self.world_edges, self._ws, self.dtype
        e0 = e.num_edges
        u_dst = gather_rows(self.u, e.dst, out=self._edge_rows(msgs)[:e0])
        r = rowdot_into(u_dst, msgs.per_edge()[msgs.lane_edges(lane)], out=ws.get(("loss", lane), (e0,), dt),
                        scratch=u_dst)
        r = torch.sub(torch.index_select(self.c, 0, e.dst, out=ws.get("c_dst", (e0,), dt)), r, out=r)
        return r.mul_(r)

    def combine(self, msgs: Messages, weights: torch.Tensor) -> None:
        """theta_k = sum_l a_lk psi_l (Li2020 eq. 3), the weighted messages in kept scratch and
        the new ``theta`` in the one of two kept tensors that is not the current ``theta`` (so a
        ``theta`` stays as it was for one more step; clone it to keep it longer)."""
        weighted = torch.mul(weights.unsqueeze(1), msgs.per_edge(), out=self._edge_rows(msgs))
        self.theta = segment_sum_into(weighted, msgs.edges.offsets, out=self.next_theta())

    def next_theta(self) -> torch.Tensor:
        """The kept ``[M*N0, 2]`` tensor the next combination writes: the one of two that is not
        the current ``theta``."""
        new = self._ws.get("theta", self.theta.shape, self.dtype)
        if new is self.theta:
            new = self._ws.get("theta'", self.theta.shape, self.dtype)
        return new

    def loss_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's samples as ``(u [N0, 2], c [N0])`` with agent k's loss
        ``l_k(w) = (c_k - u_k^T w)^2``: what the compiled round
        (:mod:`p2pmtl.kernels.fused_round`) needs to score every edge itself."""
        return self.u, self.c

    def _edge_rows(self, msgs: Messages) -> torch.Tensor:
        """Scratch ``[M*E0, 2]`` (edge_losses uses a lane's share of it, combine all of it)."""
        return self._ws.get("edge_rows", (msgs.edges.num_edges, self.theta.shape[1]), self.dtype)

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
