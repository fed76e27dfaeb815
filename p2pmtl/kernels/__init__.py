"""Compiled kernels for the hot paths: large synchronous runs and the aggregators' selections
(numba, a dependency; where it cannot be installed, ``auto`` runs torch).

A kernel fuses what the torch path does in about twenty memory-bound passes over the edge
list into one pass per receiver, with the same floating-point operations in the same order,
so its numbers are bit-identical to the torch path's (``tests/test_kernels.py``). The engine
uses one only where it applies (:func:`p2pmtl.kernels.fused_round.applies`) and falls back to
torch everywhere else; the ``kernel`` config key chooses: ``auto`` (the kernel for large
worlds when numba is installed: from :data:`AUTO_MIN_EDGES` edges, or
:data:`AUTO_MIN_EDGES_ASYNC` in asynchronous gossip), ``numba`` (wherever it applies) or
``torch`` (never).

Asynchronous gossip on the compiled round also keeps its messages in flight compiled
(:mod:`p2pmtl.kernels.delivery`: preallocated arrays, one call to send a batch's messages and
one to deliver what arrived), leaving the numpy code's inbox and accounts after every batch.

The robust aggregators take their coordinate-wise order statistics (the coordinate median, the
centre of the Gram distances behind Krum, Multi-Krum, NNM, MDA, Bulyan and CAF) from a
sorting network run across the columns (:mod:`p2pmtl.kernels.column_ranks`) on the CPU, with
up to 128 rows: the exact values numpy's introselect gives, 1.3-3.8x sooner than numpy's sort
and 2.3-7.4x sooner than its introselect (21 to 128 rows). It needs no setting (numpy's sort
without numba or above 128 rows).

Large worlds are also built and fed by kernels: the random geometric family's pair order and
random in-neighbour cap by counting sorts linear in the edges (:mod:`p2pmtl.kernels.edge_order`,
from about a million edges: the graphs numpy's sorts build), and the target task's float64 noise
with the Box-Muller transform on several threads (:mod:`p2pmtl.kernels.normal_draws`, from
10,000 agents: torch's ``normal_`` numbers).

The kernels run on as many of numba's threads as torch is set to, launched by
:mod:`p2pmtl.kernels.threads` (which keeps torch's thread count as it was: numba's OpenMP layer
resets it when it starts). Launches take turns behind a lock (numba's own ``workqueue`` layer
takes one at a time): run experiments side by side as processes (``jobs``, sweeps) rather than
as threads of one process.
"""
from __future__ import annotations

import importlib.util

KERNELS = ("auto", "torch", "numba")
AUTO_MIN_EDGES = 100_000  # `auto` compiles (or loads from numba's cache) the kernel from this size
AUTO_MIN_EDGES_ASYNC = 5_000  # asynchronous gossip: the compiled round skips whole-world passes per batch


def numba_available() -> bool:
    """True when numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def check_kernel_spec(value: str) -> str:
    """The ``kernel`` config value, or a ValueError naming it and what is allowed."""
    if value not in KERNELS:
        raise ValueError(f"kernel = {value!r}: allowed: {', '.join(KERNELS)}")
    if value == "numba" and not numba_available():
        raise ValueError("kernel = 'numba' needs the numba package, which is not installed: pip install numba, "
                         "or use kernel = 'auto' (torch without numba) or 'torch'")
    return value


def wants_kernel(spec: str, num_edges: int, asynchronous: bool = False) -> bool:
    """Whether an engine with ``num_edges`` edges (all lanes) should use the compiled kernel;
    ``asynchronous``: the engine runs asynchronous gossip, where the kernel pays off sooner (it
    combines each batch's firing agents alone instead of masking the whole world)."""
    if spec == "torch":
        return False
    if spec == "numba":
        return True
    return num_edges >= (AUTO_MIN_EDGES_ASYNC if asynchronous else AUTO_MIN_EDGES) and numba_available()
