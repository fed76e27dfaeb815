"""Attacks tailored to gossip: per-receiver messages built from the graph itself.

``spectral``: the spectral heterogeneity attack of Gaucher, Dieuleveut and Hendrikx, "Unified
breakdown analysis for Byzantine robust gossip" (ICML 2025, arXiv:2410.10418), as written in
their reference implementation (github.com/renaudgaucher/Byzantine-Robust-Gossip,
``attacks/identical_sparse.py``, ``spectral``; the honest graph in ``topology.py``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.edges import EdgeIndex
from .attacks import ATTACKS, Attack, AttackContext, _choice, _real, honest_mask

_WEIGHTS = ("metropolis", "unit")


def honest_laplacian(edges: EdgeIndex, honest: torch.Tensor, nodes: torch.Tensor, weights: str) -> torch.Tensor:
    """The Laplacian ``L = D - A`` (float64, ``[len(nodes), len(nodes)]``) of the subgraph of
    ``edges`` induced by ``nodes`` (honest nodes of one run), taken as undirected: A_ij = w_ij
    when i -> j or j -> i is an edge (self loops ignored). ``weights``: ``"unit"`` (w = 1) or
    ``"metropolis"``, w_ij = 1 / (1 + max(d_i, d_j)), d the in-degree in the *whole* graph
    (Byzantine neighbours included) without the self loop; the reference code weighs its honest
    graph the same way, 1 / (1 + max(honest degrees) + Byzantine neighbours)."""
    n = nodes.numel()
    local = torch.full((edges.num_nodes,), -1, dtype=torch.long)
    local[nodes] = torch.arange(n)
    keep = honest[edges.src] & honest[edges.dst] & (edges.src != edges.dst)
    keep &= (local[edges.src] >= 0) & (local[edges.dst] >= 0)
    s, d = edges.src[keep], edges.dst[keep]
    if weights == "unit":
        w = torch.ones(s.numel(), dtype=torch.float64)
    else:
        deg = (edges.in_degree() - 1).to(torch.float64)
        w = 1.0 / (1.0 + torch.maximum(deg[s], deg[d]))
    a = torch.zeros((n, n), dtype=torch.float64)
    a[local[s], local[d]] = w
    a = torch.maximum(a, a.T)  # undirected: an edge in either direction
    return torch.diag(a.sum(1)) - a


def fiedler_vector(laplacian: torch.Tensor) -> torch.Tensor:
    """The unit eigenvector of ``laplacian`` for its smallest eigenvalue on the subspace
    orthogonal to the all-ones vector (the Fiedler vector; for a connected graph the eigenvector
    of the second-smallest eigenvalue), from ``torch.linalg.eigh`` of L + c J / n with c above
    every eigenvalue of L, so the constant vector is pushed to the top of the spectrum. Sign:
    its entry of largest magnitude (the first one among ties) is positive. With fewer than two
    nodes: zeros. (If the honest graph has two components the vector separates them, if the
    smallest such eigenvalue is repeated, e.g. on a ring, it is one vector of that eigenspace,
    the one ``eigh`` returns; the reference code draws one with a random start.)"""
    n = laplacian.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    c = 2.0 * float(laplacian.diagonal().max()) + 1.0  # > the largest eigenvalue (<= 2 max degree)
    _, vecs = torch.linalg.eigh(laplacian + c / n)
    v = vecs[:, 0]
    i = int(torch.argmax(v.abs()))
    return v if v[i] >= 0 else -v


@ATTACKS.register("spectral", "to each receiver: its own model plus eps v_k (v^T X_H), v the Fiedler vector of "
                              "the honest graph (Gaucher et al. 2025)")
class SpectralAttack(Attack):
    """Spectral heterogeneity (Gaucher, Dieuleveut and Hendrikx 2025; reference code
    ``attacks/identical_sparse.py``, ``spectral``): every Byzantine neighbour of a normal
    receiver k sends

        m_bk = psi_k + eps v_k (v^T X_H),

    X_H the stack of the normal agents' messages psi_h of k's run, v (unit norm) the Fiedler
    vector of the Laplacian of the honest subgraph of that run (:func:`honest_laplacian`,
    :func:`fiedler_vector`; ``weights = "metropolis"`` as in the paper's experiments, or
    ``"unit"``). v^T X_H is the component of the honest models along the slowest-mixing mode of
    the honest graph and v_k its share at k, so each receiver is pushed away from the honest
    agents on the other side of the graph's sparsest cut (eps > 0; eps < 0 pulls it towards
    them, the code's ``negative``): honest heterogeneity is amplified where gossip corrects it
    most slowly. v does not depend on its sign. The graph and the Byzantine set are fixed, so v
    is computed once per run (an ``eigh`` of an honest-size matrix per run) and reused.

    The reference code picks eps per receiver by a 16-evaluation line search that maximises
    the distance between the receiver's *defence* output and its honest gossip step; attacks
    here do not see the receivers' rule, so eps is a fixed parameter (the code's positive
    ``factor``). Byzantine receivers get their own model. Omniscient: knows the graph, the
    Byzantine set and every normal message. (Gossip mode only.)

    Worked example (unit weights, honest path 0 - 1 - 2 - 3, all in one run, 1-D models
    psi = (0, 1, 2, 3), eps = 1): v = (0.653, 0.271, -0.271, -0.653) (up to sign), v^T X_H =
    -2.230, so a Byzantine neighbour of node 0 sends 0 + 0.653 (-2.230) = -1.457 and one of
    node 3 sends 3 + 1.457 = 4.457: both ends pushed outwards."""

    knows = "omniscient: the graph, the Byzantine set and every normal message"
    gossip_only = True

    def __init__(self, *, eps: float = 1.0, weights: str = "metropolis") -> None:
        self.eps = _real("spectral", "eps", eps)
        self.weights = _choice("spectral", "weights", weights, _WEIGHTS)
        self._key: Optional[tuple] = None
        self._v: Optional[torch.Tensor] = None

    def vector(self, ctx: AttackContext) -> torch.Tensor:
        """``[N]`` float64: each normal node's entry of its run's Fiedler vector (0 on Byzantine
        nodes). Cached for the context's graph and Byzantine set."""
        e = ctx.edges
        key = (id(e), e.num_edges, tuple(ctx.byzantine.tolist()), tuple(ctx.run_of_node.tolist()))
        if self._v is None or self._key != key:
            honest = honest_mask(ctx)
            v = torch.zeros(e.num_nodes, dtype=torch.float64)
            for r in torch.unique(ctx.run_of_node).tolist():  # runs are few
                nodes = torch.nonzero(honest & (ctx.run_of_node == r)).flatten()
                v[nodes] = fiedler_vector(honest_laplacian(e, honest, nodes, self.weights))
            self._v, self._key = v, key
        return self._v

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.edges is None:
            raise ValueError("spectral attack needs a graph (gossip mode)")
        return ctx.honest[ctx.byzantine]

    def forge_edges(self, ctx: AttackContext, byz_edges: torch.Tensor) -> torch.Tensor:
        psi = ctx.honest
        v = self.vector(ctx).to(psi.dtype)
        runs = ctx.run_of_node
        proj = torch.zeros((int(runs.max()) + 1, psi.shape[1]), dtype=psi.dtype)
        proj.index_add_(0, runs, v.unsqueeze(1) * psi)  # v^T X_H per run (v = 0 off the honest nodes)
        k = ctx.edges.dst[byz_edges]
        return psi[k] + self.eps * v[k].unsqueeze(1) * proj[runs[k]]
