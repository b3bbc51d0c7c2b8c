"""Avro in the Confluent Schema Registry wire format: magic byte 0, 4-byte big-endian
schema id, then the schemaless Avro body (fastavro).

`encode` writes a pydantic record with its current schema; `decode` reads any registered
writer schema and resolves it to the current reader schema (BACKWARD evolution), then
validates the result with the pydantic model. `decode_any` does the same for bytes of no
expected type, choosing the model by the schema id in the header. All raise `DecodeError`
with a reason that is fit for the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, TypeVar, cast

from fastavro import schemaless_reader, schemaless_writer
from pydantic import ValidationError

from karma.schemas.catalogue import SchemaCatalogue, UnknownSchemaError, default_catalogue
from karma.schemas.models import RECORD_TYPES, Record, problems_of

MAGIC_BYTE = 0
# What a JSON value of a record type that takes JSON starts with: an object or a bare string.
JSON_FIRST_BYTES = (b"{", b'"')
_HEADER = struct.Struct(">bI")

R = TypeVar("R", bound=Record)


class DecodeError(ValueError):
    """Bytes that are not a valid record of the expected type. `kind` is decode or validation."""

    def __init__(self, reason: str, kind: str = "decode") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def encode_raw(record: dict[str, Any], schema_name: str, catalogue: SchemaCatalogue | None = None) -> bytes:
    cat = catalogue or default_catalogue()
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC_BYTE, cat.id_of(schema_name)))
    schemaless_writer(buf, cat.current(schema_name), record)
    return buf.getvalue()


def encode(record: Record, catalogue: SchemaCatalogue | None = None) -> bytes:
    return encode_raw(record.model_dump(mode="python"), record.schema_name, catalogue)


def _schema_id_of(data: bytes | None) -> int:
    """The schema id in the header of framed bytes; DecodeError when there is no such header."""
    if not data:
        raise DecodeError("empty message value")
    if len(data) < _HEADER.size:
        raise DecodeError(f"message of {len(data)} bytes is shorter than the 5-byte header")
    magic, sid = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"magic byte is {magic}, expected {MAGIC_BYTE} (not Confluent-framed Avro)")
    return int(sid)


def decode_raw(
    data: bytes | None,
    reader_schema: Any,
    catalogue: SchemaCatalogue | None = None,
) -> dict[str, Any]:
    """Avro-decodes framed bytes written with any catalogued schema into `reader_schema`."""
    cat = catalogue or default_catalogue()
    sid = _schema_id_of(data)
    try:
        writer_schema = cat.by_id(sid)
    except UnknownSchemaError as exc:
        raise DecodeError(str(exc.args[0])) from None
    body = io.BytesIO(data[_HEADER.size :])
    try:
        value = schemaless_reader(body, writer_schema, reader_schema)
    except Exception as exc:  # fastavro raises many types for corrupt bodies
        raise DecodeError(f"Avro body does not match schema id {sid}: {type(exc).__name__}: {exc}") from None
    if body.tell() != len(data) - _HEADER.size:
        raise DecodeError(f"{len(data) - _HEADER.size - body.tell()} trailing bytes after the Avro body")
    return value


def decode(data: bytes | None, model: type[R], catalogue: SchemaCatalogue | None = None) -> R:
    if model.accepts_json and data:
        if data[:1] in JSON_FIRST_BYTES:
            return cast(R, decode_json(data, model))
        if data[0] != MAGIC_BYTE:
            raise DecodeError(
                f"first byte is {data[0]:#04x}: neither framed Avro (0x00) nor JSON (an object "
                f"starting with '{{' or a string starting with '\"') for a {model.__name__}"
            )
    cat = catalogue or default_catalogue()
    raw = decode_raw(data, cat.current(model.schema_name), cat)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = problems_of(exc, whole=model.__name__)
        raise DecodeError(f"invalid {model.__name__}: {problems}", kind="validation") from None


def decode_json(data: bytes, model: type[Record]) -> Record:
    """A record of a type that takes JSON (`Record.accepts_json`), from UTF-8 JSON bytes."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"JSON {model.__name__} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        return model.from_json(parsed, source="json")
    except ValueError as exc:
        raise DecodeError(f"invalid JSON {model.__name__}: {exc}", kind="validation") from None


def decode_any(data: bytes | None, catalogue: SchemaCatalogue | None = None) -> Record:
    """Decodes bytes of any karma record type, found by the schema id in their header (current
    or historical schema): for a topic whose name says nothing, e.g. another tool's or an
    internal one. DecodeError when the bytes are not karma Avro, or not a valid record."""
    cat = catalogue or default_catalogue()
    sid = _schema_id_of(data)
    try:
        name = cat.name_of(sid)
    except UnknownSchemaError as exc:
        raise DecodeError(str(exc.args[0])) from None
    model = RECORD_TYPES.get(name)
    if model is None:  # a catalogued schema without a pydantic model: nothing to validate with
        raise DecodeError(f"schema id {sid} is the {name!r} schema, which has no record type")
    return decode(data, model, cat)
