"""Many models of one architecture, one ``nn.Module`` and one optimizer per agent.

DESIGN (measured on this 2-core CPU): per-agent modules in channels_last beat ``torch.func.vmap``
over stacked parameters, and channels_last alone runs the digit CNN about 2x faster than NCHW.
Every model's parameters can be read and written as one flat row, which is what gossip
exchanges. :class:`~p2pmtl.tasks.batched_bank.BatchedModelBank` is the layout for GPUs (one
stacked tensor, ``torch.func.vmap``); ``task.bank`` chooses (``auto``: this one on the CPU).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F


class ModelBank:
    """One ``nn.Module`` and one ``torch.optim`` optimizer per model, on the CPU."""

    batched = False
    device = torch.device("cpu")

    def __init__(
        self,
        modules: Sequence[nn.Module],
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        channels_last: bool = True,
    ) -> None:
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.modules = [m.to(memory_format=fmt) for m in modules]
        self.params = [list(m.parameters()) for m in self.modules]
        self.optimizers = [make_optimizer(p) for p in self.params]
        self.template = copy.deepcopy(self.modules[0]).eval()
        self.names = [n for n, _ in self.template.named_parameters()]
        self.shapes = [p.shape for p in self.params[0]]
        self.sizes = [p.numel() for p in self.params[0]]
        self.num_params = sum(self.sizes)
        rep = getattr(self.template, "representation", None)
        # split models list the representation's parameters first: a row is [representation | head]
        self.rep_params = sum(p.numel() for p in rep.parameters()) if rep is not None else self.num_params

    def __len__(self) -> int:
        return len(self.modules)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the bank's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        """Conv weights in channels_last, as the modules hold them (else conv runs 2x slower)."""
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.dim() == 4 else t

    # -- parameters as flat rows -------------------------------------------------------------
    def flat_one(self, i: int) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params[i]])

    def flat(self, ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        ids = range(len(self)) if ids is None else ids
        return torch.stack([self.flat_one(i) for i in ids])

    def load_one(self, i: int, vector: torch.Tensor) -> None:
        with torch.no_grad():
            for p, chunk in zip(self.params[i], torch.split(vector, self.sizes)):
                p.copy_(chunk.view(p.shape))

    def load(self, rows: torch.Tensor, ids: Optional[Sequence[int]] = None) -> None:
        for r, i in enumerate(range(len(self)) if ids is None else ids):
            self.load_one(i, rows[r])

    # -- compute -------------------------------------------------------------------------------
    def train_step(self, i: int, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step of model i on a mini-batch (cross-entropy)."""
        m, opt = self.modules[i], self.optimizers[i]
        m.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def logits(self, i: int, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Model i on ``x`` in inference mode, ``chunk`` images per forward pass."""
        m = self.modules[i]
        m.eval()
        with torch.inference_mode():
            return torch.cat([m(x[s:s + chunk]) for s in range(0, x.shape[0], chunk)])

    def logits_of(self, vector: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Any flat parameter vector (e.g. a forged message) as a model, without copying it."""
        return self._apply(self.template, self.names, vector, x, chunk)

    def features(self, i: int, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Model i's representation of ``x`` (inference mode, chunked)."""
        rep = self.modules[i].representation
        rep.eval()
        with torch.inference_mode():
            return torch.cat([rep(x[s:s + chunk]) for s in range(0, x.shape[0], chunk)])

    def features_of(self, vector: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """A flat representation vector (a row's first ``rep_params`` entries) applied to ``x``."""
        names = [n.removeprefix("representation.") for n in self.names if n.startswith("representation.")]
        return self._apply(self.template.representation, names, vector, x, chunk)

    def _apply(self, module: nn.Module, names: list[str], vector: torch.Tensor, x: torch.Tensor, chunk: int):
        params = {n: self._layout(c.view(s)) for n, c, s in
                  zip(names, torch.split(vector, self.sizes[:len(names)]), self.shapes[:len(names)])}
        with torch.inference_mode():
            return torch.cat([functional_call(module, params, (x[s:s + chunk],))
                              for s in range(0, x.shape[0], chunk)])


def make_optimizer_factory(name: str, lr: float, momentum: float = 0.9):
    """``adam`` (Li2020), ``sgd`` or ``momentum`` (SGD with momentum, BR-MTRL)."""
    if name == "adam":
        return lambda p: torch.optim.Adam(p, lr=lr)
    if name == "sgd":
        return lambda p: torch.optim.SGD(p, lr=lr)
    if name == "momentum":
        return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer = {name!r}; allowed: 'adam', 'sgd', 'momentum'")
