"""From a config to results: configuration (every component's config model assembled into one),
the runner, sweeps, studies, plugins, worker processes and result readers.
Layer: below only bench, api and cli.
"""
