"""The two pydantic bases every core model derives from (one public name each, no private
base imported across modules).

`WireModel` is the shape of everything the core writes (status, decisions, GPU-hours):
camelCase on the wire, immutable, `wire()` for the JSON form. `SpecModel` is the same for
what users write (the ladder spec, recorded results), and additionally rejects unknown
fields, so a typo in a YAML key is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML / on the API server (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SpecModel(WireModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
