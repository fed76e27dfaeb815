"""Gossip protocols on the SimPy clock with the network model (SPEC sec. 7).

Both drive a batched :class:`~p2pmtl.engine.gossip.GossipEngine`; the network decides who computes
and which messages are held, never what the learning maths is.

- :class:`SyncGossip`: round-tagged synchronous gossip. Agent k's round r starts at s_k (when
  it finished round r-1), computes for c_k, sends psi_k, and combines when every message of its
  online in-neighbours has arrived, or at s_k + deadline with what it has:

      ready_k = s_k + c_k,  arrival_lk = ready_l + latency_lk + bytes / bandwidth_lk (FIFO),
      done_k  = max(ready_k, max_{l delivered} arrival_lk)  [capped at max(ready_k, s_k + deadline)]

  a max-plus recursion evaluated for all agents and edges at once (numpy over the edge list);
  one SimPy event per round, at the time the last agent finishes. No per-message objects.
  A local step still running at the deadline is abandoned: that agent sends nothing and, at
  s_k + deadline, combines its previous model with what it received (so a straggler never
  holds its neighbours back by more than the deadline). With ``[roles]`` servers, the server
  phases follow the exchange, each hop a message on its link (:meth:`SyncGossip._server_phases`).
- :class:`AsyncGossip`: every agent at its own pace. When agent k finishes a local step it
  sends psi_k on its out-links that are free (a link still transmitting an earlier model skips
  this one: the freshest model goes out next time) and combines its psi_k with the freshest model it holds from each
  in-neighbour (weights from the same rules; the loss rule scores stale models on k's current
  data). Agents finishing at the same simulated instant are computed in one batched call, and
  when every message delay is positive, so is every agent k whose next finishing time t_k
  comes before each in-neighbour l's next finishing time plus d_lk, the smallest delay of
  link l -> k (its latency, or the lower end of a per-message latency, plus the transfer
  time): conservative parallel discrete-event simulation with a lookahead per link, as in
  Chandy-Misra-Bryant's lower bounds on time stamps. An agent sends only when it finishes a
  step, so nothing its in-neighbours send from now on can reach k by t_k. The agent due
  first always qualifies; agents far apart in the graph may be further apart in time than
  any one delay (on the 1,000-agent benchmark half as many calls as one global window
  [t, t + min d)). Messages are delivered up to each agent's next finishing time, so each
  agent still combines exactly the messages that arrived by its own finishing time
  (``tests/test_network.py`` checks this message by message).

Records: per agent, cumulative bytes sent and received, simulated time, and time spent
computing, sending (until its last message of the round arrived) and waiting.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import simpy
import torch

from ..engine.gossip import GossipEngine
from .model import NetworkModel

OnRecord = Callable[[int, float, dict], None]


class _Accounts:
    """Cumulative per-agent counters (world level)."""

    def __init__(self, n0: int) -> None:
        z = lambda: np.zeros(n0)  # noqa: E731
        self.now, self.sent, self.received = z(), z(), z()
        self.compute, self.send, self.wait, self.staleness = z(), z(), z(), z()

    def extras(self) -> dict[str, np.ndarray]:
        return {"sim_time": self.now, "bytes_sent": self.sent, "bytes_received": self.received,
                "time_compute": self.compute, "time_send": self.send, "time_wait": self.wait}


def as_metrics(extras: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Accounts as per-node float64 tensors (copies), ready for the recorder."""
    return {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in extras.items()}


