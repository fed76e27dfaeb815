"""The server's aggregator for a method: the configured pre-aggregation steps, then the
method's aggregator, with the Byzantine count ``f`` and the layer sizes it needs."""
from __future__ import annotations

import inspect

from ..robust.aggregators import AGGREGATORS, PRE_AGGREGATORS, make_aggregator
from .config import ServerConfig
from .federated import Method


def build_aggregator(method: Method, server: ServerConfig, rep_sizes: list[int], all_sizes: list[int]):
    """The server's aggregator for a method, after the configured pre-aggregation steps; ``f``
    goes to components that take it, layer sizes to the geometric median when it runs layer by
    layer."""
    params = dict(server.aggregator_params)
    segments = params.get("segments")
    if segments is not None and isinstance(segments, (list, tuple)) and all(isinstance(v, int) for v in segments):
        sizes = all_sizes if method.whole_model else rep_sizes
        if sum(segments) != sum(sizes):
            from ..validation import ConfigError

            raise ConfigError(
                f"server.aggregator_params.segments = {list(segments)} sum to {sum(segments)}, but method "
                f"{method.name!r} aggregates vectors of {sum(sizes)} parameters (layer sizes {list(sizes)})")
    takes_f = [AGGREGATORS.get(method.aggregator)] + [PRE_AGGREGATORS.get(p) for p in server.pre]
    if any("f" in inspect.signature(c.__init__).parameters for c in takes_f):
        params.setdefault("f", server.f)
    if method.aggregator == "geometric_median" and server.gm_layerwise:
        params.setdefault("segments", all_sizes if method.whole_model else rep_sizes)
    return make_aggregator(method.aggregator, pre=server.pre, **params)
