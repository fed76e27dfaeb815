"""Node roles in the gossip engine: *servers* (trusted nodes that hold no data, do not train,
and combine what their children sent with a robust aggregator) beside the usual *learners*.

A star whose hub is a server is FedAvg / BR-MTRL; edge servers under a cloud server are a
hierarchy (clients -> edge servers -> cloud); servers inside a bigger gossip graph serve their
own neighbourhood while the other learners keep their rule. Configured by the ``[roles]``
table (:class:`RolesConfig`); without it every node is a learner and the engine is unchanged.

One synchronous round with servers (every lane, every run):

1. *adapt*: learners take their local step; a server does not (its message is its current
   model, psi_s = theta_s). Byzantine nodes are learners (a server is trusted).
2. *exchange and combine*: every node sends one message per out-edge, as without servers, and
   every node combines with its lane's rule (what learners next to a server get is replaced below).
3. *up* (bottom-up over server levels): the servers' *levels* are their BFS distances from the
   root servers over server-server edges (either direction), where the roots are
   ``roles.roots`` (default: in each connected group of servers, the one listed first in
   ``roles.servers``). A server's *children* are its in-neighbours that are learners and its
   in-neighbour servers one level deeper. From the deepest level up, each server's new model
   is ``aggregator(stack of its children's messages)``: the learners' adapted models (or what
   Byzantine learners sent them, per-edge forgeries included) and the child servers' final
   up-phase models, in sender order. Messages that are not finite (or not delivered) are left
   out before the aggregator. A server with no child left, or whose stack the aggregator
   refuses (e.g. Krum's n >= 2f + 3), keeps its current model (``refused`` counts these; a
   warning is issued once). Then servers of the same level that are in-neighbours of each
   other (servers gossiping among themselves) average: x_s <- mean(x_s, x_p for every
   same-level in-neighbour server p), uniform weights, all at once; these are the level's
   final up-phase models.
4. *down* (top-down): a server with in-neighbour servers one level up (its parents) takes the
   mean of their final models, from level 1 down; then every learner with an in-neighbour
   server (a *client*) takes the mean of the final models of all its in-neighbour servers.
   Learners with no in-neighbour server keep their rule's combination.

Time: a round with servers is several hops in sequence (:attr:`ServerRoles.hops`; the plain
clock charges a latency per hop); on a synchronous network model
(:class:`p2pmtl.network.protocols.SyncGossip`) every hop is a message on its link, and
``hop_ok`` (set each round) says which server-phase messages arrived: a child, peer or parent
whose message is missing is left out, a client whose server's model is missing keeps its rule's
combination, an offline server keeps its model.

Cost: the up phase loops over servers (one aggregator call per server, lane and round) and the
down phase is one scatter over the server-to-learner edges; there is no loop over learners or
edges. Servers are meant to be few (tens); a thousand servers cost about a thousand aggregator
calls per round and lane.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..validation import Strict


class RolesConfig(Strict):
    """The ``[roles]`` table: which nodes are servers and how they aggregate (gossip mode).
    Without it every node is a learner."""

    servers: list[int] = Field(
        default_factory=list,
        description="node ids that are servers: they hold no data, do not train, aggregate their children's "
                    "messages and send the result down (empty: every node is a learner)")
    roots: Optional[list[int]] = Field(
        None, description="the top-level servers (level 0); default: in each connected group of servers, the "
                          "one listed first in `servers`")
    aggregator: str = Field("mean", description="the aggregator every server applies to its children's messages "
                                                "(`p2pmtl list`), e.g. geometric_median, krum, trimmed_mean")
    aggregator_params: dict[str, Any] = Field(default_factory=dict,
                                              description="parameters of the aggregator, e.g. { f = 1 }")
    pre: list[str] = Field(default_factory=list,
                           description="pre-aggregation steps applied before the aggregator (`p2pmtl list`), "
                                       "e.g. ['nnm']")

    @field_validator("servers")
    @classmethod
    def _servers(cls, v):
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"roles.servers = {v}: node ids must be distinct and >= 0")
        return v

    @model_validator(mode="after")
    def _build(self) -> "RolesConfig":
        from ..robust.aggregators import AGGREGATORS

        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"roles.aggregator = {self.aggregator!r}: unknown; allowed: "
                             f"{', '.join(AGGREGATORS.names())}")
        try:
            self.make_aggregator()
        except KeyError as e:
            raise ValueError(f"roles.pre = {self.pre}: {e.args[0] if e.args else e}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"roles.aggregator_params = {self.aggregator_params}: {e}") from None
        if self.roots is not None:
            extra = [r for r in self.roots if r not in self.servers]
            if extra:
                raise ValueError(f"roles.roots = {self.roots}: {extra} not in roles.servers ({self.servers}); "
                                 f"allowed: server ids")
            if not self.roots and self.servers:
                raise ValueError("roles.roots = []: give at least one root server (or leave roots out)")
        return self

    def make_aggregator(self):
        from ..robust.aggregators import make_aggregator

        return make_aggregator(self.aggregator, pre=self.pre, **self.aggregator_params)

    def check_nodes(self, n: int) -> None:
        """Server ids against the number of nodes ``n`` (a ``ValueError`` naming the key)."""
        bad = [i for i in self.servers if i >= n]
        if bad:
            raise ValueError(f"roles.servers = {self.servers}: {bad} not in the graph; allowed: node ids < {n} "
                             f"(the number of nodes)")
        if self.servers and len(self.servers) >= n:
            raise ValueError(f"roles.servers = {self.servers}: every one of the {n} nodes is a server; leave at "
                             f"least one learner")


class ServerRoles:
    """The runtime of ``[roles]`` over a world (R runs of n nodes, N0 = R*n) in M lanes: levels,
    children and parents of every server, precomputed once from the world's edge list."""

    def __init__(self, cfg: RolesConfig, world_edges, n: int, byzantine: Optional[torch.Tensor] = None) -> None:
        cfg.check_nodes(n)
        self.cfg = cfg
        self.aggregator = cfg.make_aggregator()
        self.n, self.n0 = n, world_edges.num_nodes
        runs = self.n0 // n
        self.edges = world_edges
        base = np.asarray(cfg.servers, dtype=np.int64)
        servers = (base[None, :] + n * np.arange(runs)[:, None]).reshape(-1)  # run-major, listed order
        self.servers = torch.as_tensor(servers, dtype=torch.long)
        self.is_server = torch.zeros(self.n0, dtype=torch.bool)
        self.is_server[self.servers] = True
        if byzantine is not None and byzantine.numel() and bool(self.is_server[byzantine].any()):
            bad = sorted({int(b) % n for b in byzantine[self.is_server[byzantine]]})
            raise ValueError(f"roles.servers: {bad} are also Byzantine; servers are trusted (Byzantine nodes "
                             f"must be learners)")
        src, dst = world_edges.src.numpy(), world_edges.dst.numpy()
        srv = self.is_server.numpy()
        non_self = src != dst
        # levels: BFS from the roots over server-server edges (either direction)
        adj: dict[int, set[int]] = {int(s): set() for s in servers}
        for a, b in zip(src[non_self & srv[src] & srv[dst]].tolist(), dst[non_self & srv[src] & srv[dst]].tolist()):
            adj[a].add(b)
            adj[b].add(a)
        level: dict[int, int] = {}
        for r in range(runs):
            run_servers = [int(s) for s in servers[r * len(base):(r + 1) * len(base)]]
            if cfg.roots is not None:
                roots = [int(x) + r * n for x in cfg.roots]
            else:  # the first listed server of each connected group
                roots, seen = [], set()
                for s in run_servers:
                    if s not in seen:
                        roots.append(s)
                        seen |= self._component(adj, s)
            queue = deque()
            for s in roots:
                level[s] = 0
                queue.append(s)
            while queue:
                s = queue.popleft()
                for p in sorted(adj[s]):
                    if p not in level:
                        level[p] = level[s] + 1
                        queue.append(p)
            lost = [s - r * n for s in run_servers if s not in level]
            if lost:
                raise ValueError(f"roles.roots = {cfg.roots}: servers {lost} are not connected to any root through "
                                 f"server-server edges; add them to roles.roots")
        self.level = level
        self.depth = max(level.values(), default=-1)
        # per server: child learner edges; child servers, same-level peers and parents with the
        # world id of the edge they send on (world ids)
        self.child_edges: dict[int, torch.Tensor] = {}
        self.child_servers: dict[int, list[int]] = {}
        self.peers: dict[int, list[int]] = {}
        self.parents: dict[int, list[int]] = {}
        self.in_edge: dict[tuple[int, int], int] = {}  # (sender server, server) -> world edge id
        for s in level:
            eids = np.arange(world_edges.offsets[s].item(), world_edges.offsets[s + 1].item())
            eids = eids[src[eids] != s]
            senders = src[eids]
            self.child_edges[s] = torch.as_tensor(eids[~srv[senders]], dtype=torch.long)
            for p, e in zip(senders[srv[senders]].tolist(), eids[srv[senders]].tolist()):
                self.in_edge[(p, s)] = e
            srv_senders = senders[srv[senders]].tolist()
            self.child_servers[s] = [p for p in srv_senders if level[p] == level[s] + 1]
            self.peers[s] = [p for p in srv_senders if level[p] == level[s]]
            self.parents[s] = [p for p in srv_senders if level[p] == level[s] - 1]
        self.by_level = [[s for s in level if level[s] == lv] for lv in range(self.depth + 1)]
        from ..robust.aggregators import check_inputs

        for s in level:
            count = int(self.child_edges[s].numel()) + len(self.child_servers[s])
            if count == 0:
                continue  # no child: the server keeps its model
            try:
                check_inputs(self.aggregator, count)
            except ValueError as e:
                raise ValueError(f"roles.aggregator = {cfg.aggregator!r}: server {s % n} has {count} children, too "
                                 f"few: {e} (roles.aggregator_params = {cfg.aggregator_params})") from None
        # down to clients: server -> learner edges
        down = non_self & srv[src] & ~srv[dst]
        self.down_eids = np.flatnonzero(down)
        self.down_src = torch.as_tensor(src[down], dtype=torch.long)
        self.down_dst = torch.as_tensor(dst[down], dtype=torch.long)
        self.clients = torch.unique(self.down_dst)
        counts = torch.bincount(self.down_dst, minlength=self.n0)[self.clients]
        self.client_counts = counts
        # one round's message hops in sequence: learners -> servers, up the levels, between peers,
        # down the levels, servers -> clients (the plain clock charges each one link latency)
        peer_levels = sum(1 for servers_at in self.by_level if any(self.peers[s] for s in servers_at))
        self.hops = 1 + max(self.depth, 0) + peer_levels + max(self.depth, 0) + 1 if level else 1
        # server-sourced non-self edges each carry one more message per round (up, peers, down)
        self.extra_messages_per_run = int((non_self & srv[src]).sum()) // max(runs, 1)
        self.hop_ok: Optional[torch.Tensor] = None  # [E0] set each round by a network protocol
        self.refused = 0
        self._warned = False

    @staticmethod
    def _component(adj: dict[int, set[int]], s: int) -> set[int]:
        seen, stack = {s}, [s]
        while stack:
            for p in adj[stack.pop()]:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def learners(self) -> torch.Tensor:
        """``[N0]`` bool: the nodes that take local steps."""
        return ~self.is_server

    def hold(self, active: Optional[torch.Tensor]) -> torch.Tensor:
        """The ``active`` mask of :meth:`Population.adapt` with servers left out."""
        return self.learners() if active is None else active & self.learners()

    def apply(self, engine, msgs) -> None:
        """Rewrite the rows of servers and their clients in every lane (after the combine)."""
        pop = engine.pop
        theta = getattr(pop, "theta", None)
        if not isinstance(theta, torch.Tensor):
            raise ValueError(f"roles: task {type(pop).__name__} keeps no models in `theta`; servers ([roles]) "
                             f"need a population with a `theta` tensor and set_lane_models")
        d = msgs.sent.shape[1]
        e0, n0 = self.edges.num_edges, self.n0
        override_row = None
        if msgs.override_edges is not None:
            override_row = torch.full((msgs.edges.num_edges,), -1, dtype=torch.long)
            override_row[msgs.override_edges] = torch.arange(msgs.override_edges.numel())
        refused = 0
        ok = self.hop_ok  # the server-phase messages delivered this round (None: all)
        active = msgs.receivers  # [N0] world agents that take part this round (None: all)

        def hop(sender: int, server: int) -> bool:
            return ok is None or bool(ok[self.in_edge[(sender, server)]])

        if ok is None:
            down_src, down_dst, clients, counts = self.down_src, self.down_dst, self.clients, self.client_counts
        else:
            sel = ok[torch.from_numpy(self.down_eids)]
            down_src, down_dst = self.down_src[sel], self.down_dst[sel]
            clients = torch.unique(down_dst)
            counts = torch.bincount(down_dst, minlength=n0)[clients]
        for j in range(engine.lanes):
            sent = msgs.sent[j * n0:(j + 1) * n0]
            old = theta[j * n0:(j + 1) * n0, :d]
            rows = old.clone()
            final: dict[int, torch.Tensor] = {}
            for lv in range(self.depth, -1, -1):
                new = {}
                for s in self.by_level[lv]:
                    eids = self.child_edges[s]
                    vals = sent[self.edges.src[eids]]
                    if override_row is not None and eids.numel():
                        ov = override_row[eids + j * e0]
                        hit = ov >= 0
                        if bool(hit.any()):
                            vals = vals.clone()
                            vals[hit] = msgs.override_values[ov[hit]].to(vals.dtype)
                    if msgs.valid is not None and eids.numel():
                        vals = vals[msgs.valid[eids + j * e0]]
                    if active is not None and not bool(active[s]):  # an offline server keeps its model
                        new[s] = old[s]
                        continue
                    stack = torch.cat([vals] + [final[c].unsqueeze(0) for c in self.child_servers[s] if hop(c, s)])
                    stack = stack[torch.isfinite(stack).all(1)]  # non-finite rows never reach the aggregator
                    if stack.shape[0] == 0:
                        new[s] = sent[s]
                        continue
                    try:
                        new[s] = self.aggregator(stack).to(rows.dtype)
                    except ValueError:
                        refused += 1
                        new[s] = sent[s]
                for s in self.by_level[lv]:
                    peers = [p for p in self.peers[s] if hop(p, s)]
                    final[s] = (torch.stack([new[s]] + [new[p] for p in peers]).mean(0) if peers else new[s])
            for lv in range(1, self.depth + 1):
                for s in self.by_level[lv]:
                    parents = [p for p in self.parents[s] if hop(p, s)]
                    if parents:
                        final[s] = torch.stack([final[p] for p in parents]).mean(0)
            for s, x in final.items():
                rows[s] = x
            if clients.numel():
                acc = torch.zeros_like(rows).index_add_(0, down_dst, rows[down_src])
                rows[clients] = acc[clients] / counts.unsqueeze(1).to(rows.dtype)
            if active is not None:  # offline agents keep their models
                rows = torch.where(active.unsqueeze(1), rows, old)
            pop.set_lane_models(j, rows)
        self.refused = refused
        if refused and not self._warned:
            self._warned = True
            warnings.warn(f"roles.aggregator {self.cfg.aggregator!r}: {refused} server(s) kept their model (the "
                          f"aggregator refused their children's stack)", RuntimeWarning, stacklevel=2)
