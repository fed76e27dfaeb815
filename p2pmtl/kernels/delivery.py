"""Asynchronous gossip's delivery scan, compiled: which messages in flight arrive now, how many
each receiver gets, and which message each link ends up holding, in one pass over the
messages instead of about twenty numpy calls (:meth:`p2pmtl.network.protocols.AsyncGossip._deliver`
uses it when numba is installed, its numpy code otherwise; both give the same arrays, tested).

Links are FIFO (:meth:`p2pmtl.network.model.NetworkModel.send` never lets a message arrive before
an earlier one on its link) and messages are kept in the order they were sent, so on each link
the last message in (arrival, send call) order is the one with the highest position."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, boundscheck=False, nogil=True)
def due_messages(arrival, edge, dst, cutoff, t, rejoined, received, last):
    """Messages ``i`` (arrival time ``arrival[i]`` on world edge ``edge[i]``, whose receiver is
    ``dst[edge[i]]``) that have arrived by ``t`` and by their receiver's ``cutoff``: returns
    (``due`` bool mask, the held message of each link that got one, by increasing position).
    A message that arrived before its receiver came back online (``rejoined``) is due but lost;
    the others add 1 to ``received[receiver]``. ``last`` ([E0] int64, all -1) is scratch space,
    left all -1."""
    m = arrival.size
    due = np.empty(m, dtype=np.bool_)
    links = np.empty(m, dtype=np.int64)
    count = 0
    for i in range(m):
        e = edge[i]
        k = dst[e]
        a = arrival[i]
        now = a <= t and a <= cutoff[k]
        due[i] = now
        if now and a >= rejoined[k]:
            received[k] += 1
            if last[e] < 0:
                links[count] = e
                count += 1
            last[e] = i
    held = np.empty(count, dtype=np.int64)
    for j in range(count):
        e = links[j]
        held[j] = last[e]
        last[e] = -1
    held.sort()
    return due, held
