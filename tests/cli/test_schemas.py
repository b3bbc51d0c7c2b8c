"""`karma schemas` tells a producer in another language all it needs: following its --json output
alone (ids, .avsc, framing), hand-framed bytes decode as the stages decode them."""

from __future__ import annotations

import io
import json
import struct

from fastavro import parse_schema, schemaless_writer
from typer.testing import CliRunner

from karma.cli import app
from karma.schemas.catalogue import default_catalogue
from karma.schemas.models import Prompt
from karma.streams.codecs import decode


def schemas_json() -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["schemas", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_record_type_with_its_current_id_and_earlier_versions() -> None:
    records = {r["record"]: r for r in schemas_json()["records"]}
    catalogue = default_catalogue()
    assert set(records) == {"prompt", "response", "kin_pair", "preference", "dead_letter", "checkpoint"}
    for name, entry in records.items():
        assert entry["schema_id"] == catalogue.id_of(name)
        assert entry["version"] == len(entry["earlier"]) + 1
        for earlier in entry["earlier"]:
            assert catalogue.name_of(earlier["schema_id"]) == name  # old bytes still decode
    assert records["preference"]["topics"] == ["preferences"] and records["dead_letter"]["topics"] == ["dlq"]
    assert records["checkpoint"]["topics"] == ["checkpoints"]


def test_bytes_framed_as_the_output_says_decode_like_the_sdks() -> None:
    document = schemas_json()
    prompt = next(r for r in document["records"] if r["record"] == "prompt")
    assert "magic byte 0x00" in document["framing"] and "big-endian" in document["framing"]
    body = io.BytesIO()
    record = {"prompt_id": "other-1", "text": "From Go", "source": "go", "created_at_ms": 5, "metadata": {}}
    schemaless_writer(body, parse_schema(prompt["avsc"]), record)
    framed = struct.pack(">bI", 0, prompt["schema_id"]) + body.getvalue()
    assert decode(framed, Prompt) == Prompt(**record)


def test_one_record_types_avsc_and_a_clear_error_for_an_unknown_one() -> None:
    result = CliRunner().invoke(app, ["schemas", "kin_pair"])
    assert result.exit_code == 0 and json.loads(result.output)["name"] == "KinPair"
    result = CliRunner().invoke(app, ["schemas", "kinpair"])
    assert result.exit_code == 2 and "no record type 'kinpair'" in result.output
