"""Server mode's clients as one stacked parameter tensor, trained together with ``torch.func``.

Every client's model is a row ``[representation | head]`` of ``rows [n, P]`` on the device. A
round's picked clients run their local updates in lockstep: one ``vmap`` over clients of
``grad`` of the functional model per local step, each client on its own mini-batch, then one
row-indexed optimizer step (:mod:`p2pmtl.tasks.row_optim`). The representation and the head
each have their own optimizer state, as ``torch.optim`` keeps per-parameter state: a head step
of FedRep / BR-MTRL (Algorithm 1, lines 5-7) leaves the representation's moments and step
count alone, and the other way round (lines 8-10).

The mini-batches are those of the per-client loop (:class:`~p2pmtl.server.federated.LocalTrainer`):
drawn client by client from the run's generator in the same order, so both layouts give the
same numbers (tests/test_batched_bank.py). Lockstep needs every client to hold the same number
of training images (``train_per_client``), which the client split gives.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..tasks.batched_bank import BatchedModelBank
from ..tasks.row_optim import make_row_optimizer


class BatchedClients:
    """The clients of :class:`~p2pmtl.server.federated.Clients` (their models' parameters,
    optimizers and data) stacked on ``clients.device``; ``chunk`` clients per vmapped call."""

    def __init__(self, clients, chunk: int = 64) -> None:
        sizes = {len(y) for _, y in clients.train}
        if len(sizes) != 1:
            raise ValueError(f"task.bank = 'batched' in server mode: clients hold {sorted(sizes)} training images; "
                             "lockstep training needs one size (use bank = 'modules')")
        cfg = clients.cfg
        # the rows, the functional template and the evaluation; the optimizers are per part here
        # every client starts from the prototype: n views of one module, no per-client copies
        self.bank = BatchedModelBank([clients.proto] * clients.n, None, cfg.lr, cfg.momentum, clients.device, chunk)
        self.device, self.chunk, self.rows = self.bank.device, self.bank.chunk, self.bank.rows
        self.template, self.rep = self.bank.template, self.bank.rep_params
        n_rep = len(list(self.template.representation.parameters()))
        spec = list(zip(self.bank.names, self.bank.shapes))
        self.rep_spec = [(name.removeprefix("representation."), s) for name, s in spec[:n_rep]]
        self.head_spec = [(name.removeprefix("head."), s) for name, s in spec[n_rep:]]
        n, p = self.rows.shape
        self.rep_opt = make_row_optimizer(cfg.optimizer, n, self.rep, cfg.lr, cfg.momentum, self.rows.dtype, self.device)
        self.head_opt = make_row_optimizer(cfg.optimizer, n, p - self.rep, cfg.lr, cfg.momentum, self.rows.dtype,
                                           self.device)
        self.train_x = torch.stack([x.contiguous() for x, _ in clients.train])  # [n, m, ...] on the device
        self.train_y = torch.stack([y for _, y in clients.train])
        test_sizes = {len(y) for _, y in clients.test}
        self.test = (torch.stack([x.contiguous() for x, _ in clients.test]), torch.stack([y for _, y in clients.test])) \
            if len(test_sizes) == 1 else None
        self._head_grad = vmap(grad(self._head_loss))
        self._rep_grad = vmap(grad(self._loss, argnums=0))
        self._joint_grad = vmap(grad(self._loss, argnums=(0, 1)))
        self._features = vmap(self._represent)

    # -- the functional model: rows split into [representation | head] --------------------------
    @staticmethod
    def _params(row: torch.Tensor, spec) -> dict[str, torch.Tensor]:
        return {n: c.view(s) for (n, s), c in zip(spec, torch.split(row, [s.numel() for _, s in spec]))}

    def _represent(self, rep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template.representation, self._params(rep, self.rep_spec), (x,))

    def _head(self, head: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template.head, self._params(head, self.head_spec), (f,))

    def _forward(self, rep: torch.Tensor, head: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._head(head, self._represent(rep, x))

    def _loss(self, rep, head, x, y) -> torch.Tensor:
        return F.cross_entropy(self._forward(rep, head, x), y)

    def _head_loss(self, head, f, y) -> torch.Tensor:
        return F.cross_entropy(self._head(head, f), y)

    # -- a round's local updates -----------------------------------------------------------------
    def train(self, chosen: np.ndarray, state: torch.Tensor, shared: int, scheme: str,
              draw: Callable[[str], list[torch.Tensor]]) -> torch.Tensor:
        """Local updates of the ``chosen`` clients from the server's ``state`` (the first
        ``shared`` entries of every chosen row); returns their uploads ``[k, shared]`` on the
        CPU. ``draw(phase)`` gives one client's mini-batch indices of a phase (``head``, ``rep``
        or ``joint``) and is called client by client in the order of the per-client loop."""
        ids = torch.from_numpy(chosen).to(self.device)
        with torch.no_grad():
            self.rows[ids, :shared] = state.to(self.device, self.rows.dtype)
        phases = ("head", "rep") if scheme == "alternating" else ("joint",)
        plan = [[draw(phase) for phase in phases] for _ in chosen.tolist()]  # client by client
        for s in range(0, len(chosen), self.chunk):
            part = ids[s:s + self.chunk]
            for j, phase in enumerate(phases):
                steps = [torch.stack([plan[c][j][t] for c in range(s, s + len(part))])
                         for t in range(len(plan[s][j]))]  # [chunk, B] per step
                getattr(self, f"_{phase}_steps")(part, steps)
        return self.rows[ids, :shared].detach().to("cpu", copy=True)

    def _batch(self, ids: torch.Tensor, idx: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        return data[ids.unsqueeze(1), idx.to(self.device)]

    def _head_steps(self, ids: torch.Tensor, steps: list[torch.Tensor]) -> None:
        """Head steps with the representation fixed: features computed once (Algorithm 1, line 5)."""
        if not steps:
            return
        with torch.no_grad():
            feats = self._features(self.rows[ids, :self.rep], self.train_x[ids])  # [k, m, F]
        ar = torch.arange(len(ids), device=self.device).unsqueeze(1)
        head = self.rows[:, self.rep:]
        for idx in steps:
            idx = idx.to(self.device)
            g = self._head_grad(head[ids], feats[ar, idx], self._batch(ids, idx, self.train_y))
            self.head_opt.step(head, ids, g)

    def _rep_steps(self, ids: torch.Tensor, steps: list[torch.Tensor]) -> None:
        rep, head = self.rows[:, :self.rep], self.rows[:, self.rep:]
        for idx in steps:
            g = self._rep_grad(rep[ids], head[ids], self._batch(ids, idx, self.train_x),
                               self._batch(ids, idx, self.train_y))
            self.rep_opt.step(rep, ids, g)

    def _joint_steps(self, ids: torch.Tensor, steps: list[torch.Tensor]) -> None:
        rep, head = self.rows[:, :self.rep], self.rows[:, self.rep:]
        for idx in steps:
            g_rep, g_head = self._joint_grad(rep[ids], head[ids], self._batch(ids, idx, self.train_x),
                                             self._batch(ids, idx, self.train_y))
            self.rep_opt.step(rep, ids, g_rep)
            self.head_opt.step(head, ids, g_head)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, state: torch.Tensor, shared: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's personalised model (the server's ``state`` in its first ``shared``
        entries, written into every row as the per-client loop does) on its test set: (loss,
        accuracy) ``[n]`` float64 on the CPU."""
        if self.test is None:
            raise ValueError("task.bank = 'batched' in server mode: clients' test sets differ in size")
        with torch.no_grad():
            self.rows[:, :shared] = state.to(self.device, self.rows.dtype)
        x, y = self.test
        parts = [self.bank.losses(self.rows[s:s + self.chunk], x[s:s + self.chunk], y[s:s + self.chunk])
                 for s in range(0, len(y), self.chunk)]
        return (torch.cat([ce for ce, _ in parts]).double().cpu(), torch.cat([hit for _, hit in parts]).double().cpu())
