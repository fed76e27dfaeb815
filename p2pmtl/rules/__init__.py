"""Gossip rules: weight rules (Li2020's four on a fused path, user rules on a general
vectorized path) and combine steps. Layer: above core.
"""
