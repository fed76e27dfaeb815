"""One synchronous ATC round's receiving half, fused: the edge statistics, the weights of
the built-in rules and the combination (Li2020 eqs. 4, 9-10 and 3) in one numba kernel over
the receivers.

The torch path (:meth:`p2pmtl.engine.gossip.GossipEngine.consume`) makes about twenty passes
over ``[E]`` and ``[E, 2]`` tensors: the messages gathered onto the edges, the receivers'
samples gathered onto them, the dot products, the smoothing, the filter, the inverse scores,
their sums, the division, the weighted messages and their sums. At 10^6 agents (10^7 edges)
each pass is memory-bound, so the round costs many times the traffic it needs. The kernel
walks each receiver's contiguous in-edges (the edge list is sorted by receiver) three times
while they sit in cache, and reads each sender's row where it is used. Receivers run in
parallel (``prange``) on ``torch.get_num_threads()`` threads; each is independent, so the
numbers do not depend on the thread count.

**Bit-identical to the torch path.** Every value is computed with the same IEEE operations in
the same order: the row dots ``a0*b0 + a1*b1`` (torch's ``mul`` then ``mv`` by ones) of the
loss ``(c_k - u_k . psi_l)^2`` and of the squared distance ``||theta_k - psi_l||^2``, torch's
``lerp`` (a fused multiply-add, as its vectorized CPU kernel does: ``fma(nu, stat - phi,
phi)``, or ``fma(nu - 1, stat - phi, stat)`` for ``nu >= 0.5``), ``keep / max(phi,
sqrt(tiny))``, sums in edge order from 0 (torch's ``segment_reduce``), one division per weight,
and the weighted messages summed in edge order. A statistic that is not finite leaves its
score unchanged and drops its edge (the receiver's own edge always stays), as
:class:`~p2pmtl.rules.weights.RuleSet` does.

Where it applies (:func:`applies`): lanes whose rules are the built-in ``noncoop``,
``average``, ``distance`` and ``loss``, the weighted-average combine, no server roles, and a
float64 population of 2-D linear models exposing ``loss_terms()`` (target localization). Then
every round without per-edge forgeries runs compiled: :meth:`FusedRound.run` a synchronous round
whose messages are all finite and received by every agent (:func:`receive_round`),
:meth:`FusedRound.run_masked` one with lost messages, absent agents or non-finite rows (the
network model, hostile senders), and :meth:`FusedRound.run_held` every batch of asynchronous
gossip (:func:`receive_masked` over the firing agents' in-edges only, where the torch path
masks the whole world). Rounds with per-edge forgeries run the torch path.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic

from ..core.ops import all_finite
from .threads import launch

GossipEngine = Any  # p2pmtl.engine.gossip.GossipEngine (not imported: the engine imports this module)


TINY = sys.float_info.min ** 0.5  # inverse_score's floor, torch.finfo(float64).tiny ** 0.5


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (LLVM's fma), as torch's vectorized CPU lerp computes."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(inline="always")
def _lerp(p, stat, nu, small):
    """torch's ``lerp(p, stat, nu)`` (``small``: ``|nu| < 0.5``, its first formula)."""
    if small:
        return _fma(nu, stat - p, p)
    return _fma(nu - 1.0, stat - p, stat)


@njit(inline="always")
def _inverse(kept, p):
    """``keep / max(phi, sqrt(tiny))`` (:func:`p2pmtl.rules.weights.inverse_score`)."""
    return (1.0 if kept else 0.0) / (p if not p < TINY else TINY)


@njit(inline="always")
def _score(p, own, unfiltered, usable, is_own, self_only):
    """An edge's inverse score ``keep / max(phi, sqrt(tiny))``: kept when ``phi <= phi_kk`` (or
    the rule does not filter) and the statistic was usable; the own edge always, and only it
    when the rule is ``self_only`` (RuleSet's filter)."""
    kept = (p <= own or unfiltered) and usable
    if is_own:
        kept = True
    elif self_only:
        kept = False
    return _inverse(kept, p)


