"""Run folders: safe names and locks, records (metrics.csv, whose text a helper process may
format, curves.csv, summary.json with its status) and figures drawn from those files alone.
Layer: above core.
"""
