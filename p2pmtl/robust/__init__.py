"""Byzantine robustness components: aggregators and pre-aggregation steps (server side, or a
node's robust combine) and attacks. Layer: above core.
"""
from . import attack_family  # noqa: F401  (registers mimic, inf, alie_opt, ipm_opt)
from . import aggregator_family  # noqa: F401  (registers mda, meamed, monna, bulyan, smea, caf, bucketing, arc)
from . import gossip_attacks  # noqa: F401  (registers spectral)