@njit(inline="always")
def _stat_of(kind, m0, m1, u0, u1, ck, own0, own1):
    """The statistic of a message ``(m0, m1)`` at receiver k: loss (kind 1)
    ``(c_k - u_k . m)^2`` or squared distance (kind 2) ``||theta_k - m||^2``, each as torch's
    mul-then-mv row dot rounds it."""
    if kind == 1:
        r = ck - (u0 * m0 + u1 * m1)
        return r * r
    d0 = own0 - m0
    d1 = own1 - m1
    return d0 * d0 + d1 * d1


@njit(inline="always")
def _edge_stat(kind, src_row, sent, u0, u1, ck, own0, own1):
    """The statistic of edge ``src_row -> k``: loss (kind 1) ``(c_k - u_k . psi_l)^2`` or squared
    distance (kind 2) ``||theta_k - psi_l||^2`` of the sender's row (:func:`_stat_of`)."""
    return _stat_of(kind, sent[src_row, 0], sent[src_row, 1], u0, u1, ck, own0, own1)


@njit(parallel=True, cache=True, boundscheck=False, nogil=True, error_model="numpy")
def receive_round(offsets, src, self_edge, sent, theta_old, u, c, phi, n0, stat_kind, unfiltered, self_only, nu,
                weights, theta):
    """Receivers ``k`` of the lanes' edge list (``offsets``, ``src``, ``self_edge``): new
    scores ``phi`` (in place), weights (into ``weights``) and models (into ``theta``) from the
    broadcast rows ``sent [N, 2]``, the models before this combination ``theta_old [N, 2]`` and
    the world's samples ``u [N0, 2]``, ``c [N0]``; per lane: ``stat_kind`` (0 none, 1 the loss,
    2 the squared distance), ``unfiltered``, ``self_only``, ``nu``."""
    n = offsets.size - 1
    for k in prange(n):
        lo, hi = offsets[k], offsets[k + 1]
        lane = k // n0
        i = k - lane * n0
        own_edge = self_edge[k]
        kind, unfiltered_j, self_only_j = stat_kind[lane], unfiltered[lane], self_only[lane]
        u0, u1, ck = u[i, 0], u[i, 1], c[i]
        own0, own1 = theta_old[k, 0], theta_old[k, 1]
        # 1. scores: phi <- lerp(phi, stat, nu) where the statistic is finite (torch's two lerp
        #    formulas, one loop each)
        usable_all = True
        if kind != 0:
            nu_j = nu[lane]
            if abs(nu_j) < 0.5:
                for e in range(lo, hi):
                    stat = _edge_stat(kind, src[e], sent, u0, u1, ck, own0, own1)
                    if math.isfinite(stat):
                        phi[e] = _lerp(phi[e], stat, nu_j, True)
                    else:
                        usable_all = False
            else:
                for e in range(lo, hi):
                    stat = _edge_stat(kind, src[e], sent, u0, u1, ck, own0, own1)
                    if math.isfinite(stat):
                        phi[e] = _lerp(phi[e], stat, nu_j, False)
                    else:
                        usable_all = False
        # 2. filter (keep phi_lk <= phi_kk) and inverse scores, summed in edge order
        own = phi[own_edge]
        total = 0.0
        if usable_all and not self_only_j:  # the own edge passes the filter by itself
            for e in range(lo, hi):
                p = phi[e]
                s = _inverse(p <= own or unfiltered_j, p)
                weights[e] = s
                total += s
        else:  # an infinite statistic drops its edge; the own edge always stays
            for e in range(lo, hi):
                usable = usable_all or math.isfinite(_edge_stat(kind, src[e], sent, u0, u1, ck, own0, own1))
                s = _score(phi[e], own, unfiltered_j, usable, e == own_edge, self_only_j)
                weights[e] = s
                total += s
        # 3. normalise and combine: theta_k = sum_l a_lk psi_l, in edge order
        t0 = 0.0
        t1 = 0.0
        for e in range(lo, hi):
            w = weights[e] / total
            weights[e] = w
            src_row = src[e]
            t0 += w * sent[src_row, 0]
            t1 += w * sent[src_row, 1]
        theta[k, 0] = t0
        theta[k, 1] = t1