def _segment_max(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Max over consecutive segments ``offsets[i]:offsets[i+1]`` (every segment non-empty)."""
    return np.maximum.reduceat(values, offsets[:-1])


class SyncGossip:
    """Synchronous rounds with per-agent timelines (module docstring)."""

    def __init__(self, engine: GossipEngine, net: NetworkModel, iterations: int, deadline: Optional[float],
                 every: int, record_every: int, on_record: OnRecord) -> None:
        self.engine, self.net, self.iterations = engine, net, iterations
        self.deadline, self.every, self.record_every, self.on_record = deadline, every, record_every, on_record
        e = engine.world_edges
        self.src, self.dst = e.src.numpy(), e.dst.numpy()
        self.is_self = self.src == self.dst
        self.others = ~self.is_self
        self.offsets = e.offsets.numpy()
        order = np.argsort(self.src, kind="stable")
        self.by_src = order
        counts = np.bincount(self.src, minlength=e.num_nodes)
        self.src_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.start = np.zeros(e.num_nodes)
        self._acc = _Accounts(e.num_nodes)
        self._uniform_rounds = 0  # rounds of a uniform network not yet added to the accounts
        self.bytes = net.message_bytes
        nc = net.cfg
        # a network whose timing does not change from round to round (the common case): fixed
        # delays and compute times, every message delivered unless past the deadline; rounds
        # then reduce to ~15 numpy ops on precomputed arrays
        self.static = (nc.loss == 0 and not nc.latency_per_message and nc.churn.fraction == 0
                       and net.present_blocks is None and (nc.stragglers.fraction == 0 or nc.stragglers.mode == "fixed")
                       and (deadline is None or bool((net.compute_times() <= deadline).all())))
        if self.static:
            self.c = net.compute_times()
            self.others_idx = np.flatnonzero(self.others)
            self.self_idx = np.flatnonzero(self.is_self)
            self.o_src, self.o_dst = self.src[self.others_idx], self.dst[self.others_idx]
            self.latency = net.latency[self.others_idx]
            self.transfer = net.transfer[self.others_idx]
            self.link_free = np.full(len(self.others_idx), -np.inf)
            self._delay = np.zeros(len(self.src))
            # uniform timing (equal compute times, equal idle-link delays, no deadline cut): every
            # round lasts c + d for everyone, so a round is one vector add and the accounts are
            # added in bulk when read
            d = self.latency + self.transfer
            self.uniform = (deadline is None and np.ptp(self.c) == 0 and (len(d) == 0 or np.ptp(d) == 0)
                            and (len(d) == 0 or float(d[0]) >= float(self.transfer.max())))
            if self.uniform:
                self.period = float(self.c[0]) + (float(d[0]) if len(d) else 0.0)
                self.own_send_u = np.where(np.bincount(self.o_src, minlength=e.num_nodes) > 0,
                                           float(d[0]) if len(d) else 0.0, 0.0)
            self.sent_per_round = self.bytes * np.bincount(self.o_src, minlength=e.num_nodes)
            self.received_per_round = self.bytes * np.bincount(self.o_dst, minlength=e.num_nodes)
            self._waits = np.empty(len(self.src))
        self.roles = getattr(engine, "roles", None)
        if self.roles is not None:  # the server phases time every hop: the general path
            self.static = False
        self.env = simpy.Environment()
        self.env.process(self._rounds())

    def _rounds(self):
        for r in range(self.iterations):
            done = self.round(r)
            yield self.env.timeout(max(0.0, float(done.max()) - self.env.now))
            if (r + 1) % self.record_every == 0 or r + 1 == self.iterations:
                self.on_record(r, float(self.env.now), self.acc.extras())

    def round(self, r: int) -> np.ndarray:
        """Timing of round r for every agent, then the batched learning step; returns done times."""
        if self.static:
            return self._static_round(r)
        net, src, dst, D = self.net, self.src, self.dst, self.deadline
        start = self.start
        online = net.online(start)
        c = net.compute_times()
        ready = start + c
        finished = online if D is None else online & (c <= D)  # a step cut by the deadline is abandoned
        present = net.present(r // self.every)
        sending = self.others & finished[src]
        if present is not None:
            sending &= present
        eids = np.flatnonzero(sending)
        arrival = np.full(len(src), -np.inf)
        arr, lost = net.send(ready[src[eids]], eids)
        arrival[eids] = np.where(lost, -np.inf, arr)
        arrival[self.is_self] = np.where(finished, ready, -np.inf)[dst[self.is_self]]
        heard = sending & np.isfinite(arrival) & online[dst]
        waits_for = np.where(heard | self.is_self, arrival, -np.inf)
        done = _segment_max(waits_for, self.offsets)
        if D is not None:
            done = np.where(finished, np.minimum(done, start + D), start + D)
        delivered = heard & (arrival <= done[dst])
        if D is not None:  # a receiver cannot tell a lost or abandoned message from a late one
            expected = self.others & online[src] & online[dst] & (True if present is None else present)
            missing = np.add.reduceat((expected & ~delivered).astype(np.int64), self.offsets[:-1]) > 0
            done = np.where(missing, start + D, done)
        done = np.where(online, done, ready)  # an offline agent idles one step's time
        extra = None
        if self.roles is not None:
            done, extra = self._server_phases(start, arrival, delivered, done, online, present)
        learn_all = bool(online.all()) and bool(delivered[self.others].all())
        self.engine.step(
            r,
            None if learn_all else torch.from_numpy(delivered | self.is_self),
            None if online.all() else torch.from_numpy(online),
            None if (finished == online).all() else torch.from_numpy(finished),
        )
        # accounts
        acc, b = self.acc, self.bytes
        acc.sent += b * np.bincount(src[eids], minlength=len(start))
        acc.received += b * np.bincount(dst[delivered], minlength=len(start))
        if extra is not None:
            acc.sent += extra[0]
            acc.received += extra[1]
        delay = np.where(sending & np.isfinite(arrival), arrival - ready[src], 0.0)
        own_send = _segment_max(delay[self.by_src], self.src_offsets)
        busy = np.where(online, np.where(finished, c, done - start), 0.0)
        send = np.where(finished, np.minimum(own_send, done - ready), 0.0)
        acc.compute += busy
        acc.send += send
        acc.wait += done - start - busy - send
        acc.now = done
        self.start = done
        return done

    def _server_phases(self, start, arrival, delivered, done, online, present):
        """Timing of the ``[roles]`` server phases after the exchange (module
        :mod:`p2pmtl.engine.roles`): each server aggregates once its children's messages are in
        (the learners' from the exchange, the child servers' sent when those finished), then
        same-level peers exchange, then models go down level by level and to the clients. Every
        hop is a message on its link (bandwidth, latency, loss) that counts only if it arrives
        by the receiver's deadline with the receiver online; an offline server neither
        aggregates nor sends. Sets ``roles.hop_ok`` for the engine and returns the new done
        times and the extra (sent, received) bytes per node."""
        roles, net, src, dst, b = self.roles, self.net, self.src, self.dst, self.bytes
        n0 = len(start)
        limit = np.full(n0, np.inf) if self.deadline is None else start + self.deadline
        ok = np.zeros(len(src), dtype=bool)
        sent, received = np.zeros(n0), np.zeros(n0)

        def send(times, eids):
            eids = np.asarray(eids, dtype=np.int64)
            arr, lost = net.send(np.asarray(times, dtype=np.float64), eids)
            good = ~lost & online[dst[eids]] & (arr <= limit[dst[eids]])
            if present is not None:
                good &= present[eids]
            ok[eids] = good
            np.add.at(sent, src[eids], b)
            np.add.at(received, dst[eids[good]], b)
            return arr, good

        def latest(t: float, receiver: int, senders: list[int], sent_at: dict) -> float:
            """``t``, or the latest arrival at ``receiver`` of the messages that its online
            ``senders`` send at ``sent_at[p]`` and that count."""
            for p in senders:
                if online[p]:
                    arr, good = send([sent_at[p]], [roles.in_edge[(p, receiver)]])
                    if good[0]:
                        t = max(t, float(arr[0]))
            return t

        up, final, down = {}, {}, {}
        for lv in range(roles.depth, -1, -1):
            for s in roles.by_level[lv]:
                ce = roles.child_edges[s].numpy()
                heard = ce[delivered[ce]]
                t = max(float(start[s]), float(arrival[heard].max())) if len(heard) else float(start[s])
                up[s] = latest(t, s, roles.child_servers[s], final)
            for s in roles.by_level[lv]:
                final[s] = latest(up[s], s, roles.peers[s], up)
        for lv in range(roles.depth + 1):
            for s in roles.by_level[lv]:
                down[s] = latest(final[s], s, roles.parents[s], down)
        done = done.copy()
        eids = roles.down_eids[online[src[roles.down_eids]]]
        if len(eids):
            arr, good = send([down[int(s)] for s in src[eids]], eids)
            np.maximum.at(done, dst[eids[good]], arr[good])
        for s, t in down.items():
            if online[s]:
                done[s] = max(done[s], t)
        roles.hop_ok = torch.from_numpy(ok)
        return done, (sent, received)

    @property
    def acc(self) -> _Accounts:
        """Per-agent accounts (cumulative), up to date."""
        k = self._uniform_rounds
        if k:
            self._uniform_rounds = 0
            a, span = self._acc, self.period - float(self.c[0])
            send = np.minimum(self.own_send_u, span)
            a.compute += k * self.c
            a.sent += k * self.sent_per_round
            a.received += k * self.received_per_round
            a.send += k * send
            a.wait += k * (span - send)
            a.now = self.start
        return self._acc

    def _static_round(self, r: int) -> np.ndarray:
        """:meth:`round` for a network with fixed timing (same maths, precomputed parts)."""
        if self.uniform:
            self.engine.step(r)
            self.start = self.start + self.period
            self._uniform_rounds += 1
            return self.start
        start, c = self.start, self.c
        ready = start + c
        through = np.maximum(ready[self.o_src], self.link_free) + self.transfer  # links send one message at a time
        self.link_free = through
        arrival = through + self.latency
        waits = self._waits
        waits[self.others_idx] = arrival
        waits[self.self_idx] = ready
        done = _segment_max(waits, self.offsets)
        delivered = None
        if self.deadline is not None:
            done = np.minimum(done, np.maximum(ready, start + self.deadline))
            late = arrival > done[self.o_dst]
            if late.any():
                ok = np.ones(len(self.src), dtype=bool)
                ok[self.others_idx[late]] = False
                delivered = torch.from_numpy(ok)
        self.engine.step(r, delivered)
        acc = self.acc
        acc.sent += self.sent_per_round
        if delivered is None:
            acc.received += self.received_per_round
        else:
            acc.received += self.bytes * np.bincount(self.o_dst[~late], minlength=len(start))
        span = done - ready
        self._delay[self.others_idx] = arrival - ready[self.o_src]
        own_send = _segment_max(self._delay[self.by_src], self.src_offsets)
        send = np.minimum(own_send, span)
        acc.compute += c
        acc.send += send
        acc.wait += span - send
        acc.now = done
        self.start = done
        return done

    def run(self) -> None:
        self.env.run()


class AsyncGossip:
    """Asynchronous gossip (module docstring). Stops after ``iterations`` local steps per agent
    on average (the same computation as a synchronous run) and records every ``record_every``
    such average steps."""

    def __init__(self, engine: GossipEngine, net: NetworkModel, iterations: int, every_seconds: float,
                 record_every: int, on_record: OnRecord) -> None:
        self.engine, self.net, self.iterations = engine, net, iterations
        self.block_seconds, self.record_every, self.on_record = every_seconds, record_every, on_record
        e = engine.world_edges
        self.n0, self.e0, self.m = e.num_nodes, e.num_edges, engine.lanes
        self.src, self.dst = e.src.numpy(), e.dst.numpy()
        self.is_self = self.src == self.dst
        self.out_order = np.argsort(self.src, kind="stable")  # edge ids by sender (self included)
        self.out_counts = np.bincount(self.src, minlength=self.n0)
        self.out_starts = np.concatenate([[0], np.cumsum(self.out_counts)[:-1]])
        self.in_offsets = e.offsets.numpy()
        self.has = np.zeros(self.e0, dtype=bool)
        self.held_iter = np.zeros(self.e0)
        self.inbox: Optional[torch.Tensor] = None  # [M*E0, D] lazily, on the first message
        self.iters = np.zeros(self.n0, dtype=np.int64)
        self.rejoined = np.full(self.n0, -np.inf)
        self.next_fire = net.compute_times()
        self.lookahead = net.min_delay()  # 0: agents are batched only at the same instant
        self.link_lookahead = net.link_min_delays()  # per link, with a positive lookahead
        others = np.flatnonzero(~self.is_self)  # the in-edges that bound an agent, by receiver
        self._bounds = (np.searchsorted(self.dst[others], np.arange(self.n0 + 1)), self.src[others],
                        self.link_lookahead[others])
        self.bound_per_link = True  # False: one window [t, t + lookahead) for all (the benchmark's baseline)
        self._present: dict[int, Optional[np.ndarray]] = {}
        self.acc = _Accounts(self.n0)
        self.sends = 0  # batched send calls so far (a message's call orders equal arrivals)
        self.events = 0  # agent steps simulated
        self.batches = 0  # batched calls (distinct instants)
        self._compiled = engine.kernel == "numba"  # with the compiled round: the compiled flight store
        if self._compiled:
            from ..kernels import delivery

            self._kernels = delivery
            self.flight = delivery.CompiledFlight(self.n0, self.e0, self.m)  # messages on their links
        else:
            self.flight = _InFlight()
        self.env = simpy.Environment()
        self.env.process(self._loop())

    def run(self) -> None:
        self.env.run()

    def _loop(self):
        budget = self.iterations * self.n0
        next_record = self.record_every * self.n0
        while self.events < budget:
            t = float(self.next_fire.min())
            yield self.env.timeout(max(0.0, t - self.env.now))
            if self.lookahead > 0:
                due = self._ready() if self.bound_per_link else np.flatnonzero(self.next_fire < t + self.lookahead)
            else:
                due = np.flatnonzero(self.next_fire == t)
            times = self.next_fire[due]
            at = np.full(self.n0, t)
            at[due] = times
            online = self.net.online(at)
            asleep = due[~online[due]]
            if len(asleep):  # offline: sleep until back; the inbox is lost meanwhile
                back = self.net.back_online(asleep)
                self.acc.wait[asleep] += back - self.next_fire[asleep]
                self.next_fire[asleep] = back + self.net.compute_times(asleep)
                self.rejoined[asleep] = back
                for k in asleep.tolist():
                    self.has[self.in_offsets[k]:self.in_offsets[k + 1]] = False
            fire = due[online[due]]
            if len(fire):
                self._fire(fire, times[online[due]])
            while self.events >= next_record and next_record <= budget:
                self.acc.now[:] = t
                self.on_record(next_record // self.n0 - 1, t, {**self.acc.extras(), "staleness": self.acc.staleness.copy()})
                next_record += self.record_every * self.n0

    def _ready(self) -> np.ndarray:
        """The agents that can finish their next step in this batch (every message delay
        positive): those due before each in-neighbour's next finishing time plus the smallest
        delay of their link (:func:`ready_agents`; compiled with the compiled round)."""
        ready = self._kernels.ready_agents if self._compiled else ready_agents
        return ready(self.next_fire, *self._bounds)

    def _fire(self, fire: np.ndarray, t: np.ndarray) -> None:
        """Agents ``fire`` finish a local step at times ``t`` (each before all its in-neighbours'
        next finishing times plus the lookahead, :meth:`_ready`)."""
        eng, net = self.engine, self.net
        active = np.zeros(self.n0, dtype=bool)
        active[fire] = True
        active_t = torch.from_numpy(active)
        sent, overrides = eng.produce(self.batches, active_t)
        # deliveries stop at each agent's next finishing time (the firing agents': now), so
        # that no agent holds a message that arrives after it next combines
        cutoff = np.minimum(self.next_fire, float(t.max()))
        if self._compiled:
            self._send_compiled(fire, cutoff, sent, overrides)
            self._deliver_compiled(float(t.max()), cutoff)
            eng.consume_held(sent, fire, self.has, self.inbox)  # the firing agents' in-edges only
            self._kernels.mean_staleness(fire, self.in_offsets, self.has, self.is_self, self.iters, self.src,
                                         self.held_iter, self.acc.staleness)
        else:
            self._send(fire, cutoff, sent, overrides)
            self._deliver(float(t.max()), cutoff)
            self._consume_torch(fire, active, active_t, sent, overrides)
        c = net.compute_times(fire)
        self.acc.compute[fire] += c
        self.acc.now[fire] = t
        self.iters[fire] += 1
        self.next_fire[fire] = t + c
        self.events += len(fire)
        self.batches += 1

    def _consume_torch(self, fire, active, active_t, sent, overrides) -> None:
        """The receiving half on torch ops (the whole world masked), and the staleness accounts."""
        eng = self.engine
        in_edges = _ranges(self.in_offsets[fire], self.in_offsets[fire + 1] - self.in_offsets[fire])  # edges by receiver
        held = self.has.copy()
        held[self.is_self] = True
        edge_values = None
        if self.inbox is not None:
            ids = np.flatnonzero(self.has & active[self.dst])
            lane_ids = torch.from_numpy((ids[None, :] + self.e0 * np.arange(self.m)[:, None]).ravel())
            edge_values = (lane_ids, self.inbox[lane_ids])
        eng.consume(eng.messages(sent, overrides, torch.from_numpy(held), active_t, edge_values))
        # staleness: how many newer steps each sender has taken since the model k holds
        nb = in_edges[self.has[in_edges] & ~self.is_self[in_edges]]
        stale = self.iters[self.src[nb]] - self.held_iter[nb]
        sums = np.bincount(self.dst[nb], weights=stale, minlength=self.n0)
        cnt = np.bincount(self.dst[nb], minlength=self.n0)
        self.acc.staleness[fire] = np.where(cnt[fire] > 0, sums[fire] / np.maximum(cnt[fire], 1), 0.0)

    def _send(self, fire: np.ndarray, at: np.ndarray, sent: torch.Tensor, overrides) -> None:
        """psi (or forgeries) of the firing agents onto their out-links (present in the topology
        block of the sending time), in flight until arrival. ``at``: per node send time."""
        eids = self.out_order[_ranges(self.out_starts[fire], self.out_counts[fire])]  # the firing agents' out-edges
        eids = eids[~self.is_self[eids]]
        eids = self._present_now(eids[self.net.link_free[eids] <= at[self.src[eids]]], at)  # a busy link skips this model
        if not len(eids):
            return
        arrival, lost = self.net.send(at[self.src[eids]], eids)
        self.acc.sent += self.net.message_bytes * np.bincount(self.src[eids], minlength=self.n0)
        eids, arrival = eids[~lost], arrival[~lost]
        if not len(eids):
            return
        lanes = np.arange(self.m)[:, None]
        rows = torch.from_numpy((self.src[eids][None, :] + self.n0 * lanes).ravel())
        values = sent[rows]
        if overrides[0] is not None:  # per-edge forgeries of Byzantine senders
            hit, pos, lane = _forged_positions(eids, overrides[0].numpy(), self.e0)
            if len(hit):  # values are lane-major: row lane * k + position
                values[torch.from_numpy(lane * len(eids) + pos)] = overrides[1][torch.from_numpy(hit)]
        self.flight.add(self.sends, eids, arrival, self.iters[self.src[eids]].astype(np.float64), values)
        self.sends += 1

    def _present_now(self, eids: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The links ``eids`` present in the topology block of their sender's send time ``at``."""
        if self.net.present_blocks is None:
            return eids
        block = (at[self.src[eids]] // self.block_seconds).astype(np.int64) if self.block_seconds > 0 else np.zeros(len(eids), np.int64)
        keep = np.zeros(len(eids), dtype=bool)
        blocks = np.unique(block).tolist()
        # a batch's senders may straddle a block boundary, and the next batch start before it:
        # keep the blocks from this batch's first on (the batches' first send times never go back)
        self._present = {b: m for b, m in self._present.items() if b >= blocks[0]}
        for b in blocks:
            if b not in self._present:
                self._present[b] = self.net.present(b)
            sel = block == b
            keep[sel] = self._present[b][eids[sel]]
        return eids[keep]

    def _send_compiled(self, fire: np.ndarray, at: np.ndarray, sent: torch.Tensor, overrides) -> None:
        """:meth:`_send` on the compiled flight store (:mod:`p2pmtl.kernels.delivery`): the
        same messages, accounts and rows (per-edge forgeries written over theirs)."""
        k = self._kernels
        eids = k.out_edges(fire, self.out_starts, self.out_counts, self.out_order, self.is_self, self.net.link_free,
                           at, self.src)
        eids = self._present_now(eids, at)
        if not len(eids):
            return
        arrival, lost = self.net.send(at[self.src[eids]], eids)
        start, stop = self.flight.add(eids, arrival, lost, self.src, self.iters, sent.numpy(), self.net.message_bytes,
                                      self.acc.sent)
        if overrides[0] is not None and stop > start:  # per-edge forgeries of Byzantine senders
            hit, pos, lane = _forged_positions(self.flight.edge[start:stop], overrides[0].numpy(), self.e0)
            if len(hit):
                self.flight.values[start + pos, lane] = overrides[1][torch.from_numpy(hit)].numpy()
        self.sends += stop > start  # calls that put a message in flight, as :meth:`_send` counts them

    def _deliver_compiled(self, t: float, cutoff: np.ndarray) -> None:
        """:meth:`_deliver` on the compiled flight store: the same inbox, held flags, step counts
        and bytes received."""
        fl = self.flight
        if not fl.size:
            return
        if self.inbox is None:  # created at the first message in flight; rows are read only where held
            self.inbox = torch.zeros(self.m * self.e0, fl.values.shape[2], dtype=torch.float64)
        fl.deliver(self.dst, cutoff, t, self.rejoined, self.has, self.held_iter, self.inbox.numpy(),
                   self.acc.received, self.net.message_bytes)

    def _deliver(self, t: float, cutoff: np.ndarray) -> None:
        """Every message that arrived by ``t`` replaces what its receiver held on that link
        (FIFO links: a later arrival is a newer model); arrivals at offline agents are lost.
        A receiver that fires in this batch gets only what arrived by its ``cutoff`` time; the
        rest stays in flight. Vectorized over the messages in flight: of the messages arriving
        on one link, the last in (arrival, send call) order is the one held, as if each had
        replaced the one before."""
        fl = self.flight
        if not fl.size:
            return
        due, win, received = self._due(t, cutoff)
        if due is None:
            return
        if len(win):
            self.acc.received += self.net.message_bytes * received
            eids = fl.edge[win]
            self.has[eids] = True
            self.held_iter[eids] = fl.sender_step[win]
            lanes = np.arange(self.m)[:, None]
            for call in np.unique(fl.call[win]).tolist():
                sel = win[fl.call[win] == call]
                values, k = fl.values[call], fl.sizes[call]
                if self.inbox is None:
                    self.inbox = torch.zeros(self.m * self.e0, values.shape[1], dtype=values.dtype)
                src_rows = (fl.pos[sel][None, :] + k * lanes).ravel()
                dst_rows = (fl.edge[sel][None, :] + self.e0 * lanes).ravel()
                self.inbox[torch.from_numpy(dst_rows)] = values[torch.from_numpy(src_rows)]
        fl.keep(~due)

    def _due(self, t: float, cutoff: np.ndarray):
        """(messages due now, per link that gets one the message it keeps (by position), messages
        received per agent); None first when nothing is due."""
        fl = self.flight
        dst = self.dst[fl.edge]
        due = (fl.arrival <= t) & (fl.arrival <= cutoff[dst])
        if not due.any():
            return None, None, None
        idx = np.flatnonzero(due)
        idx = idx[fl.arrival[idx] >= self.rejoined[dst[idx]]]  # arrived while online
        if not len(idx):
            return due, idx, None
        idx = idx[np.lexsort((fl.call[idx], fl.arrival[idx]))]  # delivery order
        rev = idx[::-1]
        _, last = np.unique(fl.edge[rev], return_index=True)
        return due, np.sort(rev[last]), np.bincount(dst[idx], minlength=self.n0)  # per link, the last delivered


def ready_agents(next_fire: np.ndarray, in_offsets: np.ndarray, src: np.ndarray,
                 lookahead: np.ndarray) -> np.ndarray:
    """The agents ``k`` (ascending) with ``next_fire[k] < min_e (next_fire[src[e]] + lookahead[e])``
    over their in-edges ``e`` from other agents (sorted by receiver, ``in_offsets`` their CSR
    offsets; none: no bound). Every message on link ``e`` takes at least ``lookahead[e] > 0``
    and an agent sends only when it finishes a step, so nothing an in-neighbour sends from now
    on can reach ``k`` by ``next_fire[k]``: ``k`` can finish that step now, whatever the other
    agents of the batch do (the agent due first always can)."""
    starts = in_offsets[:-1]
    some = in_offsets[1:] > starts
    bound = np.full(len(next_fire), np.inf)
    if some.any():
        bound[some] = np.minimum.reduceat(next_fire[src] + lookahead, starts[some])
    return np.flatnonzero(next_fire < bound)


def _forged_positions(eids: np.ndarray, forged: np.ndarray, e0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-edge forgeries among a send call's messages: ``forged`` lane edge ids (``lane * e0 +
    edge``), ``eids`` the call's distinct world edges. Returns (indices into ``forged`` of those
    on the call's edges, their positions in ``eids``, their lanes)."""
    lane, edge = forged // e0, forged % e0
    if not len(eids):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(eids, kind="stable")
    at = np.minimum(np.searchsorted(eids, edge, sorter=order), eids.size - 1)
    hit = np.flatnonzero(eids[order[at]] == edge)
    return hit, order[at[hit]], lane[hit]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorized."""
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return first + np.arange(int(counts.sum()))


class _InFlight:
    """Messages on their links, as arrays, in the order they were added (send calls numbered
    increasingly): arrival time, edge id, the sender's step count, the
    send call that made it and its position in that call's values (``values[call]``: ``[M*k,
    D]``, lane-major rows of the call's k messages). A call's values are freed once none of its
    messages is in flight."""

    def __init__(self) -> None:
        self.arrival = np.empty(0)
        self.edge = np.empty(0, dtype=np.int64)
        self.sender_step = np.empty(0)
        self.call = np.empty(0, dtype=np.int64)
        self.pos = np.empty(0, dtype=np.int64)
        self.values: dict[int, torch.Tensor] = {}
        self.sizes: dict[int, int] = {}

    @property
    def size(self) -> int:
        return int(self.arrival.size)

    def add(self, call: int, edges: np.ndarray, arrival: np.ndarray, sender_step: np.ndarray,
            values: torch.Tensor) -> None:
        k = len(edges)
        self.arrival = np.concatenate([self.arrival, arrival])
        self.edge = np.concatenate([self.edge, edges])
        self.sender_step = np.concatenate([self.sender_step, sender_step])
        self.call = np.concatenate([self.call, np.full(k, call, dtype=np.int64)])
        self.pos = np.concatenate([self.pos, np.arange(k, dtype=np.int64)])
        self.values[call], self.sizes[call] = values, k

    def keep(self, mask: np.ndarray) -> None:
        """Keep the messages where ``mask`` holds (the others were delivered or lost)."""
        if mask.all():
            return
        self.arrival, self.edge, self.sender_step = self.arrival[mask], self.edge[mask], self.sender_step[mask]
        self.call, self.pos = self.call[mask], self.pos[mask]
        # calls are added in increasing order and kept in order, so `call` is sorted: a call is
        # live when a binary search finds it (a few calls are stored, not worth a np.unique)
        stored = np.fromiter(self.values, dtype=np.int64, count=len(self.values))
        at = np.minimum(np.searchsorted(self.call, stored), max(self.call.size - 1, 0))
        live = (self.call[at] == stored) if self.call.size else np.zeros(stored.size, dtype=bool)
        for call in stored[~live].tolist():
            del self.values[call], self.sizes[call]


class ServerRounds:
    """BR-MTRL's synchronous broadcast (Le and Moothedath, Algorithm 1 and Table I) on the
    network model; the star's hub (node 0) is the server, client i is node i + 1.

    A round at time T: the server sends the shared model to the chosen clients (down link),
    each trains for its compute time, then uploads (up link). ``placement = "parallel"``: every
    client on its own machine, client c is done at down_c + train_c + up_c; ``"sequential"``:
    one machine trains the chosen clients one after another, so completions add up. The server
    aggregates when every responding upload has arrived, or at the deadline with those that
    did: stragglers, offline clients and lost messages are dropped. One SimPy event per round.
    """

    @classmethod
    def for_star(cls, cfg, star, message_bytes: float, seed: int) -> "ServerRounds":
        """The network model of ``cfg`` (an experiment config) on the server's star graph."""
        from ..core.edges import EdgeIndex

        net = NetworkModel(cfg.network, cfg.clock, [star], EdgeIndex.from_graph(star), star.number_of_nodes(),
                           message_bytes, [seed])
        return cls(net, cfg.server.placement, cfg.network.deadline)

    def __init__(self, net: NetworkModel, placement: str, deadline: Optional[float]) -> None:
        self.net, self.placement, self.deadline = net, placement, deadline
        src, dst = net.src, net.dst
        n = net.num_nodes
        self.down = np.full(n, -1)
        self.up = np.full(n, -1)
        for e in np.flatnonzero(src != dst).tolist():
            if src[e] == 0:
                self.down[dst[e]] = e
            elif dst[e] == 0:
                self.up[src[e]] = e
        self.clients = n - 1
        self.acc = _Accounts(self.clients)
        self.now = 0.0
        self.round_time = 0.0
        self.phases = np.zeros(3)  # down, train, up: elapsed per phase, summed over rounds
        self.rounds = 0
        self.dropped = 0
        self.bytes = net.message_bytes

    def arrives(self, chosen: np.ndarray) -> np.ndarray:
        """Timing of one round for the chosen clients (0-based); whose upload counts."""
        net, T, nodes = self.net, self.now, chosen + 1
        online = net.online(T)[nodes]
        train = net.compute_times(nodes)
        down_at, down_lost = net.send(np.full(len(nodes), T), self.down[nodes])
        down = down_at - T
        if self.placement == "parallel":
            send_up = down_at + train
        else:  # one machine: a client starts training when the previous one has sent its upload
            send_up = np.empty(len(nodes))
            free = T
            for i in range(len(nodes)):
                free = max(free, down_at[i]) + train[i]
                send_up[i] = free
        up_at, up_lost = net.send(send_up, self.up[nodes])
        up = up_at - send_up
        responds = online & ~down_lost & ~up_lost
        on_time = responds.copy()
        if self.deadline is not None:
            on_time &= up_at <= T + self.deadline
        if self.deadline is not None and not on_time.all():
            end = T + self.deadline  # the server cannot tell a straggler from a lost message
        else:  # without a deadline, failures (offline, lost) are known and not waited for
            end = float(up_at[on_time].max()) if on_time.any() else T
        self.round_time = end - T
        acc, b = self.acc, self.bytes
        got = online & ~down_lost
        acc.received[chosen] += b * got
        acc.sent[chosen] += b * got
        acc.compute[chosen] += np.where(got, train, 0.0)
        acc.send[chosen] += np.where(got, down + up, 0.0)
        acc.wait[chosen] += np.maximum(0.0, self.round_time - np.where(got, down + train + up, 0.0))
        agg = np.max if self.placement == "parallel" else np.sum
        self.phases += [down.max(), agg(np.where(got, train, 0.0)), agg(np.where(got, up, 0.0))]
        self.rounds += 1
        self.dropped += int((~on_time).sum())
        self.now = end
        self.acc.now[:] = end
        return on_time

    def run(self, iterations: int, on_round: Callable[[int], None], on_record: Callable[[int, float], None],
            record_every: int) -> None:
        """``on_round(t)`` runs the learning round (calling :meth:`arrives`); records follow."""
        env = simpy.Environment()

        def rounds():
            for t in range(iterations):
                on_round(t)
                yield env.timeout(self.round_time)
                if (t + 1) % record_every == 0 or t + 1 == iterations:
                    on_record(t, float(env.now))

        env.process(rounds())
        env.run()

    def summary(self) -> dict:
        r = max(1, self.rounds)
        return {"round_time_mean": self.now / r, "phase_down_mean": self.phases[0] / r,
                "phase_train_mean": self.phases[1] / r, "phase_up_mean": self.phases[2] / r,
                "uploads_dropped": self.dropped}
