"""Plain per-agent implementation of ATC diffusion for target localization, written the way
the published reference code is (numpy, a Python loop over agents and neighbours).

It is the yardstick for two things: the equivalence test (the batched engine must give the
same numbers in float64) and the speed benchmark (``p2pmtl bench``). Not for production use.
"""
from __future__ import annotations

import numpy as np


class ReferenceDiffusion:
    def __init__(
        self,
        rule: str,
        x: np.ndarray,
        neighbours: list[list[int]],
        byzantine: set[int],
        theta0: np.ndarray,
        mu: float,
        nu: float,
        init_score: float,
        adapt: str = "pseudo_observation",
    ) -> None:
        self.rule, self.x, self.neigh = rule, x, neighbours
        self.byz, self.mu, self.nu, self.adapt = byzantine, mu, nu, adapt
        self.n = x.shape[0]
        self.w = theta0.copy()
        self.psi = np.zeros_like(self.w)
        self.score = init_score * np.ones((self.n, self.n))
        self.weights = np.zeros((self.n, self.n))  # weights[k, l] = a_lk

    def step(self, u: np.ndarray, d: np.ndarray, byz_messages: dict[int, np.ndarray]) -> np.ndarray:
        n, w, psi, x = self.n, self.w, self.psi, self.x
        for k in range(n):
            if k in self.byz:
                psi[k] = byz_messages[k]
            elif self.adapt == "pseudo_observation":
                q = x[k] + d[k] * u[k]
                psi[k] = w[k] + self.mu * (q - w[k])
            else:
                err = d[k] - np.dot(u[k], w[k] - x[k])
                psi[k] = w[k] + self.mu * err * u[k]
        new_w = w.copy()
        for k in range(n):
            if k in self.byz:
                new_w[k] = psi[k]
                continue
            weight = np.zeros(n)
            if self.rule == "noncoop":
                weight[k] = 1.0
            elif self.rule == "average":
                for l in self.neigh[k]:
                    weight[l] = 1.0 / len(self.neigh[k])
            else:
                for l in self.neigh[k]:
                    if self.rule == "loss":
                        stat = (d[k] - np.dot(u[k], psi[l] - x[k])) ** 2
                    else:
                        stat = np.sum((w[k] - psi[l]) ** 2)
                    self.score[k, l] = (1 - self.nu) * self.score[k, l] + self.nu * stat
                inv = np.zeros(n)
                for l in self.neigh[k]:
                    if self.rule == "distance" or self.score[k, l] <= self.score[k, k]:
                        inv[l] = 1.0 / self.score[k, l]
                total = np.sum(inv)
                for l in self.neigh[k]:
                    weight[l] = inv[l] / total
            self.weights[k] = weight
            new_w[k] = np.dot(weight, psi)
        self.w = new_w
        return new_w

    def loss(self, u: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.array([(d[k] - np.dot(u[k], self.w[k] - self.x[k])) ** 2 for k in range(self.n)])
