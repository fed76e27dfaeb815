"""The ``hierarchy`` graph family: clients under edge servers, optionally under one cloud server
(for servers as a node role, ``[roles]``: :mod:`p2pmtl.engine.roles`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from .families import GRAPHS

if TYPE_CHECKING:
    import networkx as nx

Count = Annotated[int, Field(ge=1, le=100_000)]


def _hierarchy_nodes(p: dict) -> int:
    return int(p.get("cloud", True)) + p.get("clusters", 4) * (1 + p.get("clients", 8))


@GRAPHS.register("hierarchy", "clients -> edge servers (-> one cloud server): a two-level tree for [roles]",
                 nodes=_hierarchy_nodes)
def hierarchy(*, clusters: Count = 4, clients: Count = 8, cloud: bool = True) -> nx.Graph:
    """Numbering: with ``cloud``, node 0 is the cloud server, nodes 1..clusters the edge servers
    (each linked to the cloud), then the clients of edge server 1, of edge server 2, ... (each
    linked to its edge server only). Without ``cloud`` the edge servers are nodes
    0..clusters-1, linked to each other (a complete graph: peers that average), then the clients.
    Undirected. Every node carries the attribute ``role`` (``"server"`` or ``"learner"``);
    the servers are ``list(range(clusters + cloud))``, what ``[roles] servers`` should list, the
    cloud first (the root of the default levels)."""
    import networkx as nx

    first = int(cloud)
    g = nx.Graph()
    n = first + clusters * (1 + clients)
    g.add_nodes_from(range(n))
    edge_servers = list(range(first, first + clusters))
    if cloud:
        g.add_edges_from((0, s) for s in edge_servers)
    else:
        g.add_edges_from((a, b) for i, a in enumerate(edge_servers) for b in edge_servers[i + 1:])
    k = first + clusters
    for s in edge_servers:
        g.add_edges_from((s, k + c) for c in range(clients))
        k += clients
    nx.set_node_attributes(g, {v: ("server" if v < first + clusters else "learner") for v in range(n)}, "role")
    return g
