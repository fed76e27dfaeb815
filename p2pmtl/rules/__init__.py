"""Gossip rules: weight rules (Li2020's four on a fused path, user rules on a general
vectorized path) and combine steps. Layer: above core.
"""

# the robust gossip rules register themselves (RULES, COMBINES) whenever any rules module is used
from . import robust_gossip  # noqa: E402,F401
