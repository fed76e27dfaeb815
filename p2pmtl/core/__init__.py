"""The shared data structures: the receiver-sorted edge list (:class:`~p2pmtl.core.edges.EdgeIndex`),
per-round messages and a few tensor ops. Layer: the bottom (imports nothing of p2pmtl).
"""
