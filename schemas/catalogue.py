"""The local schema catalogue: loads the bundled `.avsc` files and gives each a stable id.

With no Schema Registry configured, ids must still be the same on every machine and every
run, so a record written by one worker can be read by another. The id is derived from the
schema's Parsing Canonical Form, so it changes only when the schema really changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from karma.schemas.models import RECORD_TYPES

# The current schema of each record type is `<schema_name>.avsc`, beside this module.
SCHEMA_FILES: dict[str, str] = {name: f"{name}.avsc" for name in RECORD_TYPES}


# Earlier versions still readable: bytes written with them keep decoding after an upgrade.
SCHEMA_HISTORY: dict[str, tuple[str, ...]] = {
    # before soft_label; before score_a/b; before Candidate.model_version
    "preference": ("preference.v1.avsc", "preference.v2.avsc", "preference.v3.avsc"),
    # before prompt_id; before value_size; before models
    "dead_letter": ("dead_letter.v1.avsc", "dead_letter.v2.avsc", "dead_letter.v3.avsc"),
    # before error; before prompt_metadata; before model_version
    "response": ("response.v1.avsc", "response.v2.avsc", "response.v3.avsc"),
    "kin_pair": ("kin_pair.v1.avsc", "kin_pair.v2.avsc"),  # before prompt_metadata; before model_version
}


class UnknownSchemaError(KeyError):
    """A schema id that the catalogue has never seen."""


def load_avsc(name: str) -> dict[str, Any]:
    """The raw JSON of a bundled schema, by its short name (prompt, response, ...)."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise KeyError(f"no bundled schema named {name!r}; known: {sorted(SCHEMA_FILES)}") from None
    return _read_avsc(filename)


def _read_avsc(filename: str) -> dict[str, Any]:
    """A bundled .avsc file (current or earlier version), parsed as JSON."""
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
        self._name_by_id: dict[int, str] = {}  # current and historical ids -> short name
        for name in SCHEMA_FILES:
            self._id_by_name[name] = self.register(load_avsc(name))
            self._name_by_id[self._id_by_name[name]] = name
        for name, files in SCHEMA_HISTORY.items():
            for filename in files:
                self._name_by_id.setdefault(self.register(_read_avsc(filename)), name)

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

    def name_of(self, sid: int) -> str:
        """The short name (prompt, preference, ...) of the record type a schema id was written as:
        lets bytes of an unknown topic be decoded by their own header. A schema added with
        `register` is named after the current schema of the same Avro full name."""
        if sid in self._name_by_id:
            return self._name_by_id[sid]
        fullname = self.by_id(sid).get("name")  # raises UnknownSchemaError for an unseen id
        for name, current_id in self._id_by_name.items():
            if self._by_id[current_id].get("name") == fullname:
                return name
        raise UnknownSchemaError(f"schema id {sid} ({fullname}) is no karma record type")


@dataclass(frozen=True)
class SchemaVersion:
    version: int  # 1 is the first; the highest is the current schema, the one writers use
    filename: str
    schema_id: int
    avsc: dict[str, Any]


def versions(name: str) -> list[SchemaVersion]:
    """Every schema of a record type, oldest first: the earlier ones still decode."""
    files = (*SCHEMA_HISTORY.get(name, ()), SCHEMA_FILES[name])
    found = []
    for number, filename in enumerate(files, start=1):
        avsc = _read_avsc(filename)
        found.append(SchemaVersion(number, filename, schema_id(avsc), avsc))
    return found


@cache
def default_catalogue() -> SchemaCatalogue:
    return SchemaCatalogue()