@njit(inline="always")
def _masked_message(e, own_edge, lane, e0, k, src, sent, has, inbox, use_inbox, delivered, use_delivered):
    """What receiver ``k`` holds on its lane edge ``e``, as the torch path's masked messages give
    it: ``(m0, m1, valid)``. Its own edge carries its own row (valid when finite and, with
    ``use_delivered``, delivered). Another edge carries, in asynchronous gossip (``use_inbox``),
    the stored row of a held edge (``has``), else the sender's row where ``delivered`` (or
    always); valid when finite, zeros otherwise (the torch path zeroes invalid messages)."""
    we = e - lane * e0
    if e == own_edge:
        m0, m1 = sent[k, 0], sent[k, 1]
        return m0, m1, (not use_delivered or delivered[we]) and math.isfinite(m0) and math.isfinite(m1)
    if use_inbox:  # one return type on every path: numba's code for mixed returns was 9x slower
        held = has[we]
        row = e if held else 0
        m0, m1 = inbox[row, 0], inbox[row, 1]
    else:
        held = not use_delivered or delivered[we]
        row = src[e]
        m0, m1 = sent[row, 0], sent[row, 1]
    if held and math.isfinite(m0) and math.isfinite(m1):
        return m0, m1, True
    return 0.0, 0.0, False


@njit(inline="always")
def _receive_masked_one(k, offsets, src, self_edge, sent, theta_old, u, c, phi, n0, e0, stat_kind, unfiltered,
                        self_only, nu, has, inbox, use_inbox, delivered, use_delivered, weights, theta):
    """Receiver ``k`` (a lane node id) of :func:`receive_masked`."""
    lo, hi = offsets[k], offsets[k + 1]
    lane = k // n0
    i = k - lane * n0
    own_edge = self_edge[k]
    kind, unfiltered_j, self_only_j = stat_kind[lane], unfiltered[lane], self_only[lane]
    u0, u1, ck = u[i, 0], u[i, 1], c[i]
    own0, own1 = theta_old[k, 0], theta_old[k, 1]
    nu_j = nu[lane]
    small = abs(nu_j) < 0.5
    if kind != 0:
        for e in range(lo, hi):
            m0, m1, valid = _masked_message(e, own_edge, lane, e0, k, src, sent, has, inbox, use_inbox, delivered, use_delivered)
            if valid:
                stat = _stat_of(kind, m0, m1, u0, u1, ck, own0, own1)
                if math.isfinite(stat):
                    phi[e] = _lerp(phi[e], stat, nu_j, small)
    own = phi[own_edge]
    total = 0.0
    for e in range(lo, hi):
        m0, m1, valid = _masked_message(e, own_edge, lane, e0, k, src, sent, has, inbox, use_inbox, delivered, use_delivered)
        usable = valid
        if valid and kind != 0:
            usable = math.isfinite(_stat_of(kind, m0, m1, u0, u1, ck, own0, own1))
        s = _score(phi[e], own, unfiltered_j, usable, e == own_edge, self_only_j)
        weights[e] = s
        total += s
    t0 = 0.0
    t1 = 0.0
    for e in range(lo, hi):
        w = weights[e] / total
        weights[e] = w
        m0, m1, valid = _masked_message(e, own_edge, lane, e0, k, src, sent, has, inbox, use_inbox, delivered, use_delivered)
        t0 += w * m0
        t1 += w * m1
    theta[k, 0] = t0
    theta[k, 1] = t1


