"""The interface between the gossip engine and a task's agents (a *population*).

Layout: a world is R runs of n agents flattened to N0 = R*n nodes; the population holds M
lanes of that world (one per weight rule) folded into the node axis, so node ``j*N0 + i`` is
world node i in lane j, model tensors are ``[M*N0, D]`` and per-edge tensors ``[M*E0, ...]``
over the lanes' disjoint-union edge list. Every op is then a plain 2-D op along dim 0: on this
CPU, broadcasting world data over a lane axis, or gathering and summing along dim 1, cost 2-8x
more. Data is drawn once per world and tiled over lanes, so every lane sees identical data.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ..edges import EdgeIndex
from ..ops import rowdot
from ..registry import Registry

TASKS: Registry[type["Population"]] = Registry("task")


class Population(ABC):
    lanes: int
    world_nodes: int
    runs: int
    groups: np.ndarray  # [N0] task group of each node (what the agents do not know)
    metric_names: tuple[str, ...]
    dtype: torch.dtype

    @abstractmethod
    def sample(self, step: int) -> None:
        """Draw every agent's data xi_k for this iteration (once per world)."""

    @abstractmethod
    def adapt(self) -> torch.Tensor:
        """Local step psi_k = theta_k - mu grad l(theta_k; xi_k) (Li2020 eq. 2); ``[M*N0, D]``."""

    @abstractmethod
    def edge_losses(self, messages: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """l(message_e; xi_dst(e)): the sender's model on the receiver's data; ``[M*E0]``."""

    @abstractmethod
    def edge_sq_dists(self, messages: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """||theta_dst(e),i-1 - message_e||^2 (Li2020 eq. 4); ``[M*E0]``."""

    @abstractmethod
    def set_models(self, theta: torch.Tensor) -> None:
        """Install the combined models theta_k = sum_l a_lk psi_l (Li2020 eq. 3)."""

    @abstractmethod
    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-node metrics after combining, each ``[M*N0]``."""

    @property
    @abstractmethod
    def message_bytes(self) -> int:
        """Bytes of one model message."""


class StackedPopulation(Population):
    """Linear models: every agent's parameters as one row of ``theta [M*N0, D]``."""

    theta: torch.Tensor

    def edge_sq_dists(self, messages, edges):
        diff = edges.gather(self.theta, "dst") - messages
        return rowdot(diff, diff)

    def set_models(self, theta):
        self.theta = theta

    @property
    def message_bytes(self) -> int:
        return self.theta.shape[-1] * self.theta.element_size()
