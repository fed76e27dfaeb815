"""The ``[graph]`` table: a named topology or a family with its parameters."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .families import GRAPHS, check_family_params, load_topology


class GraphConfig(BaseModel):
    """Either ``topology = NAME`` (a spec in ``topologies/``) or ``family`` plus its parameters
    (see ``p2pmtl list``). Parameters given here override the named spec's; a ``family`` other
    than the spec's replaces the topology (``--set graph.family=star --set graph.n=11`` on a
    config that names one)."""

    model_config = ConfigDict(extra="allow")
    topology: Optional[str] = Field(None, description="a named spec (a TOML file in topologies/, e.g. li2020_target)")
    family: Optional[str] = Field(None, description="a graph family (`p2pmtl list`); its parameters are the other "
                                                    "keys of the table, e.g. n = 100")

    @model_validator(mode="after")
    def _resolve(self) -> "GraphConfig":
        params = dict(self.model_extra or {})
        family = self.family
        if self.topology is not None:
            try:
                spec = load_topology(self.topology)
            except KeyError as e:
                raise ValueError(str(e.args[0])) from None
            spec_family = spec.pop("family", None)
            if family is None or family == spec_family:
                family = spec_family
                params = {**spec, **params}
            else:
                self.topology = None  # replaced: none of the spec's parameters apply
        if family is None:
            raise ValueError("give graph.topology (a named spec) or graph.family")
        if family not in GRAPHS:
            raise ValueError(f"graph.family = {family!r}: unknown; allowed: {', '.join(GRAPHS.names())}")
        check_family_params(family, params)
        self.family = family
        for k in list((self.model_extra or {}).keys()):
            del self.model_extra[k]
        self.__pydantic_extra__.update(params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
