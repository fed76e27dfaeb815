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


def naive_cnn_losses(models, batches, edges_by_receiver, score_batch):
    """Per-edge loop: for every receiver k and every neighbour l, neighbour l's model on k's
    scoring batch (cross-entropy). Returns {(l, k): loss}."""
    import torch
    from torch.nn import functional as F

    out = {}
    with torch.no_grad():
        for k, senders in edges_by_receiver.items():
            x, y = batches[k][0][:score_batch], batches[k][1][:score_batch]
            for l in senders:
                models[l].eval()
                out[(l, k)] = float(F.cross_entropy(models[l](x), y))
    return out


def naive_cnn_round(models, optimizers, batches, scores, nu, score_batch):
    """One loss-based ATC round on a complete graph the way Li2020's reference code does it:
    each agent trains one step on its batch; each agent k scores every agent l's model on its
    own batch, smooths, filters (phi_lk <= phi_kk) and takes the inverse-score weighted sum of
    the models, parameter tensor by parameter tensor. ``scores[k][l]`` is updated in place."""
    import torch
    from torch.nn import functional as F

    n = len(models)
    for m, opt, (x, y) in zip(models, optimizers, batches):
        m.train()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    params = [[p.detach().clone() for p in m.parameters()] for m in models]
    losses = naive_cnn_losses(models, batches, {k: list(range(n)) for k in range(n)}, score_batch)
    new = []
    for k in range(n):
        for l in range(n):
            scores[k][l] = (1 - nu) * scores[k][l] + nu * losses[(l, k)]
        inv = [1.0 / scores[k][l] if scores[k][l] <= scores[k][k] else 0.0 for l in range(n)]
        w = [v / sum(inv) for v in inv]
        new.append([sum(w[l] * params[l][t] for l in range(n)) for t in range(len(params[0]))])
    with torch.no_grad():
        for m, tensors in zip(models, new):
            for p, t in zip(m.parameters(), tensors):
                p.copy_(t)
    return new
