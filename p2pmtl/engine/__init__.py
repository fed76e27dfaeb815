"""The synchronous ATC diffusion engine (Li2020 eqs. 2-3) over a batched *world* of runs and
lanes, a per-agent reference implementation, and the world's reproducible draws.
Layer: above core, rules, robust and tasks.
"""
