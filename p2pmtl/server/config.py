"""The ``[server]`` table: BR-MTRL and its baselines in server mode."""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from ..tasks.client_split import MetaTestConfig
from ..validation import Strict, registered


SCHEMES = ("fedavg", "fedper", "fedrep", "br-mtrl", "dsgd")

PLACEMENTS = ("worker", "server", "none")

_DSGD = re.compile(r"dsgd(?:-(worker|server|none)((?:\d+(?:\.\d*)?|\.\d+))?)?")


def parse_dsgd(scheme: str) -> Optional[tuple[Optional[str], Optional[float]]]:
    """``(placement, beta)`` of a dsgd scheme token (None where the name leaves it to the
    ``[server]`` table), or None when ``scheme`` is not a dsgd token.

    ``dsgd`` -> (None, None); ``dsgd-worker`` -> ("worker", None); ``dsgd-worker0.9`` ->
    ("worker", 0.9); ``dsgd-none`` -> ("none", None). Raises ValueError for a malformed token
    or a beta outside [0, 1) (``dsgd-none`` takes no beta)."""
    if not scheme.startswith("dsgd"):
        return None
    m = _DSGD.fullmatch(scheme)
    if m is None:
        raise ValueError(f"scheme {scheme!r}: allowed dsgd forms: dsgd, dsgd-worker, dsgd-server, dsgd-none, "
                         f"optionally with beta in [0, 1) after worker or server (e.g. dsgd-worker0.9)")
    placement, beta = m.group(1), m.group(2)
    if beta is None:
        return placement, None
    if placement == "none":
        raise ValueError(f"scheme {scheme!r}: dsgd-none has no momentum, so no beta")
    b = float(beta)
    if not 0.0 <= b < 1.0:
        raise ValueError(f"scheme {scheme!r}: beta = {b:g}; allowed: a real in [0, 1)")
    return placement, b


class ServerConfig(Strict):
    """Server mode (BR-MTRL, Le and Moothedath 2025, Algorithm 1; RESAM, Farhadkhani et al.
    2022). Methods are ``scheme[+aggregator]``: schemes fedavg (one global model), fedper
    (representation and head trained together), fedrep (alternating, mean), br-mtrl
    (alternating, robust aggregator), dsgd (distributed SGD: workers send momenta or gradients,
    see :mod:`p2pmtl.server.momentum`); aggregators from ``p2pmtl list`` (gm = geometric_median)."""

    methods: list[str] = Field(["fedavg", "fedper", "fedrep", "fedavg+gm", "fedavg+krum", "fedper+gm",
                                "fedper+krum", "br-mtrl+gm", "br-mtrl+krum"],
                               description="methods compared, scheme[+aggregator]: schemes fedavg, fedper, "
                                           "fedrep, br-mtrl (needs an aggregator), dsgd (distributed SGD with "
                                           "momentum; dsgd-worker0.9, dsgd-server0.9, dsgd-none fix the "
                                           "placement and beta in the name)")
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

    momentum: Literal["worker", "server", "none"] = Field(
        "worker", description="dsgd methods: where the momentum sits: worker (RESAM: workers send momenta), "
                              "server (one momentum on the aggregate) or none (plain distributed SGD)")
    beta: float = Field(0.9, ge=0, lt=1, description="dsgd methods: momentum factor, m <- beta m + (1 - beta) g")
    lr: float = Field(0.1, gt=0, le=1e6, allow_inf_nan=False,
                      description="dsgd methods: the server's step size gamma, theta <- theta - gamma R")
    weight_decay: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False,
                                description="dsgd methods: honest workers add weight_decay * theta to each "
                                            "gradient")

    log_uploads: int = Field(0, ge=0, description="save the honest uploads of every k-th round (0: never) to "
                                                  "arrays/uploads__SCENARIO__METHOD.npz, for p2pmtl robustness "
                                                  "--uploads")

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
            if parse_dsgd(scheme) is not None:  # dsgd, dsgd-worker0.9, ...: errors raised there
                continue
            if scheme not in SCHEMES:
                raise ValueError(f"method {m!r}: scheme {scheme!r} unknown; allowed: {', '.join(SCHEMES)}")
            if scheme == "br-mtrl" and not agg:
                raise ValueError(f"method {m!r}: br-mtrl needs an aggregator, e.g. br-mtrl+gm")
        return v
