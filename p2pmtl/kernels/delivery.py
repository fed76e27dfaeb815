"""Asynchronous gossip's messages in flight, compiled: :class:`CompiledFlight` stores them in
preallocated arrays (arrival time, link, the sender's step count and the message's rows in
every lane) and moves them with three kernels, one call each per batch of firing agents (a
fourth, :func:`mean_staleness`, gives the batch's staleness accounts, and a fifth,
:func:`ready_agents`, picks the batch: the agents bounded by their in-neighbours' next steps):

- :func:`out_edges`: the links a batch's senders put a message on (not self-loops, and free:
  a link still transmitting an earlier model skips this one);
- :func:`add_messages`: the bytes sent per sender, and the messages not lost appended with their
  rows gathered from the broadcast rows;
- :func:`deliver_due`: the messages that arrived by now and by their receiver's cutoff; on each
  link the last of them replaces what the receiver held there (its rows into the inbox, the
  sender's step count, the held flag), the bytes received are counted, and the messages still
  on their way are kept in order.

:class:`p2pmtl.network.protocols.AsyncGossip` uses them with the compiled round (CPU float64
rows); its numpy code (``kernel = "torch"``) stays the reference: both leave the same inbox,
held flags, step counts and accounts after every batch (``tests/test_kernels.py``).

Links are FIFO (:meth:`p2pmtl.network.model.NetworkModel.send` never lets a message arrive before
an earlier one on its link) and messages are kept in the order they were sent, so on each link
the last message in (arrival, send call) order is the one with the highest position.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from numba import njit


@njit(cache=True, boundscheck=False, nogil=True)
def out_edges(fire, out_starts, out_counts, out_order, is_self, link_free, at, src):
    """The out-edges of the agents ``fire`` (in that order; each agent's in ``out_order``
    order) that are not self-loops and whose link is free by the sender's send time
    ``at[sender]``."""
    total = 0
    for k in fire:
        total += out_counts[k]
    out = np.empty(total, dtype=np.int64)
    w = 0
    for k in fire:
        for p in range(out_starts[k], out_starts[k] + out_counts[k]):
            e = out_order[p]
            if not is_self[e] and link_free[e] <= at[src[e]]:
                out[w] = e
                w += 1
    return out[:w]


@njit(cache=True, boundscheck=False, nogil=True)
def add_messages(eids, arrival, lost, src, iters, sent, n0, message_bytes, acc_sent, count,
                 f_arrival, f_edge, f_step, f_values, size):
    """Messages put on the links ``eids`` (arriving at ``arrival``; ``lost`` ones are dropped):
    ``acc_sent[k] += message_bytes * (messages k sent)``; the others appended at ``size``
    (arrival, edge, the sender's step count ``iters[k]``, lane rows ``sent[k + n0 * lane]``).
    ``count`` ([N0] int64, all 0) is scratch space, left all 0. Returns the new size."""
    for j in range(eids.size):
        count[src[eids[j]]] += 1
    for j in range(eids.size):
        k = src[eids[j]]
        c = count[k]
        if c > 0:
            acc_sent[k] += message_bytes * c
            count[k] = 0
    lanes, dim = f_values.shape[1], f_values.shape[2]
    w = size
    for j in range(eids.size):
        if lost[j]:
            continue
        e = eids[j]
        k = src[e]
        f_arrival[w] = arrival[j]
        f_edge[w] = e
        f_step[w] = iters[k]
        for lane in range(lanes):
            for d in range(dim):
                f_values[w, lane, d] = sent[k + n0 * lane, d]
        w += 1
    return w


@njit(cache=True, boundscheck=False, nogil=True)
def deliver_due(f_arrival, f_edge, f_step, f_values, size, dst, cutoff, t, rejoined, e0,
                has, held_iter, inbox, acc_received, message_bytes, count, last):
    """Deliver the first ``size`` messages in flight that arrived by ``t`` and by their
    receiver's ``cutoff``; one that arrived before its receiver came back online
    (``rejoined``) is lost. On each link that got a message, the last one (the highest
    position) is held: ``has``, ``held_iter`` (its sender's step count) and its lane rows in
    ``inbox [lanes * E0, D]`` (row ``e + E0 * lane``); ``acc_received[k] += message_bytes *
    (messages k received)``. The messages not due are moved to the front, in order. ``count``
    ([N0] int64, all 0) and ``last`` ([E0] int64, all -1) are scratch space, left as they came.
    Returns (the number left in flight, whether any message was due)."""
    links = np.empty(size, dtype=np.int64)
    held = 0
    any_due = False
    for i in range(size):
        e = f_edge[i]
        k = dst[e]
        a = f_arrival[i]
        if a <= t and a <= cutoff[k]:
            any_due = True
            if a >= rejoined[k]:
                count[k] += 1
                if last[e] < 0:
                    links[held] = e
                    held += 1
                last[e] = i
    if not any_due:
        return size, False
    lanes, dim = f_values.shape[1], f_values.shape[2]
    for j in range(held):
        e = links[j]
        i = last[e]
        last[e] = -1
        has[e] = True
        held_iter[e] = f_step[i]
        for lane in range(lanes):
            for d in range(dim):
                inbox[e + e0 * lane, d] = f_values[i, lane, d]
        k = dst[e]
        c = count[k]
        if c > 0:
            acc_received[k] += message_bytes * c
            count[k] = 0
    w = 0
    for i in range(size):
        e = f_edge[i]
        a = f_arrival[i]
        if a <= t and a <= cutoff[dst[e]]:
            continue
        if w != i:
            f_arrival[w] = a
            f_edge[w] = e
            f_step[w] = f_step[i]
            for lane in range(lanes):
                for d in range(dim):
                    f_values[w, lane, d] = f_values[i, lane, d]
        w += 1
    return w, True


class CompiledFlight:
    """The messages in flight of asynchronous gossip on the compiled path, in arrays that grow
    by doubling: ``arrival``, ``edge``, ``sender_step`` and ``values [capacity, lanes, D]``
    (float64), the first :attr:`size` of them live, in the order they were sent."""

    def __init__(self, n0: int, e0: int, lanes: int) -> None:
        self.n0, self.e0, self.lanes = n0, e0, lanes
        self.size = 0
        self.arrival = np.empty(0)
        self.edge = np.empty(0, dtype=np.int64)
        self.sender_step = np.empty(0)
        self.values: Optional[np.ndarray] = None
        self._count = np.zeros(n0, dtype=np.int64)
        self._last = np.full(e0, -1, dtype=np.int64)

    def _reserve(self, extra: int, dim: int) -> None:
        need = self.size + extra
        if self.values is not None and need <= self.arrival.size:
            return
        cap = max(need, 2 * self.arrival.size, 64)
        grow = lambda a, shape: np.concatenate([a[:self.size], np.empty(shape, a.dtype)])  # noqa: E731
        self.arrival = grow(self.arrival, cap - self.size)
        self.edge = grow(self.edge, cap - self.size)
        self.sender_step = grow(self.sender_step, cap - self.size)
        old = self.values if self.values is not None else np.empty((0, self.lanes, dim))
        self.values = grow(old, (cap - self.size, self.lanes, dim))

    def add(self, eids: np.ndarray, arrival: np.ndarray, lost: np.ndarray, src: np.ndarray, iters: np.ndarray,
            sent: np.ndarray, message_bytes: float, acc_sent: np.ndarray) -> tuple[int, int]:
        """Messages on the links ``eids`` (see :func:`add_messages`); returns the positions
        ``[start, stop)`` of those kept (not lost)."""
        self._reserve(len(eids), sent.shape[1])
        start = self.size
        self.size = add_messages(eids, arrival, lost, src, iters, sent, self.n0, float(message_bytes), acc_sent,
                                 self._count, self.arrival, self.edge, self.sender_step, self.values, start)
        return start, self.size

    def deliver(self, dst: np.ndarray, cutoff: np.ndarray, t: float, rejoined: np.ndarray, has: np.ndarray,
                held_iter: np.ndarray, inbox: np.ndarray, acc_received: np.ndarray, message_bytes: float) -> bool:
        """Deliver what is due (see :func:`deliver_due`); False when nothing was."""
        if not self.size:
            return False
        self.size, any_due = deliver_due(self.arrival, self.edge, self.sender_step, self.values, self.size, dst,
                                         cutoff, float(t), rejoined, self.e0, has, held_iter, inbox, acc_received,
                                         float(message_bytes), self._count, self._last)
        return any_due


@njit(cache=True, boundscheck=False, nogil=True)
def mean_staleness(fire, in_offsets, has, is_self, iters, src, held_iter, out):
    """``out[k]`` for each agent k in ``fire``: over the in-edges it holds a message on (not
    its self-loop), the mean of how many steps the sender has taken since the model held
    (``iters[sender] - held_iter[edge]``, summed in edge order); 0 when it holds none."""
    for k in fire:
        total = 0.0
        held = 0
        for e in range(in_offsets[k], in_offsets[k + 1]):
            if has[e] and not is_self[e]:
                total += iters[src[e]] - held_iter[e]
                held += 1
        out[k] = total / held if held > 0 else 0.0


@njit(cache=True, boundscheck=False, nogil=True)
def ready_agents(next_fire, in_offsets, src, lookahead):
    """:func:`p2pmtl.network.protocols.ready_agents` compiled: the agents ``k`` (ascending) due
    before ``min_e (next_fire[src[e]] + lookahead[e])`` over their in-edges ``e`` from other
    agents (CSR by receiver; none: no bound)."""
    n = next_fire.size
    out = np.empty(n, dtype=np.int64)
    w = 0
    for k in range(n):
        bound = np.inf
        for e in range(in_offsets[k], in_offsets[k + 1]):
            bound = min(bound, next_fire[src[e]] + lookahead[e])
        if next_fire[k] < bound:
            out[w] = k
            w += 1
    return out[:w]
