"""Benchmarks (``p2pmtl bench``): the batched engine, aggregators and the network model against
the naive way, reported as ratios. Layer: the top (uses experiments).
"""
