"""The local schema catalogue: loads the bundled `.avsc` files and gives each a stable id.

With no Schema Registry configured, ids must still be the same on every machine and every
run, so a record written by one worker can be read by another. The id is derived from the
schema's Parsing Canonical Form, so it changes only when the schema really changes.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

SCHEMA_FILES: dict[str, str] = {
    "prompt": "prompt.avsc",
    "response": "response.avsc",
    "kin_pair": "kin_pair.avsc",
    "preference": "preference.avsc",
    "dead_letter": "dead_letter.avsc",
}


# Earlier versions still readable: bytes written with them keep decoding after an upgrade.
SCHEMA_HISTORY: dict[str, tuple[str, ...]] = {
    "preference": ("preference.v1.avsc",),  # before soft_label
    "dead_letter": ("dead_letter.v1.avsc",),  # before prompt_id
}


class UnknownSchemaError(KeyError):
    """A schema id that the catalogue has never seen."""


def load_avsc(name: str) -> dict[str, Any]:
    """The raw JSON of a bundled schema, by its short name (prompt, response, ...)."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise KeyError(f"no bundled schema named {name!r}; known: {sorted(SCHEMA_FILES)}") from None
    return json.loads(resources.files("karma.schemas").joinpath(filename).read_text())


def schema_id(schema: dict[str, Any]) -> int:
    """A positive 31-bit id from the schema's canonical form (the registry's id space is int32)."""
    canonical = to_parsing_canonical_form(parse_schema(schema))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFF_FFFF


class SchemaCatalogue:
    """Maps schema ids to parsed schemas. Holds every bundled schema; old versions can be added."""

    def __init__(self) -> None:
        self._by_id: dict[int, Any] = {}
        self._id_by_name: dict[str, int] = {}
        for name in SCHEMA_FILES:
            self._id_by_name[name] = self.register(load_avsc(name))
        for filename in (f for files in SCHEMA_HISTORY.values() for f in files):
            self.register(json.loads(resources.files("karma.schemas").joinpath(filename).read_text()))

    def register(self, schema: dict[str, Any]) -> int:
        """Adds a schema (e.g. an older version, to read old bytes) and returns its id."""
        sid = schema_id(schema)
        self._by_id.setdefault(sid, parse_schema(schema))
        return sid

    def id_of(self, name: str) -> int:
        return self._id_by_name[name]

    def by_id(self, sid: int) -> Any:
        try:
            return self._by_id[sid]
        except KeyError:
            raise UnknownSchemaError(f"schema id {sid} is not in the local catalogue") from None

    def current(self, name: str) -> Any:
        return self._by_id[self._id_by_name[name]]


@cache
def default_catalogue() -> SchemaCatalogue:
    return SchemaCatalogue()
