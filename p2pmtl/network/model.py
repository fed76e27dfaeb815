"""The network model (SPEC sec. 7): every timing quantity of a run, drawn vectorized per agent
and per link from the run's own ``network`` seed, independent of learning (so every weight
rule of a study sees the same network, and the same seed gives the same network).

- compute time of one local step: ``clock.compute_time`` x the agent's speed factor (drawn
  once), x ``stragglers.slowdown`` for stragglers (fixed agents, or redrawn every step);
- a message on link l -> k: bytes / bandwidth to transmit (one message at a time per link: a
  message waits for the previous one), then the latency (per link, drawn once or per message);
  lost with probability ``loss``; links are FIFO (a message never overtakes an earlier one);
- churn: agents alternate online / offline periods of exponential length;
- time-varying topology: the world's edge list is the union of every graph used, and a mask of
  the edges present in each block of ``every`` rounds.

All arrays are world-level (R runs x n agents flattened, see :mod:`p2pmtl.engine.gossip`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .config import ClockConfig, DistConfig, NetworkConfig
from ..core.edges import EdgeIndex

if TYPE_CHECKING:
    import networkx as nx


def draw(dist: DistConfig, size: int, rng: np.random.Generator, edge_values: Optional[np.ndarray] = None) -> np.ndarray:
    """``size`` draws of a :class:`DistConfig`; ``edge_values`` are the graph's attribute values
    (NaN where an edge lacks it) for ``kind = "edge_attr"``."""
    if dist.kind == "constant":
        return np.full(size, dist.value)
    if dist.kind == "uniform":
        return rng.uniform(dist.low, dist.high, size)
    if dist.kind == "lognormal":
        return dist.median * np.exp(dist.sigma * rng.standard_normal(size))
    values = np.asarray(edge_values, dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        if dist.default is None:
            raise ValueError(f"edge attribute {dist.attr!r} is missing on {int(missing.sum())} edges and no "
                             f"default is given (set default = ...)")
        values = np.where(missing, dist.default, values)
    return values


def edge_attribute(graphs: Sequence[nx.Graph], edges: EdgeIndex, n: int, attr: str) -> np.ndarray:
    """The graph attribute ``attr`` on every world edge (NaN where absent; self loops 0)."""
    src, dst = edges.src.numpy(), edges.dst.numpy()
    out = np.full(len(src), np.nan)
    for e, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        if s == d:
            out[e] = 0.0
            continue
        g = graphs[s // n]
        data = g.get_edge_data(s % n, d % n)
        if data is not None and attr in data:
            out[e] = float(data[attr])
    return out


class NetworkModel:
    """Per-agent and per-link timing of one world. ``message_bytes``: the size of one model."""

    def __init__(self, cfg: NetworkConfig, clock: ClockConfig, graphs: Sequence[nx.Graph], edges: EdgeIndex,
                 n: int, message_bytes: float, seeds: Sequence[int],
                 present: Optional[list[np.ndarray]] = None) -> None:
        self.cfg, self.clock, self.n = cfg, clock, n
        self.runs = len(seeds)
        self.num_nodes = self.runs * n
        self.src, self.dst = edges.src.numpy(), edges.dst.numpy()
        self.num_edges = len(self.src)
        self.is_self = self.src == self.dst
        self.run_of_edge = self.dst // n
        self.message_bytes = float(message_bytes)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.present_blocks = present  # per block: world edge ids present (None: static)
        attr = lambda d: edge_attribute(graphs, edges, n, d.attr) if d is not None and d.kind == "edge_attr" else None  # noqa: E731
        self.speed = self._per_node(lambda r, k: draw(cfg.speed, k, r))
        st = cfg.stragglers
        self.straggler = self._per_node(lambda r, k: r.random(k) < st.fraction) if st.mode == "fixed" else None
        self.latency_dist = cfg.latency if cfg.latency is not None else DistConfig(value=clock.latency)
        self._lat_attr = attr(self.latency_dist)
        self.latency = self._per_edge(self.latency_dist, self._lat_attr)
        bw = cfg.bandwidth
        self.transfer = (np.zeros(self.num_edges) if bw is None
                         else self.message_bytes / np.maximum(self._per_edge(bw, attr(bw)), 1e-300))
        self.transfer[self.is_self] = 0.0
        self.last_arrival = np.full(self.num_edges, -np.inf)  # FIFO links
        self.link_free = np.full(self.num_edges, -np.inf)  # when each link has sent its last message
        ch = cfg.churn
        self.churny = self._per_node(lambda r, k: r.random(k) < ch.fraction) if ch.fraction > 0 else np.zeros(self.num_nodes, bool)
        self.churns = bool(self.churny.any())  # any agent goes offline at times
        self.online_now = np.ones(self.num_nodes, dtype=bool)
        self.next_switch = np.full(self.num_nodes, np.inf)
        if self.churns:
            idx = np.flatnonzero(self.churny)
            self.next_switch[idx] = self._exp(idx, ch.mean_online)

    # -- per-run draws, concatenated (a run's network never depends on its batch mates) -------
    def _per_node(self, f) -> np.ndarray:
        return np.concatenate([f(r, self.n) for r in self.rngs])

    def _per_edge(self, dist: DistConfig, attr_values: Optional[np.ndarray]) -> np.ndarray:
        out = np.zeros(self.num_edges)
        for r, rng in enumerate(self.rngs):
            sel = np.flatnonzero((self.run_of_edge == r) & ~self.is_self)
            out[sel] = draw(dist, len(sel), rng, None if attr_values is None else attr_values[sel])
        return out

    def _by_run(self, runs: np.ndarray, f) -> np.ndarray:
        """Per-item draws ``f(rng of the run, positions)`` for items belonging to ``runs``."""
        out = np.empty(len(runs))
        for r in np.unique(runs):
            sel = np.flatnonzero(runs == r)
            out[sel] = f(self.rngs[r], sel)
        return out

    def _exp(self, nodes: np.ndarray, mean: float) -> np.ndarray:
        return self._by_run(nodes // self.n, lambda g, sel: g.exponential(mean, len(sel)))

    # -- compute ----------------------------------------------------------------------------
    def compute_times(self, nodes: Optional[np.ndarray] = None) -> np.ndarray:
        """Time of one local step for ``nodes`` (default: every node)."""
        nodes = np.arange(self.num_nodes) if nodes is None else nodes
        t = self.clock.compute_time * self.speed[nodes]
        st = self.cfg.stragglers
        if st.fraction > 0:
            if self.straggler is not None:
                slow = self.straggler[nodes]
            else:
                slow = self._by_run(nodes // self.n, lambda g, sel: g.random(len(sel))) < st.fraction
            t = np.where(slow, t * st.slowdown, t)
        return t

    # -- links ------------------------------------------------------------------------------
    def delays(self, edge_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """latency + bytes / bandwidth of messages on idle links ``edge_ids`` (default: all)."""
        ids = slice(None) if edge_ids is None else edge_ids
        return self.latencies(edge_ids) + self.transfer[ids]

    def latencies(self, edge_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """The latency of one message on each of ``edge_ids`` (drawn anew if per message)."""
        ids = slice(None) if edge_ids is None else edge_ids
        lat = self.latency[ids]
        if self.cfg.latency_per_message:
            eids = np.arange(self.num_edges) if edge_ids is None else edge_ids
            attr = self._lat_attr
            lat = self._by_run(self.run_of_edge[eids], lambda g, sel: draw(
                self.latency_dist, len(sel), g, None if attr is None else attr[eids[sel]]))
            lat = np.where(self.is_self[eids], 0.0, lat)
        return lat

    def link_min_delays(self) -> np.ndarray:
        """Per link, a lower bound on the delay of every message on it: its latency (redrawn per
        message: the distribution's lower end) plus the transfer time; 0 on self loops. The
        asynchronous protocol's lookahead per link (:class:`~p2pmtl.network.protocols.AsyncGossip`)."""
        lat, d = self.latency, self.latency_dist
        if self.cfg.latency_per_message and d.kind != "edge_attr":  # an attribute is its link's every draw
            lat = np.full(self.num_edges, d.lower_bound())
        out = lat + self.transfer
        out[self.is_self] = 0.0
        return out

    def min_delay(self) -> float:
        """A lower bound on every message's delay (0 if none is known): the smallest of
        :meth:`link_min_delays` over the links that are not self loops."""
        others = ~self.is_self
        if not others.any():
            return 0.0
        return float(self.link_min_delays()[others].min())

    def send(self, send_times: np.ndarray, edge_ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Messages put on ``edge_ids`` (distinct) at ``send_times``: (arrival times, lost mask).
        A link transmits one message at a time at its bandwidth (a message waits until the
        previous one is through), then the message travels for the link's latency; links are
        FIFO, so a message never arrives before an earlier one."""
        ids = np.arange(self.num_edges) if edge_ids is None else edge_ids
        through = np.maximum(send_times, self.link_free[ids]) + self.transfer[ids]
        self.link_free[ids] = through
        arrival = np.maximum(through + self.latencies(edge_ids), self.last_arrival[ids])
        self.last_arrival[ids] = arrival
        lost = np.zeros(len(ids), dtype=bool)
        if self.cfg.loss > 0:
            lost = self._by_run(self.run_of_edge[ids], lambda g, sel: g.random(len(sel))) < self.cfg.loss
            lost &= ~self.is_self[ids]
        return arrival, lost

    # -- churn ------------------------------------------------------------------------------
    def online(self, times: np.ndarray | float) -> np.ndarray:
        """Which agents are online at ``times`` (per agent, or one instant). Queries must not go
        back in time per agent."""
        if not self.churns:
            return self.online_now
        times = np.broadcast_to(np.asarray(times, dtype=np.float64), (self.num_nodes,))
        ch = self.cfg.churn
        while True:
            due = np.flatnonzero(self.next_switch <= times)
            if not len(due):
                return self.online_now.copy()
            going_off = self.online_now[due]
            self.online_now[due] = ~going_off
            mean = np.where(going_off, ch.mean_offline, ch.mean_online)
            self.next_switch[due] += self._exp(due, 1.0) * mean

    def back_online(self, nodes: np.ndarray) -> np.ndarray:
        """For offline ``nodes`` (after :meth:`online`): when each comes back."""
        return self.next_switch[nodes]

    # -- topology ---------------------------------------------------------------------------
    def present(self, block: int) -> Optional[np.ndarray]:
        """Mask of the edges present in topology block ``block`` (None: static graph)."""
        if self.present_blocks is None:
            return None
        mask = self.is_self.copy()
        mask[self.present_blocks[block % len(self.present_blocks)]] = True
        return mask


def dynamic_edges(cfg: NetworkConfig, base_graphs: Sequence[nx.Graph], family: str, params: dict,
                  graph_seeds: Sequence[int], blocks: int) -> tuple[EdgeIndex, list[np.ndarray]]:
    """Time-varying topology: (the world's union edge list, per block the world edge ids present).

    ``redraw``: block b of run r uses the family drawn with seed ``(graph seed of r, b)``;
    ``schedule``: the listed graphs in turn. Node counts must equal the base graph's."""
    from ..graphs.families import build_graph

    tc = cfg.topology
    n = base_graphs[0].number_of_nodes()
    runs = len(base_graphs)
    count = blocks if tc.kind == "redraw" else len(tc.schedule)
    keys_per_block: list[list[np.ndarray]] = [[] for _ in range(count)]
    union = []
    for r, g0 in enumerate(base_graphs):
        seq = np.random.SeedSequence([int(graph_seeds[r]), 7])
        kids = seq.spawn(count)
        for b in range(count):
            if tc.kind == "redraw":
                g = build_graph(family, params, seed=int(kids[b].generate_state(1)[0]))
            else:
                gc = tc.schedule[b]
                g = build_graph(gc.family, gc.params, seed=int(kids[b].generate_state(1)[0]))
            if g.number_of_nodes() != n:
                raise ValueError(f"network.topology: graph {b} has {g.number_of_nodes()} nodes, the base graph {n}")
            e = EdgeIndex.from_graph(g)
            keys = (e.dst.numpy() + r * n) * (runs * n) + (e.src.numpy() + r * n)
            keys_per_block[b].append(keys)
            union.append(keys)
        e0 = EdgeIndex.from_graph(g0)
        union.append((e0.dst.numpy() + r * n) * (runs * n) + (e0.src.numpy() + r * n))
    keys = np.unique(np.concatenate(union))
    n0 = runs * n
    edges = EdgeIndex.from_arrays(keys % n0, keys // n0, n0)
    all_keys = edges.dst.numpy() * n0 + edges.src.numpy()  # sorted, same key as above
    present = [np.searchsorted(all_keys, np.concatenate(k)) for k in keys_per_block]
    return edges, present


def blocks_needed(iterations: int, every: int) -> int:
    return max(1, math.ceil(iterations / every))
