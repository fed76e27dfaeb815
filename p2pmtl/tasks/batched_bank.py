"""Many models of one architecture as one stacked parameter tensor, computed with ``torch.func``.

Every model is a row of ``rows [R, P]`` (the flat parameter vector gossip exchanges). One
``vmap`` over rows of ``grad`` of the functional model trains any set of rows in one batched
computation, each on its own mini-batch, and one row-indexed optimizer updates them
(:mod:`p2pmtl.tasks.row_optim`: Adam, SGD, SGD with momentum, the maths of ``torch.optim``).
Scoring and evaluation run the same way: ``vmap`` over (parameter row, input batch) pairs.

This is the layout for GPUs, where hundreds or thousands of agents step in one kernel launch;
on a CPU the per-agent modules of :class:`~p2pmtl.tasks.model_bank.ModelBank` are faster
(measured by ``p2pmtl bench --only bank``), and ``task.bank = "auto"`` picks per device. The
bank holds its rows on ``device``; what it returns to the gossip engine is on the CPU.

Models must be functions of their parameters alone: a model with buffers (batch norm's
running statistics) cannot be batched this way and is refused (use ``bank = "modules"``).
"""
from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..validation import Strict
from .row_optim import make_row_optimizer


class BankSettings(Strict):
    """How an image task holds its agents' models (the config models of the image tasks
    inherit these keys)."""

    bank: Literal["auto", "modules", "batched"] = Field(
        "auto", description="how the agents' (server mode: the clients') models are held: modules (one "
                            "nn.Module and optimizer each, the faster layout on a CPU), batched (one stacked "
                            "tensor trained with torch.func vmap, for GPUs) or auto (batched on a GPU device, "
                            "modules on the CPU)")
    bank_chunk: int = Field(64, ge=1, description="bank = batched: agents, clients or scored edges per "
                                                  "batched computation (bounds the memory of one vmap call)")


class BatchedModelBank:
    """``R`` models of ``modules[0]``'s architecture with the parameters of ``modules``;
    ``optimizer`` None: no optimizer state (a caller that steps parts of the rows itself)."""

    batched = True

    def __init__(self, modules: Sequence[nn.Module], optimizer: Optional[str], lr: float, momentum: float,
                 device: torch.device, chunk: int = 64) -> None:
        template = copy.deepcopy(modules[0]).to(memory_format=torch.contiguous_format)
        buffers = [n for n, _ in template.named_buffers()]
        if buffers:
            raise ValueError(f"task.bank = 'batched': model {type(template).__name__} has buffers {buffers[:3]} "
                             "(e.g. batch norm statistics) that cannot be batched per agent; use bank = 'modules'")
        self.device = torch.device(device)
        self.template = template.to(self.device)
        self.names = [n for n, _ in template.named_parameters()]
        self.shapes = [p.shape for p in template.parameters()]
        self.sizes = [p.numel() for p in template.parameters()]
        self.num_params = sum(self.sizes)
        rep = getattr(template, "representation", None)
        self.rep_params = sum(p.numel() for p in rep.parameters()) if rep is not None else self.num_params
        self.chunk = max(1, int(chunk))
        with torch.no_grad():
            self.rows = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                     for m in modules]).to(self.device)
        self.optimizer = None if optimizer is None else make_row_optimizer(
            optimizer, self.rows.shape[0], self.num_params, lr, momentum, self.rows.dtype, self.device)
        self._grad = vmap(grad(self._loss), in_dims=(0, 0, 0), randomness="different")
        self._forward = vmap(self._apply, in_dims=(0, 0), randomness="different")

    def __len__(self) -> int:
        return self.rows.shape[0]

    # -- the functional model ------------------------------------------------------------------
    def _params(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: c.view(s) for n, c, s in zip(self.names, torch.split(row, self.sizes), self.shapes)}

    def _apply(self, row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, self._params(row), (x,))

    def _loss(self, row: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._apply(row, x), y)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs on the bank's device."""
        return x.to(self.device)

    # -- parameters as flat rows (CPU side) ----------------------------------------------------
    def flat(self, ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        rows = self.rows if ids is None else self.rows[torch.as_tensor(list(ids), dtype=torch.long,
                                                                       device=self.device)]
        return rows.detach().to("cpu", copy=True)

    def load(self, rows: torch.Tensor, ids: Optional[Sequence[int]] = None) -> None:
        with torch.no_grad():
            if ids is None:
                self.rows.copy_(rows)
            else:
                self.rows[torch.as_tensor(list(ids), dtype=torch.long, device=self.device)] = rows.to(self.device)

    # -- compute -------------------------------------------------------------------------------
    def train_rows(self, ids: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step of every model ``ids [k]`` on its own mini-batch ``x [k, B, ...]``,
        ``y [k, B]`` (device tensors), ``chunk`` models per batched gradient."""
        ids = ids.to(self.device)
        self.template.train()
        for s in range(0, len(ids), self.chunk):
            rows = ids[s:s + self.chunk]
            g = self._grad(self.rows[rows], x[s:s + self.chunk], y[s:s + self.chunk])
            self.optimizer.step(self.rows, rows, g)

    def losses(self, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, accuracy) of each parameter row ``rows [k, P]`` on its own batch
        ``x [k, T, ...]``, ``y [k, T]``, in inference mode; ``[k]`` each, on the device."""
        self.template.eval()
        with torch.inference_mode():
            logits = self._forward(rows, x)  # [k, T, C]
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            return ce.mean(1), (logits.argmax(2) == y).to(rows.dtype).mean(1)
