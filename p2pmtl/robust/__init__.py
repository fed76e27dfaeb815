"""Byzantine robustness components: aggregators and pre-aggregation steps (server side, or a
node's robust combine) and attacks. Layer: above core.
"""