@njit(parallel=True, cache=True, boundscheck=False, nogil=True, error_model="numpy")
def receive_masked(receivers, offsets, src, self_edge, sent, theta_old, u, c, phi, n0, e0, stat_kind, unfiltered,
                   self_only, nu, has, inbox, use_inbox, delivered, use_delivered, weights, theta):
    """The combination of the agents ``receivers`` (lane node ids) from what each holds
    (:func:`_masked_message`: the stored rows of asynchronous gossip, or the sent rows where
    delivered and finite) with the weights of its lane's rule, the torch path's masked branch (a
    statistic counts where the message is valid and the statistic finite; the own edge always
    stays). Other receivers are left to the caller."""
    for r in prange(receivers.size):
        _receive_masked_one(receivers[r], offsets, src, self_edge, sent, theta_old, u, c, phi, n0, e0, stat_kind,
                            unfiltered, self_only, nu, has, inbox, use_inbox, delivered, use_delivered, weights, theta)


# Batches up to SERIAL_MAX_EDGES edges: one thread, no pool launch (the launch costs about
# 0.13 ms). Built with parallel=True all the same, over a plain range: numba's parallel
# pipeline compiles this loop about 10x faster per edge than its serial one (measured: 52
# receivers, 520 edges, 7.6 us against 86 us; 10,000 edges 119 us, against 188 us for the
# parallel kernel on 2 threads).
@njit(parallel=True, cache=True, boundscheck=False, nogil=True, error_model="numpy")
def receive_masked_serial(receivers, offsets, src, self_edge, sent, theta_old, u, c, phi, n0, e0, stat_kind,
                          unfiltered, self_only, nu, has, inbox, use_inbox, delivered, use_delivered, weights, theta):
    """:func:`receive_masked` on the calling thread."""
    for r in range(receivers.size):
        _receive_masked_one(receivers[r], offsets, src, self_edge, sent, theta_old, u, c, phi, n0, e0, stat_kind,
                            unfiltered, self_only, nu, has, inbox, use_inbox, delivered, use_delivered, weights, theta)


SERIAL_MAX_EDGES = 20_000


def applies(engine: GossipEngine) -> Optional[str]:
    """None when the kernel can run this engine's synchronous steps, else why not."""
    pop = engine.pop
    if not hasattr(pop, "loss_terms"):
        return f"task {type(pop).__name__} has no loss_terms()"
    if pop.dtype != torch.float64 or getattr(pop, "theta", None) is None or pop.theta.shape[1] != 2:
        return "the kernel runs float64 2-D linear models"
    if pop.theta.device.type != "cpu" or engine.edges.src.device.type != "cpu":
        return f"the kernel runs on the CPU; this engine is on {pop.theta.device}"
    if engine.general or engine.slow_combines or engine.roles is not None:
        return "a rule with its own scores, a combine step other than the weighted average, or server roles"
    if any(r.needs not in (None, "loss", "distance") for r in engine.rules):
        return "a rule with a statistic other than the loss or the distance"
    return None


