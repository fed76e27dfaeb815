"""The interface between the gossip engine and a task's agents (a *population*).

Layout: a world is R runs of n agents flattened to N0 = R*n nodes; the population holds M
lanes of that world (one per weight rule) folded into the node axis, so node ``j*N0 + i`` is
world node i in lane j and model tensors are ``[M*N0, D]``: gathers and segment sums are plain
ops along dim 0 (along dim 1 they cost 2-8x more on this CPU). Data is drawn once per world
``[N0, ...]`` and broadcast over the outer axis of the ``[M, N0, D]`` view, so every lane sees
identical data at no copying cost. Edge statistics are asked per lane, on that lane's slice
of the messages, with the world's edge list.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import numpy as np
import torch

from ..core.edges import EdgeIndex
from ..core.messages import Messages
from ..core.ops import per_lane, rowdot
from ..registry import Registry

TASKS: Registry[type["Population"]] = Registry("task")


class Population(ABC):
    """Every agent of a task, in every run and lane: what the gossip engine drives.

    A task is a subclass registered with ``p2pmtl.register_task(name, description,
    config=ConfigModel)``. The engine calls, each round: :meth:`sample` (draw data),
    :meth:`adapt` (local step, returns what each node sends), the statistic a rule needs
    (:meth:`edge_losses` or :meth:`edge_sq_dists`), :meth:`combine` (eq. 3 with the rule's
    weights), then :meth:`metrics`. Besides the abstract methods a task provides:

    - ``make_setup(task_cfg, graph, rng)`` (static): one run's fixed quantities (data split,
      targets, ...) with at least ``.group`` ([n] task group per agent), drawn from ``rng`` only;
    - ``for_world(cfg, world, lanes, dtype)`` (class method): the population of a world
      (:class:`p2pmtl.engine.world.World`: ``world.setups`` from ``make_setup``, ``world.edges``,
      ``world.seeds`` with a ``"data"`` seed per run) in ``lanes`` lanes;
    - ``default_dtype`` and ``metric_names`` (class attributes; metrics named ``loss`` and
      ``msd``, or ``test_loss`` and ``test_acc``, get the usual figures and tables);
    - ``autograd`` (class attribute, default True): False declares that the task's steps need
      no autograd (closed-form gradients), so its gossip runs go under
      ``torch.inference_mode()`` (about a quarter less per-call overhead for small models);
    - the attributes below, and ``theta`` ``[lanes * world_nodes, D]`` for linear tasks
      (:class:`StackedPopulation` implements combine and the distance statistic on it).
    """

    lanes: int
    world_nodes: int
    runs: int
    groups: np.ndarray  # [N0] task group of each node (what the agents do not know)
    group_names: list[str]  # name of each group id, for figures
    metric_names: tuple[str, ...]
    dtype: torch.dtype
    default_dtype: torch.dtype = torch.float32
    autograd: bool = True  # False: closed-form steps, runs under torch.inference_mode()

    @staticmethod
    def make_setup(cfg, graph, rng: np.random.Generator):
        """One run's fixed quantities (at least ``.group``), from ``rng`` only."""
        raise NotImplementedError

    @classmethod
    def for_world(cls, cfg, world, lanes: int, dtype: torch.dtype) -> "Population":
        """The population of ``world`` in ``lanes`` lanes (``cfg`` is the experiment config;
        the task's own settings are ``cfg.task``)."""
        raise NotImplementedError

    @abstractmethod
    def sample(self, step: int, active: Optional[torch.Tensor] = None) -> None:
        """Draw every agent's data xi_k for this iteration (once per world). Populations may
        skip agents that are not ``active`` (their data is not used this time)."""

    @abstractmethod
    def adapt(self, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Local step psi_k = theta_k - mu grad l(theta_k; xi_k) (Li2020 eq. 2); ``[M*N0, D]``.
        ``active`` ([N0] bool, world level; None: all): agents that take a step this time; the
        rows of the others are their current models, and their optimizer state stays as it is."""

    @abstractmethod
    def edge_losses(self, msgs: Messages, lane: int) -> torch.Tensor:
        """l(message_e; xi_dst(e)): the sender's model on the receiver's current data, for
        every edge of ``lane`` (world order); ``[E0]``."""

    @abstractmethod
    def edge_sq_dists(self, msgs: Messages, lane: int) -> torch.Tensor:
        """||theta_dst(e),i-1 - message_e||^2 (Li2020 eq. 4) for every edge of ``lane``; ``[E0]``."""

    @abstractmethod
    def combine(self, msgs: Messages, weights: torch.Tensor) -> None:
        """theta_k = sum_l a_lk message_lk (Li2020 eq. 3) for every node of every lane."""

    @abstractmethod
    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-node metrics after combining, each ``[M*N0]``. A metric may be left out of some
        records (e.g. a costly test accuracy every tenth step): curves, rows and the summary
        then follow its own steps."""

    @property
    @abstractmethod
    def message_bytes(self) -> int:
        """Bytes of one model message."""

    def gradients(self, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Minibatch gradients g_k = grad l(theta_k; xi_k) at the current models, on the data
        drawn by the last :meth:`sample`; ``[M*N0, D]`` (rows of agents that are not ``active``
        are zero). Optional: server-mode distributed SGD (``dsgd`` methods, RESAM) needs it;
        linear tasks implement it in closed form."""
        raise NotImplementedError(f"task {type(self).__name__} has no gradients(): dsgd methods need it")

    def set_lane_models(self, lane: int, rows: torch.Tensor) -> None:
        """Replace lane ``lane``'s models (the gossiped columns, ``[N0, D]``) after
        :meth:`combine`: how a combine step other than the weighted average writes its result.
        Populations that keep models elsewhere than ``theta`` override it."""
        n0 = self.world_nodes
        theta = self.theta.clone()
        theta[lane * n0:(lane + 1) * n0, : rows.shape[1]] = rows.to(theta.dtype)
        self.theta = theta


class StackedPopulation(Population):
    """Linear models: every agent's parameters as one row of ``theta [M*N0, D]``."""

    theta: torch.Tensor

    world_edges: EdgeIndex

    def hold(self, psi: torch.Tensor, active: Optional[torch.Tensor]) -> torch.Tensor:
        """psi for active agents, theta for the others (``psi`` ``[M*N0, D]``; ``active``
        ``[N0]`` bool or None for all): what :meth:`adapt` returns when some agents skip."""
        if active is None:
            return psi
        return torch.where(per_lane(active, self.lanes).unsqueeze(1), psi, self.theta)

    _hold = hold

    def edge_sq_dists(self, msgs, lane):
        n0 = self.world_nodes
        theta_lane = self.theta[lane * n0:(lane + 1) * n0]  # before this round's combination
        diff = self.world_edges.gather(theta_lane, "dst") - msgs.per_edge()[msgs.lane_edges(lane)]
        return rowdot(diff, diff)

    def combine(self, msgs, weights):
        self.theta = msgs.edges.segment_sum(weights.unsqueeze(1) * msgs.per_edge())

    @property
    def message_bytes(self) -> int:
        return self.theta.shape[-1] * self.theta.element_size()
