"""The network model on the SimPy clock: per-agent compute times, per-link latency and
bandwidth, losses, stragglers, churn, time-varying topologies, and the synchronous and
asynchronous protocols that drive the engine. Layer: above engine.
"""
