"""Distributed momentum for server-mode distributed SGD (``dsgd`` methods; RESAM, Farhadkhani,
Guerraoui, Gupta, Pinot and Stephan, ICML 2022, Algorithm 1).

Each round the server holds theta_t and every picked worker i computes a minibatch gradient
g_t^i at theta_t. Where the momentum sits is the method's *placement*:

- ``worker`` (RESAM): worker i updates m_t^i = beta m_{t-1}^i + (1 - beta) g_t^i (m_0^i = 0)
  and sends m_t^i; the server steps theta_{t+1} = theta_t - gamma F(m_t^1, ..., m_t^n);
- ``server``: workers send g_t^i; the server keeps one momentum on the aggregate,
  M_t = beta M_{t-1} + (1 - beta) F(g_t^1, ..., g_t^n), and steps theta_t - gamma M_t;
- ``none``: workers send g_t^i and theta_{t+1} = theta_t - gamma F(g_t^1, ..., g_t^n).

F is any aggregator (after any pre-aggregation steps); Byzantine workers keep an honest
momentum (so that data-poisoning attacks act through it) and send what their attack makes of
their upload. A worker that is not picked in a round keeps its momentum unchanged.

Method names: ``dsgd+AGG`` takes the placement and beta from ``server.momentum`` and
``server.beta``; ``dsgd-worker0.9+AGG``, ``dsgd-server0.99+AGG`` and ``dsgd-none+AGG`` fix them
in the name, so one config compares placements and betas (see :func:`parse_dsgd`).
"""
from __future__ import annotations

import torch

from .config import PLACEMENTS, parse_dsgd  # noqa: F401  (parse_dsgd: the method-name grammar)


class DistributedMomentum:
    """The momentum state of one dsgd method: worker momenta ``[n, D]`` (placement ``worker``)
    or one server momentum ``[D]`` (placement ``server``).

    Worked example (beta = 0.5, one worker, gradients 2 then 4, gamma = 1, theta_0 = 0):
    worker placement sends m_1 = 1 then m_2 = 0.5 * 1 + 0.5 * 4 = 2.5, so theta_2 = -3.5;
    server placement receives 2 and 4 and steps with M_1 = 1, M_2 = 2.5: the same theta_2 with
    one worker (placements differ once the aggregator is not the identity)."""

    def __init__(self, placement: str, beta: float, n: int, dim: int, dtype: torch.dtype) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"momentum placement {placement!r}; allowed: {', '.join(PLACEMENTS)}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum beta = {beta!r}; allowed: a real in [0, 1)")
        self.placement, self.beta = placement, float(beta)
        self.worker = torch.zeros((n, dim), dtype=dtype) if placement == "worker" else None
        self.server = torch.zeros(dim, dtype=dtype) if placement == "server" else None

    def uploads(self, rows: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """What workers ``rows`` send, given their gradients ``[len(rows), D]``: their updated
        momenta (worker placement) or the gradients."""
        if self.worker is None:
            return grads
        m = torch.lerp(grads.to(self.worker.dtype), self.worker[rows], self.beta)  # beta m + (1 - beta) g
        self.worker[rows] = m
        return m.clone()

    def step(self, theta: torch.Tensor, aggregate: torch.Tensor, lr: float) -> torch.Tensor:
        """theta - gamma R (worker / none) or theta - gamma M with M the server momentum."""
        if self.server is not None:
            self.server = torch.lerp(aggregate.to(self.server.dtype), self.server, self.beta)
            aggregate = self.server
        return theta - lr * aggregate.to(theta.dtype)