class FusedRound:
    """The compiled receiving half of an engine's synchronous round (see the module text)."""

    def __init__(self, engine: GossipEngine) -> None:
        why = applies(engine)
        if why is not None:
            raise ValueError(f"the fused kernel does not apply: {why}")
        e = engine.edges
        self.offsets, self.src, self.self_edge = e.offsets.numpy(), e.src.numpy(), e.self_edge.numpy()
        lanes = engine.rules
        self.stat_kind = np.array([{None: 0, "loss": 1, "distance": 2}[r.needs] for r in lanes], dtype=np.int8)
        self.unfiltered = np.array([not r.filtered for r in lanes])
        self.self_only = np.array([r.self_only for r in lanes])
        self.nu = np.array([r.nu for r in lanes], dtype=np.float64)
        self.rounds = 0  # rounds this kernel ran (the others went to the torch path)

    def run(self, engine: GossipEngine, sent: torch.Tensor) -> bool:
        """Weights and combination of one synchronous round from the broadcast rows ``sent``;
        False (nothing done) when a row is not finite: the torch path handles those."""
        if not all_finite(sent):
            return False
        pop, rs = engine.pop, engine.rule_set
        u, c = pop.loss_terms()
        weights = rs.ws.get("weights", rs.phi.shape, rs.phi.dtype)
        theta = pop.next_theta()
        with launch():
            receive_round(self.offsets, self.src, self.self_edge, sent.contiguous().numpy(),
                          pop.theta.contiguous().numpy(), u.contiguous().numpy(), c.contiguous().numpy(),
                          rs.phi.numpy(), engine.n0, self.stat_kind, self.unfiltered, self.self_only, self.nu,
                          weights.numpy(), theta.numpy())
        pop.theta = theta
        engine.weights = weights
        self.rounds += 1
        return True

    def run_held(self, engine: GossipEngine, sent: torch.Tensor, fire: np.ndarray, has: np.ndarray,
                 inbox: Optional[torch.Tensor]) -> None:
        """Asynchronous gossip's receiving half for the world agents ``fire`` (in every lane):
        each combines its own row ``sent`` and the stored rows ``inbox [M*E0, 2]`` of the world
        edges it holds (``has [E0]``); every other agent keeps its model (``psi + 0``, as the
        torch path's sum of its own row with zeros gives it) and its scores, and puts weight 1
        on itself. The numbers of :meth:`GossipEngine.consume` on the same masked messages."""
        self._masked(engine, sent, fire, has=has, inbox=inbox)

    def run_masked(self, engine: GossipEngine, sent: torch.Tensor, delivered: Optional[torch.Tensor],
                   active: Optional[torch.Tensor]) -> None:
        """A synchronous round with masks: the messages ``delivered`` ([E0] bool, world edges;
        None: all) and finite, combined by the ``active`` agents ([N0] bool; None: all); the
        others keep their models and scores. The numbers of :meth:`GossipEngine.consume` on
        :meth:`GossipEngine.messages` of the same masks."""
        fire = np.arange(engine.n0) if active is None else np.flatnonzero(active.numpy())
        self._masked(engine, sent, fire, delivered=None if delivered is None else delivered.numpy(),
                     everyone=active is None)

    def _masked(self, engine: GossipEngine, sent: torch.Tensor, fire: np.ndarray, has=None, inbox=None,
                delivered=None, everyone: bool = False) -> None:
        pop, rs = engine.pop, engine.rule_set
        u, c = pop.loss_terms()
        weights = rs.ws.get("weights", rs.phi.shape, rs.phi.dtype)
        theta = pop.next_theta()
        if not everyone:  # the others: weight 1 on themselves, their own row plus 0
            weights.zero_()
            weights.numpy()[self.self_edge] = 1.0  # numpy's small scatter: a third of torch's cost
            torch.add(sent, 0.0, out=theta)
        receivers = (fire[None, :] + engine.n0 * np.arange(engine.lanes)[:, None]).ravel().astype(np.int64)
        # asynchronous gossip (``has`` given) reads what each edge holds, even before the first
        # delivery (no inbox yet: nothing held but the own row), never the senders' current rows
        use_inbox, use_delivered = has is not None, delivered is not None
        rows = inbox.numpy() if inbox is not None else np.zeros((1, 2), dtype=sent.numpy().dtype)
        has = has if has is not None else np.zeros(1, dtype=bool)
        delivered = delivered if use_delivered else np.zeros(1, dtype=bool)
        edges = receivers.size * engine.edges.num_edges / engine.edges.num_nodes  # about, on average degrees
        kernel = receive_masked_serial if edges <= SERIAL_MAX_EDGES else receive_masked
        args = (receivers, self.offsets, self.src, self.self_edge, sent.contiguous().numpy(),
                pop.theta.contiguous().numpy(), u.contiguous().numpy(), c.contiguous().numpy(), rs.phi.numpy(),
                engine.n0, engine.e0, self.stat_kind, self.unfiltered, self.self_only, self.nu, has, rows, use_inbox,
                delivered, use_delivered, weights.numpy(), theta.numpy())
        if kernel is receive_masked:
            with launch():
                kernel(*args)
        else:  # the serial build never launches numba's pool
            kernel(*args)
        pop.theta = theta
        engine.weights = weights
        self.rounds += 1
