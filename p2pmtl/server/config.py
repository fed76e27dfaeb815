"""The ``[server]`` table: BR-MTRL and its baselines in server mode."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..tasks.client_split import MetaTestConfig
from ..validation import Strict, registered


SCHEMES = ("fedavg", "fedper", "fedrep", "br-mtrl")


class ServerConfig(Strict):
    """Server mode (BR-MTRL, Le and Moothedath 2025, Algorithm 1). Methods are
    ``scheme[+aggregator]``: schemes fedavg (one global model), fedper (representation and head
    trained together), fedrep (alternating, mean), br-mtrl (alternating, robust aggregator);
    aggregators from ``p2pmtl list`` (gm = geometric_median)."""

    methods: list[str] = Field(["fedavg", "fedper", "fedrep", "fedavg+gm", "fedavg+krum", "fedper+gm",
                                "fedper+krum", "br-mtrl+gm", "br-mtrl+krum"],
                               description="methods compared, scheme[+aggregator]: schemes fedavg, fedper, "
                                           "fedrep, br-mtrl (needs an aggregator)")
    alpha: float = Field(0.2, gt=0, le=1, description="fraction of clients chosen each round")
    tau_h: int = Field(10, ge=0, description="head epochs (or steps) with the representation fixed")
    tau_phi: int = Field(1, ge=0, description="representation epochs (or steps) with the head fixed")
    tau_joint: int = Field(11, ge=1, description="fedavg/fedper: joint epochs (or steps); paper: tau_h + tau_phi")
    unit: Literal["epochs", "steps"] = Field(
        "epochs", description="what tau_h, tau_phi and tau_joint count: epochs over the client's data or "
                              "mini-batch steps")
    f: int = Field(0, ge=0, description="Byzantine clients the aggregator assumes (Krum, trimmed mean)")
    gm_layerwise: bool = Field(True, description="geometric median layer by layer (BR-MTRL's choice)")
    pre: list[str] = Field(default_factory=list,
                           description="pre-aggregation steps before every method's aggregator, e.g. ['nnm']")
    aggregator_params: dict[str, Any] = Field(default_factory=dict, description="extra aggregator settings")
    meta_test: MetaTestConfig = Field(MetaTestConfig(), description="federated_images: head-only training of "
                                                                    "unseen clients at the end")
    placement: Literal["parallel", "sequential"] = Field(
        "parallel", description="with [network]: clients on their own machines (parallel) or trained "
                                "one after another on one machine (sequential; BR-MTRL Table I)")

    @field_validator("pre")
    @classmethod
    def _pre(cls, v):
        from ..robust.aggregators import PRE_AGGREGATORS

        return registered(v, PRE_AGGREGATORS)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("give at least one method, e.g. ['fedavg', 'br-mtrl+gm']")
        for m in v:
            scheme, _, agg = m.partition("+")
            if scheme not in SCHEMES:
                raise ValueError(f"method {m!r}: scheme {scheme!r} unknown; allowed: {', '.join(SCHEMES)}")
            if scheme == "br-mtrl" and not agg:
                raise ValueError(f"method {m!r}: br-mtrl needs an aggregator, e.g. br-mtrl+gm")
        return v
