"""Graph families (networkx generators with declared parameter ranges), named topologies and
the ``[graph]`` config. Layer: above core.
"""
