"""p2pmtl: decentralized peer-to-peer multi-task learning with Byzantine agents.

ATC diffusion with the loss-based filtered weights of Li, Abbas and Koutsoukos (NeurIPS 2020),
compared with non-cooperation, averaging and distance-based weights, on a SimPy clock.
"""
__version__ = "0.1.0"
