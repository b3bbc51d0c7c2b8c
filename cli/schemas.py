"""`karma schemas`: what a producer or consumer in another language needs to speak to the
topics: each record type's schema id, version and .avsc, and how the bytes are framed."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from karma.cli.common import console, out
from karma.schemas.catalogue import SCHEMA_FILES, versions
from karma.schemas.models import RECORD_TYPES
from karma.streams.codecs import MAGIC_BYTE
from karma.streams.topics import TOPICS

FRAMING = (
    f"Framing (the Confluent wire format; no registry is needed, the ids are listed here): byte 0 is "
    f"the magic byte {MAGIC_BYTE:#04x}, bytes 1-4 the schema id as a big-endian unsigned 32-bit "
    "integer, then the record in Avro's binary encoding with that schema (schemaless: no container "
    "file header). Readers accept the current schema and every earlier version listed. "
    "Prompts may instead be UTF-8 JSON: an object with the prompt schema's fields (only `text` is "
    "required; `prompt_id`, when absent, is derived from text and source) or a bare JSON string."
)


def schema_catalogue() -> list[dict[str, Any]]:
    """Every record type: topics, current schema id and version, earlier versions, the .avsc."""
    entries = []
    for name in SCHEMA_FILES:
        known = versions(name)
        current = known[-1]
        entries.append(
            {
                "record": name,
                "avro_name": f"{current.avsc.get('namespace', '')}.{current.avsc['name']}".lstrip("."),
                "topics": [spec.name for spec in TOPICS if spec.record and spec.record.schema_name == name],
                "schema_id": current.schema_id,
                "version": current.version,
                "file": current.filename,
                "earlier": [
                    {"version": v.version, "schema_id": v.schema_id, "file": v.filename} for v in known[:-1]
                ],
                "accepts_json": RECORD_TYPES[name].accepts_json,
                "avsc": current.avsc,
            }
        )
    return entries


def schemas(
    record: Annotated[
        str | None,
        typer.Argument(help=f"Print one record type's current .avsc: {', '.join(SCHEMA_FILES)}."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Everything, .avsc included, as one JSON document.")
    ] = False,
) -> None:
    """The record types on the karma topics: schema ids, versions, .avsc, and the byte framing.

    For producers and consumers in other languages: frame Avro as described (magic byte, 4-byte
    schema id, body), or publish prompts as JSON."""
    entries = schema_catalogue()
    if record is not None:
        chosen = [e for e in entries if e["record"] == record]
        if not chosen:
            console.print(
                f"[red]error:[/] no record type {escape(record)!r}; choose from {', '.join(SCHEMA_FILES)}"
            )
            raise typer.Exit(2)
        out.print_json(json.dumps(chosen[0]["avsc"]))
        return
    if as_json:
        out.print_json(json.dumps({"framing": FRAMING, "records": entries}))
        return
    table = Table(title="karma record types (topics under the configured prefix)")
    for column in ("record", "topic", "schema id", "version", "earlier: id"):
        table.add_column(column, no_wrap=True)
    for e in entries:
        earlier = ", ".join(f"v{v['version']}: {v['schema_id']}" for v in e["earlier"]) or "-"
        row = (e["record"], ", ".join(e["topics"]), str(e["schema_id"]), f"v{e['version']}", earlier)
        table.add_row(*row)
    out.print(table)
    out.print(FRAMING)
    out.print("The .avsc of one type: karma schemas RECORD; everything as JSON: karma schemas --json.")
