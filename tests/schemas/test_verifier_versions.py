"""The schema versions issue 20 added: responses (v3) and pairs (v2) carry the prompt's metadata to
the judge, preferences (v3) the verifier's scores. Bytes of the earlier versions still decode, with
the new fields at their defaults; the new ones round-trip; `karma schemas` lists every version."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from typer.testing import CliRunner

from karma.cli import app
from karma.schemas.catalogue import SCHEMA_HISTORY, default_catalogue, schema_id
from karma.schemas.models import KinPair, Preference, Record, Response, Winner
from karma.streams.codecs import decode, decode_any, decode_raw, encode
from tests import records

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
METADATA = {"reference": "42", "scorer": "numeric", "skill": "arithmetic", "unicode": "日本語"}


def _written_with(filename: str, record: Record, dropped: set[str]) -> bytes:
    """`record` as a worker on the old schema `filename` wrote it: without the fields it lacks."""
    schema = json.loads((SCHEMAS / filename).read_text())
    assert not dropped & {f["name"] for f in schema["fields"]}, f"{filename} already has {dropped}"
    body = io.BytesIO()
    fields = {k: v for k, v in record.model_dump(mode="python").items() if k not in dropped}
    schemaless_writer(body, parse_schema(schema), fields)
    return struct.pack(">bI", 0, schema_id(schema)) + body.getvalue()


def _response() -> Response:
    return records.response("p-1", "m1", prompt_metadata=METADATA)


def _pair() -> KinPair:
    return records.kin_pair("p-1", "m1", "m2", prompt_metadata=METADATA)


def _preference() -> Preference:
    return records.preference_on(
        _pair(), Winner.B, judge="verifier", simulated=False, soft_label=None, score_a=0.0, score_b=1.0
    )


@pytest.mark.parametrize(
    ("record", "old_file", "added", "defaults"),
    [
        (_response, "response.v2.avsc", {"prompt_metadata"}, {"prompt_metadata": {}}),
        (_pair, "kin_pair.v1.avsc", {"prompt_metadata"}, {"prompt_metadata": {}}),
        (_preference, "preference.v2.avsc", {"score_a", "score_b"}, {"score_a": None, "score_b": None}),
    ],
    ids=["response-v2", "kin_pair-v1", "preference-v2"],
)
def test_bytes_of_the_previous_version_decode_with_the_new_fields_at_their_defaults(
    record: Any, old_file: str, added: set[str], defaults: dict[str, Any]
) -> None:
    new = record()
    assert old_file in SCHEMA_HISTORY[new.schema_name]  # kept, so the catalogue knows its id
    data = _written_with(old_file, new, added)
    decoded = decode(data, type(new))
    assert decoded == new.model_copy(update=defaults)
    assert decode_any(data) == decoded  # found by its own schema id, as `karma tail` reads it


def test_the_oldest_versions_still_decode() -> None:
    """A response of version 1 (before failure records) and a preference of version 1 (before the
    soft label) read with every later field at its default."""
    response = decode(_written_with("response.v1.avsc", _response(), {"error", "prompt_metadata"}), Response)
    assert response.prompt_metadata == {} and response.error is None
    preference = decode(
        _written_with("preference.v1.avsc", _preference(), {"soft_label", "score_a", "score_b"}), Preference
    )
    assert preference.score_a is None and preference.score_b is None and preference.winner is Winner.B


@pytest.mark.parametrize(
    ("record", "old_file"),
    [(_response, "response.v2.avsc"), (_pair, "kin_pair.v1.avsc"), (_preference, "preference.v2.avsc")],
    ids=["response", "kin_pair", "preference"],
)
def test_the_new_fields_round_trip_and_a_reader_on_the_old_version_skips_them(
    record: Any, old_file: str
) -> None:
    new = record()
    assert decode(encode(new), type(new)) == new
    old = decode_raw(encode(new), parse_schema(json.loads((SCHEMAS / old_file).read_text())))
    assert old["prompt_id"] == new.prompt_id and not {"prompt_metadata", "score_a", "score_b"} & set(old)


def test_karma_schemas_lists_the_new_versions() -> None:
    result = CliRunner().invoke(app, ["schemas", "--json"])
    assert result.exit_code == 0, result.output
    listed = {r["record"]: r for r in json.loads(result.output)["records"]}
    catalogue = default_catalogue()
    for name, version, earlier in [
        ("response", 4, ["response.v1.avsc", "response.v2.avsc", "response.v3.avsc"]),
        ("kin_pair", 3, ["kin_pair.v1.avsc", "kin_pair.v2.avsc"]),
        ("preference", 4, ["preference.v1.avsc", "preference.v2.avsc", "preference.v3.avsc"]),
    ]:
        entry = listed[name]
        assert entry["version"] == version
        assert [e["schema_id"] for e in entry["earlier"]] == [
            schema_id(json.loads((SCHEMAS / f).read_text())) for f in earlier
        ]
        assert all(catalogue.name_of(e["schema_id"]) == name for e in entry["earlier"])
    fields = {f["name"]: f for f in listed["kin_pair"]["avsc"]["fields"]}
    assert fields["prompt_metadata"]["default"] == {}
