"""What every node sends in one round, for every lane (see :mod:`p2pmtl.engine.gossip`).

Messages are broadcast rows ``sent [M*N0, D]`` (one per node) plus optional per-edge forgeries
of Byzantine senders. Linear populations materialise per-edge copies (cheap for small D), in a
scratch tensor the engine lends and reuses every round; model populations (CNNs) evaluate each
sender's row once and never copy per edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .edges import EdgeIndex
from .ops import Workspace, all_finite, gather_rows


@dataclass
class Messages:
    sent: torch.Tensor  # [M*N0, D] broadcast message of every node
    edges: EdgeIndex  # the lanes' disjoint-union edge list
    lanes: int
    forged_rows: torch.Tensor  # node ids whose row is not their own honest model
    override_edges: Optional[torch.Tensor] = None  # edge ids with per-edge forgeries
    override_values: Optional[torch.Tensor] = None  # [len(override_edges), D]
    valid: Optional[torch.Tensor] = None  # [M*E0] finite and received (None: every message is)
    delivered: Optional[torch.Tensor] = None  # [M*E0] received this step (None: all); see network model
    receivers: Optional[torch.Tensor] = None  # [N0] world agents that combine this step (None: all)
    workspace: Optional[Workspace] = field(default=None, repr=False)  # lends per_edge() its [M*E0, D] tensor
    _per_edge: Optional[torch.Tensor] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        node_ok = None if all_finite(self.sent) else torch.isfinite(self.sent).all(1)
        if node_ok is None and self.override_edges is None and self.delivered is None:
            return
        e = self.edges
        valid = torch.ones(e.num_edges, dtype=torch.bool) if node_ok is None else node_ok[e.src]
        if self.override_edges is not None:
            valid[self.override_edges] = torch.isfinite(self.override_values).all(1)
        if self.delivered is not None:
            valid &= self.delivered
        self.valid = valid

    @property
    def num_edges_per_lane(self) -> int:
        return self.edges.num_edges // self.lanes

    def lane_edges(self, lane: int) -> slice:
        e0 = self.num_edges_per_lane
        return slice(lane * e0, (lane + 1) * e0)

    def per_edge(self) -> torch.Tensor:
        """``[M*E0, D]`` message on every edge: the sender's row, or its per-edge forgery;
        non-finite neighbour messages zeroed (they get weight 0); an own model passes as it is.
        With a ``workspace``, written into its scratch tensor ``"per_edge"`` (so valid until the
        next round of the engine that lent it), else a fresh tensor."""
        if self._per_edge is None:
            if self.workspace is not None:
                shape = (self.edges.num_edges, *self.sent.shape[1:])
                m = gather_rows(self.sent, self.edges.src, out=self.workspace.get("per_edge", shape, self.sent.dtype))
            else:
                m = self.edges.gather(self.sent)
            if self.override_edges is not None:
                m[self.override_edges] = self.override_values
            if self.valid is not None:
                keep = self.valid | (self.edges.src == self.edges.dst)
                m = torch.where(keep.unsqueeze(1), m, 0.0)
            self._per_edge = m
        return self._per_edge
