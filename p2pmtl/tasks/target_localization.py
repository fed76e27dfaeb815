"""Target localization (Li2020 sec. 7; numbers from the authors' reference code, SPEC sec. 2).

Agent k at x_k estimates its group's target w_k from streaming data: a noisy unit direction
u = (w_k - x_k)/||w_k - x_k|| + N(0, s_u^2 I) and a noisy distance d = u^T (w_k - x_k) + N(0, s_d^2).
Loss l(w; u, d) = (d - u^T (w - x_k))^2.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import TargetLocalizationConfig
from ..edges import EdgeIndex
from ..ops import rowdot
from .base import TASKS, StackedPopulation


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


@TASKS.register("target_localization", "Li2020 linear regression: 4 targets, streaming range/bearing data")
class TargetLocalization(StackedPopulation):
    metric_names = ("loss", "msd")

    def __init__(
        self,
        cfg: TargetLocalizationConfig,
        setups: list[AgentSetup],
        data_seeds: list[int],
        dtype: torch.dtype = torch.float64,
        lanes: int = 1,
    ) -> None:
        """``setups``: one per run; ``lanes``: copies of the whole world that see identical data
        (one per weight rule, see :mod:`p2pmtl.engine`)."""
        self.cfg = cfg
        self.runs = len(setups)
        self.lanes = lanes
        self.sizes = [s.pos.shape[0] for s in setups]
        self.world_nodes = sum(self.sizes)
        self.dtype = dtype
        self.mu = cfg.mu

        def tiled(arrays: list[np.ndarray]) -> torch.Tensor:
            """Runs concatenated, then the world tiled once per lane: ``[M*N0, ...]``."""
            t = torch.as_tensor(np.concatenate(arrays), dtype=dtype)
            return t.repeat((lanes,) + (1,) * (t.dim() - 1))

        self.num_nodes = lanes * self.world_nodes
        self.x = tiled([s.pos for s in setups])
        self.wstar = tiled([s.targets[s.group] for s in setups])
        self.s_u = tiled([s.s_u for s in setups]).unsqueeze(1)
        self.s_d = tiled([s.s_d for s in setups])
        self.theta = tiled([s.theta0 for s in setups])
        self.groups = np.concatenate([s.group for s in setups])  # world-level [N0]
        self.diff = self.wstar - self.x
        self.unit = self.diff / self.diff.norm(dim=1, keepdim=True)
        self.generators = [torch.Generator().manual_seed(s) for s in data_seeds]
        self.u = torch.zeros_like(self.x)
        self.d = torch.zeros(self.num_nodes, dtype=dtype)

    def sample(self, step: int) -> None:
        """u = unit + s_u * eps_u, d = u^T (w - x) + s_d * eps_d; each run's noise from its own
        generator, so a run's numbers do not depend on what it is batched with."""
        if self.runs == 1:
            eps = torch.randn((self.world_nodes, 3), generator=self.generators[0], dtype=self.dtype)
        else:
            eps = torch.cat([
                torch.randn((n, 3), generator=g, dtype=self.dtype)
                for n, g in zip(self.sizes, self.generators)
            ])
        if self.lanes > 1:
            eps = torch.cat([eps] * self.lanes)
        self.u = torch.addcmul(self.unit, self.s_u, eps[:, :2])
        self.d = torch.addcmul(rowdot(self.diff, self.u), self.s_d, eps[:, 2])

    def adapt(self) -> torch.Tensor:
        """``pseudo_observation`` (reference code): psi = theta + mu (q - theta), q = x + d u.
        ``lms``: psi = theta + mu u (d - u^T (theta - x)), SGD on l/2."""
        if self.cfg.adapt == "pseudo_observation":
            q = torch.addcmul(self.x, self.d.unsqueeze(1), self.u)
            return torch.lerp(self.theta, q, self.mu)
        err = self.d - rowdot(self.u, self.theta - self.x)
        return torch.addcmul(self.theta, err.unsqueeze(1), self.u, value=self.mu)

    def edge_losses(self, messages: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """(d_k - u_k^T (psi_l - x_k))^2 for edge l -> k: l's model on k's current sample."""
        c = self.d + rowdot(self.u, self.x)  # d_k + u_k^T x_k, once per receiver
        r = edges.gather(c, "dst") - rowdot(edges.gather(self.u, "dst"), messages)
        return r * r

    def metrics(self) -> dict[str, torch.Tensor]:
        """loss: instantaneous loss after combining (Li2020 Fig. 1); msd: ||theta_k - w_k||^2."""
        r = self.d - rowdot(self.u, self.theta - self.x)
        loss = r * r
        err = self.theta - self.wstar
        msd = rowdot(err, err)
        return {"loss": loss, "msd": msd}
