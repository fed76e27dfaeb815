"""Optimizers for stacked linear populations: one row of ``theta [R, D]`` per agent, updated
in one vectorized call; rows not selected by ``mask`` (agents skipping their step) keep their
parameters and optimizer state. Same maths as ``torch.optim`` (checked by the tests)."""
from __future__ import annotations

from typing import Optional

import torch


class StackedAdam:
    """Adam (Kingma and Ba 2015) per row, with a step count per row:
    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, rows: int, dim: int, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, dtype: torch.dtype = torch.float32) -> None:
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = torch.zeros(rows, dim, dtype=dtype)
        self.v = torch.zeros(rows, dim, dtype=dtype)
        self.t = torch.zeros(rows, 1, dtype=dtype)

    def step(self, theta: torch.Tensor, grad: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns the updated parameters (a new tensor); ``mask [R]`` selects the rows that step."""
        sel = torch.ones(theta.shape[0], 1, dtype=torch.bool) if mask is None else mask.unsqueeze(1)
        self.t = self.t + sel
        self.m = torch.where(sel, torch.lerp(self.m, grad, 1 - self.b1), self.m)
        self.v = torch.where(sel, torch.lerp(self.v, grad * grad, 1 - self.b2), self.v)
        t = self.t.clamp_min(1)
        m_hat = self.m / (1 - self.b1 ** t)
        denom = (self.v / (1 - self.b2 ** t)).sqrt() + self.eps
        return torch.where(sel, theta - self.lr * m_hat / denom, theta)


class StackedSGD:
    """theta <- theta - lr g (optionally with momentum buffer b <- mu b + g), per row."""

    def __init__(self, rows: int, dim: int, lr: float, momentum: float = 0.0, dtype: torch.dtype = torch.float32):
        self.lr, self.mu = lr, momentum
        self.buf = torch.zeros(rows, dim, dtype=dtype)

    def step(self, theta: torch.Tensor, grad: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        sel = torch.ones(theta.shape[0], 1, dtype=torch.bool) if mask is None else mask.unsqueeze(1)
        if self.mu:
            self.buf = torch.where(sel, self.mu * self.buf + grad, self.buf)
            grad = self.buf
        return torch.where(sel, theta - self.lr * grad, theta)


def make_stacked_optimizer(name: str, rows: int, dim: int, lr: float, momentum: float, dtype: torch.dtype):
    if name == "adam":
        return StackedAdam(rows, dim, lr=lr, dtype=dtype)
    if name in ("sgd", "momentum"):
        return StackedSGD(rows, dim, lr, momentum if name == "momentum" else 0.0, dtype)
    raise ValueError(f"optimizer = {name!r}; allowed: 'adam', 'sgd', 'momentum'")
