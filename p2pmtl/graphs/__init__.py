"""Graph families (networkx generators with declared parameter ranges), named topologies and
the ``[graph]`` config. Layer: above core.
"""
from . import hierarchy  # noqa: F401,E402  (registers the ``hierarchy`` family)
