"""Server mode (BR-MTRL, Le and Moothedath 2025): the ``[server]`` config, the CNN and linear
harnesses, the server's aggregator and the scenario runner. Layer: above network.
"""
