"""Run folders: safe names and locks, records (metrics.csv, curves.csv, summary.json with its
status) and figures drawn from those files alone. Layer: above core.
"""
