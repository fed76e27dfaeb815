"""Optimizers over the rows of a stacked parameter tensor ``theta [R, P]``: one step updates the
rows ``ids [k]`` in place from their gradients ``[k, P]``, each row with its own state (its own
step count, so agents that skip a step keep their bias corrections). The maths of
``torch.optim.Adam`` and ``torch.optim.SGD`` (single-tensor path), row by row; checked against
them in tests/test_batched_bank.py.
"""
from __future__ import annotations

import torch


class RowAdam:
    """Adam (Kingma and Ba 2015), torch.optim.Adam's update per row:
    m <- lerp(m, g, 1-b1); v <- b2 v + (1-b2) g^2; theta <- theta - (lr / (1-b1^t)) m /
    (sqrt(v) / sqrt(1-b2^t) + eps)."""

    def __init__(self, rows: int, dim: int, lr: float, dtype: torch.dtype, device: torch.device,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = torch.zeros(rows, dim, dtype=dtype, device=device)
        self.v = torch.zeros(rows, dim, dtype=dtype, device=device)
        self.t = torch.zeros(rows, dtype=torch.float64, device=device)

    def step(self, theta: torch.Tensor, ids: torch.Tensor, g: torch.Tensor) -> None:
        t = self.t[ids] + 1
        self.t[ids] = t
        m = self.m[ids].lerp_(g, 1 - self.b1)
        v = self.v[ids].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        self.m[ids], self.v[ids] = m, v
        step_size = (self.lr / (1 - self.b1 ** t)).to(theta.dtype).unsqueeze(1)
        bc2_sqrt = (1 - self.b2 ** t).sqrt().to(theta.dtype).unsqueeze(1)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        theta[ids] = theta[ids] - step_size * (m / denom)


class RowSGD:
    """theta <- theta - lr g, or with momentum (dampening 0, torch.optim.SGD): b <- g at a
    row's first step, then b <- mu b + g; theta <- theta - lr b."""

    def __init__(self, rows: int, dim: int, lr: float, momentum: float, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.lr, self.mu = lr, momentum
        self.buf = torch.zeros(rows, dim, dtype=dtype, device=device) if momentum else None

    def step(self, theta: torch.Tensor, ids: torch.Tensor, g: torch.Tensor) -> None:
        if self.buf is not None:
            # b = mu * 0 + g at the first step: the same as torch's b = g
            b = self.buf[ids].mul_(self.mu).add_(g)
            self.buf[ids] = b
            g = b
        theta[ids] = theta[ids] - self.lr * g


def make_row_optimizer(name: str, rows: int, dim: int, lr: float, momentum: float, dtype: torch.dtype,
                       device: torch.device):
    """``adam``, ``sgd`` or ``momentum`` (SGD with momentum), as the per-module banks build them."""
    if name == "adam":
        return RowAdam(rows, dim, lr, dtype, device)
    if name in ("sgd", "momentum"):
        return RowSGD(rows, dim, lr, momentum if name == "momentum" else 0.0, dtype, device)
    raise ValueError(f"optimizer = {name!r}; allowed: 'adam', 'sgd', 'momentum'")
