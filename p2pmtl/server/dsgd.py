"""Distributed SGD with momentum on image clients (``dsgd`` methods of the federated_images
task; RESAM, Farhadkhani et al. 2022, Algorithm 1).

Each round every picked worker computes a minibatch gradient of the whole model at the
server's model theta_t: one batched computation for all picked workers (``torch.func``:
``vmap`` over workers of ``grad`` of the functional model), not a loop over workers. The
momentum placement and the server step are :class:`~p2pmtl.server.momentum.DistributedMomentum`;
attacks, late and non-finite uploads and the aggregator are those of
:meth:`~p2pmtl.server.federated.FederatedRun.aggregate_uploads`, shared with the other schemes.
Evaluation and the meta-test treat theta_t as a whole model (as for fedavg).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from .config import ServerConfig
from .federated import Clients, FederatedRun, Method, load
from .momentum import DistributedMomentum


class DSGDRun(FederatedRun):
    """One dsgd method on one world: worker (or server) momentum, batched worker gradients."""

    def __init__(self, method: Method, server: ServerConfig, clients: Clients, aggregator: Callable,
                 byzantine: np.ndarray, attack, seed: int) -> None:
        super().__init__(method, server, clients, aggregator, byzantine, attack, seed)  # label flips happen here
        placement = method.momentum or server.momentum
        beta = server.beta if method.beta is None else method.beta
        self.momentum = DistributedMomentum(placement, beta if placement != "none" else 0.0, self.n,
                                            self.global_state.numel(), self.global_state.dtype)
        self.lr, self.weight_decay = server.lr, server.weight_decay
        self.batch = clients.cfg.batch_size
        self.model = clients.models[0]
        self.names = [k for k, _ in self.model.named_parameters()]
        self.shapes = [p.shape for _, p in self.model.named_parameters()]
        sizes = {len(y) for _, y in clients.train}
        self.equal_sizes = len(sizes) == 1
        if self.equal_sizes:  # one stacked tensor: a round's batches are one gather
            self.train_x = torch.stack([x.contiguous() for x, _ in clients.train])  # [n, m, C, H, W]
            self.train_y = torch.stack([y for _, y in clients.train])  # [n, m]
        model = self.model

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, params, (x,)), y)

        self._grads = vmap(grad(loss), in_dims=(None, 0, 0))
        self.device = clients.device
        self.batched = self.device.type != "cpu"

    def _params(self) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        state = self.global_state.to(self.device)
        for name, shape in zip(self.names, self.shapes):
            k = shape.numel()
            out[name] = state[start:start + k].view(shape)
            start += k
        return out

    def _batches(self, chosen: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``[k, B, ...]`` images and ``[k, B]`` labels: each chosen worker's minibatch, drawn
        without replacement from its own training set (with replacement when it holds fewer
        than B images)."""
        rows = torch.from_numpy(chosen)
        if self.equal_sizes:
            m = self.train_y.shape[1]
            if m >= self.batch:
                idx = torch.rand((len(chosen), m), generator=self.gen).argsort(dim=1)[:, : self.batch]
            else:
                idx = torch.randint(m, (len(chosen), self.batch), generator=self.gen)
            return self.train_x[rows[:, None], idx], self.train_y[rows[:, None], idx]
        xs, ys = [], []
        for i in chosen.tolist():  # unequal data sizes: one gather per worker
            x, y = self.c.train[i]
            if len(y) >= self.batch:
                j = torch.randperm(len(y), generator=self.gen)[: self.batch]
            else:
                j = torch.randint(len(y), (self.batch,), generator=self.gen)
            xs.append(x[j].contiguous())
            ys.append(y[j])
        return torch.stack(xs), torch.stack(ys)

    def gradients(self, chosen: np.ndarray) -> torch.Tensor:
        """``[k, D]`` minibatch gradients of the chosen workers at the server's model.

        ``batched`` (on a GPU device: ``device = "cuda"``) computes them in one ``vmap`` over
        workers; otherwise one backward pass per worker on the shared module (measured on the
        2-core CPU: 26 workers x 25 images of the digit CNN take about 2x longer through
        ``vmap``). Both give the same gradients (tested). The rows returned are on the CPU."""
        x, y = self._batches(chosen)
        self.model.train()
        if self.batched:
            g = self._grads(self._params(), x, y)
            flat = torch.cat([g[name].reshape(len(chosen), -1) for name in self.names], dim=1).cpu()
        else:
            params = list(self.model.parameters())
            load(params, self.global_state)
            flat = torch.empty((len(chosen), self.global_state.numel()), dtype=self.global_state.dtype)
            for r in range(len(chosen)):
                self.model.zero_grad(set_to_none=True)
                F.cross_entropy(self.model(self.c._prep(x[r])), y[r]).backward()
                torch.cat([p.grad.reshape(-1) for p in params], out=flat[r])
        if self.weight_decay:
            flat = flat + self.weight_decay * self.global_state
        return flat

    def round(self, t: int, arrives: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
        """RESAM Algorithm 1, one round: the chosen workers' gradients at theta_t, their
        momenta (or gradients) as uploads, Byzantine forgeries, late and non-finite uploads
        dropped, R_t = F(uploads), theta_{t+1} = theta_t - gamma R_t (or the server momentum).
        A round with too few uploads keeps theta_t (and the server momentum)."""
        chosen = np.sort(self.rng.choice(self.n, size=self.picked, replace=False))
        uploads = self.momentum.uploads(torch.from_numpy(chosen), self.gradients(chosen))
        agg = self.aggregate_uploads(t, chosen, uploads, arrives)
        if agg is not None:
            self.global_state = self.momentum.step(self.global_state, agg, self.lr)
        return chosen

    def evaluate(self) -> dict[str, torch.Tensor]:
        """The server's model on every client's test set (one model: no heads of their own)."""
        load(list(self.model.parameters()), self.global_state)
        self.model.eval()
        loss = torch.zeros(self.n, dtype=torch.float64)
        acc = torch.zeros_like(loss)
        with torch.inference_mode():
            for i, (x, y) in enumerate(self.c.test):
                out = self.model(x)
                loss[i] = float(F.cross_entropy(out, y))
                acc[i] = float((out.argmax(1) == y).double().mean())
        return {"test_loss": loss, "test_acc": acc}
