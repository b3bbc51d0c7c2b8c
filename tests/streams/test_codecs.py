"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body."""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer

from karma.schemas.catalogue import SCHEMA_HISTORY, SchemaCatalogue, UnknownSchemaError, load_avsc, schema_id
from karma.schemas.models import (
    DeadLetter,
    Preference,
    Prompt,
    Response,
    Winner,
    prompt_id_for,
)
from karma.streams.codecs import DecodeError, decode, decode_any, decode_raw, encode, encode_raw
from tests import records

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
QUESTION = "What is Kafka?"
CANDIDATE = records.candidate("m1", "r-1", text="hello", superiority=0.4)
RECORDS = [
    Prompt(prompt_id="p-1", text=QUESTION, source="test", metadata={"k": "v"}),
    records.response(
        "p-1", "m1", response_id="r-1", prompt_text=QUESTION, text="A log.", num_tokens=2, latency_ms=1.5
    ),
    records.kin_pair(
        "p-1",
        CANDIDATE,
        CANDIDATE.model_copy(update={"response_id": "r-2", "model": "m2"}),
        pair_id="pair-1",
        prompt_text=QUESTION,
        similarity=0.97,
        gap=0.05,
    ),
    records.preference(
        "p-1",
        CANDIDATE,
        CANDIDATE.model_copy(update={"response_id": "r-2"}),
        Winner.TIE,
        pair_id="pair-1",
        prompt_text=QUESTION,
        gap=0.05,
        consistent=False,
        verdict_ab=Winner.A,
        verdict_ba=Winner.B,
        confidence=0.5,
        soft_label=0.25,
    ),
    records.dead_letter(
        "karma.prompts",
        41,
        source_partition=2,
        reason="bad",
        prompt_id="p-1",
        key=b"k",
        value=b"\xff\x00garbage",
    ),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record) -> None:  # type: ignore[no-untyped-def]
    data = encode(record)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == SchemaCatalogue().id_of(record.schema_name)
    assert decode(data, type(record)) == record


def test_schema_ids_are_stable_across_catalogues() -> None:
    assert SchemaCatalogue().id_of("prompt") == SchemaCatalogue().id_of("prompt")
    assert len({SchemaCatalogue().id_of(n) for n in ("prompt", "response", "kin_pair")}) == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01", "shorter than the 5-byte header"),
        (b"\x07garbage-bytes", "first byte is 0x07: neither framed Avro"),
        (b"\x00\x00\x00\x00\x01body", "not in the local catalogue"),
    ],
)
def test_garbage_is_a_decode_error_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode(data, Prompt)
    assert info.value.kind == "decode"


def test_truncated_body_is_a_decode_error() -> None:
    data = encode(RECORDS[1])
    with pytest.raises(DecodeError, match="does not match schema"):
        decode(data[:-3], Response)


def test_trailing_bytes_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(encode(RECORDS[0]) + b"\x00\x00", Prompt)


def test_schema_valid_but_blank_prompt_is_a_validation_error() -> None:
    data = encode_raw(
        {"prompt_id": "p-1", "text": "", "source": "t", "created_at_ms": 1, "metadata": {}}, "prompt"
    )
    with pytest.raises(DecodeError, match="text") as info:
        decode(data, Prompt)
    assert info.value.kind == "validation"


def test_backward_compatible_reader_reads_bytes_of_the_old_schema() -> None:
    """BACKWARD: a new reader schema with an added, defaulted field reads old bytes."""
    catalogue = SchemaCatalogue()
    old = load_avsc("prompt")
    new = copy.deepcopy(old)
    new["fields"].append({"name": "priority", "type": "int", "default": 5})
    old_id = catalogue.register(old)
    new_id = catalogue.register(new)
    assert old_id != new_id == schema_id(new)

    old_bytes = encode_raw(
        {"prompt_id": "p-9", "text": "hi", "source": "old", "created_at_ms": 7, "metadata": {}},
        "prompt",
        catalogue,
    )
    value = decode_raw(old_bytes, catalogue.by_id(new_id), catalogue)
    assert value["priority"] == 5
    assert value["prompt_id"] == "p-9"


def test_reader_without_default_cannot_read_old_bytes() -> None:
    """The same evolution without a default is not BACKWARD compatible, and says so."""
    catalogue = SchemaCatalogue()
    new = copy.deepcopy(load_avsc("prompt"))
    new["fields"].append({"name": "priority", "type": "int"})
    new_id = catalogue.register(new)
    with pytest.raises(DecodeError):
        decode_raw(encode(RECORDS[0], catalogue), catalogue.by_id(new_id), catalogue)


def test_preferences_written_before_soft_label_still_decode() -> None:
    """Version 1 of the preference schema is in the catalogue: its bytes read as soft_label None."""
    v1 = json.loads((SCHEMAS / SCHEMA_HISTORY["preference"][0]).read_text())
    assert "soft_label" not in {f["name"] for f in v1["fields"]}
    preference = next(r for r in RECORDS if isinstance(r, Preference))
    record = preference.model_copy(update={"soft_label": 0.7}).model_dump(mode="python")
    del record["soft_label"]
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v1), record)
    data = struct.pack(">bI", 0, schema_id(v1)) + body.getvalue()
    decoded = decode(data, Preference)
    assert decoded.soft_label is None and decoded.preference_id == record["preference_id"]


def test_dead_letters_written_before_prompt_id_still_decode() -> None:
    """Version 1 of the dead-letter schema is in the catalogue: its letters read as prompt_id None."""
    v1 = json.loads((SCHEMAS / SCHEMA_HISTORY["dead_letter"][0]).read_text())
    assert "prompt_id" not in {f["name"] for f in v1["fields"]}
    letter = next(r for r in RECORDS if isinstance(r, DeadLetter))
    record = letter.model_dump(mode="python")
    del record["prompt_id"]
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v1), record)
    decoded = decode(struct.pack(">bI", 0, schema_id(v1)) + body.getvalue(), DeadLetter)
    assert decoded.prompt_id is None and decoded.value == letter.value and decoded.reason == "bad"


def test_dead_letters_written_before_their_bounds_still_decode() -> None:
    """Version 2 (before value_size, value_sha256 and record_id) reads with those as None."""
    v2 = json.loads((SCHEMAS / SCHEMA_HISTORY["dead_letter"][1]).read_text())
    added = {"value_size", "value_sha256", "record_id"}
    assert not added & {f["name"] for f in v2["fields"]} and "prompt_id" in {f["name"] for f in v2["fields"]}
    letter = next(r for r in RECORDS if isinstance(r, DeadLetter))
    record = {k: v for k, v in letter.model_dump(mode="python").items() if k not in added}
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v2), record)
    decoded = decode(struct.pack(">bI", 0, schema_id(v2)) + body.getvalue(), DeadLetter)
    assert decoded.value_size is None and decoded.value_sha256 is None and decoded.record_id is None
    assert decoded.prompt_id == letter.prompt_id and decoded.value == letter.value


def test_dead_letters_written_before_models_still_decode() -> None:
    """Version 3 (before models) reads with models empty: a letter written by the code before."""
    v3 = json.loads((SCHEMAS / SCHEMA_HISTORY["dead_letter"][2]).read_text())
    fields = {f["name"] for f in v3["fields"]}
    assert "models" not in fields and "record_id" in fields
    letter = next(r for r in RECORDS if isinstance(r, DeadLetter)).model_copy(update={"record_id": "r-1"})
    record = {k: v for k, v in letter.model_dump(mode="python").items() if k != "models"}
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v3), record)
    decoded = decode(struct.pack(">bI", 0, schema_id(v3)) + body.getvalue(), DeadLetter)
    assert decoded.models == [] and decoded == letter.model_copy(update={"models": []})


def test_a_letter_naming_models_round_trips_and_old_readers_skip_the_field() -> None:
    """The current schema writes models; a reader still on version 3 reads the rest (FORWARD too)."""
    letter = records.dead_letter("karma.responses", 3, error_type="incomplete", models=["m1", "m-2/x"])
    assert decode(encode(letter), DeadLetter).models == ["m1", "m-2/x"]
    v3 = parse_schema(json.loads((SCHEMAS / SCHEMA_HISTORY["dead_letter"][2]).read_text()))
    old = decode_raw(encode(letter), v3)
    assert "models" not in old and old["error_type"] == "incomplete"


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_decode_any_finds_the_record_type_by_schema_id(record) -> None:  # type: ignore[no-untyped-def]
    decoded = decode_any(encode(record))
    assert type(decoded) is type(record) and decoded == record


def test_catalogue_names_current_and_historical_schema_ids() -> None:
    catalogue = SchemaCatalogue()
    for name in ("prompt", "response", "kin_pair", "preference", "dead_letter"):
        assert catalogue.name_of(catalogue.id_of(name)) == name
    for name, files in SCHEMA_HISTORY.items():
        for filename in files:
            assert catalogue.name_of(schema_id(json.loads((SCHEMAS / filename).read_text()))) == name
    # A version registered later is named by its Avro full name.
    newer = copy.deepcopy(load_avsc("prompt"))
    newer["fields"].append({"name": "priority", "type": "int", "default": 5})
    assert catalogue.name_of(catalogue.register(newer)) == "prompt"
    with pytest.raises(UnknownSchemaError):
        catalogue.name_of(1)


def test_decode_any_reads_bytes_of_a_historical_schema() -> None:
    v1 = json.loads((SCHEMAS / SCHEMA_HISTORY["preference"][0]).read_text())
    preference = next(r for r in RECORDS if isinstance(r, Preference))
    record = preference.model_dump(mode="python")
    del record["soft_label"]
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v1), record)
    decoded = decode_any(struct.pack(">bI", 0, schema_id(v1)) + body.getvalue())
    assert isinstance(decoded, Preference) and decoded.soft_label is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "empty"),
        (b"tick", "shorter than the 5-byte header"),
        (b'{"json": "text"}', "magic byte is 123"),
        (b"\x00\x00\x00\x00\x01body", "not in the local catalogue"),
    ],
)
def test_decode_any_of_bytes_that_are_not_karma_avro_is_a_decode_error(
    data: bytes | None, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_any(data)
    assert info.value.kind == "decode"


def test_decode_any_validates_like_decode() -> None:
    data = encode_raw(
        {"prompt_id": "p-1", "text": " ", "source": "t", "created_at_ms": 1, "metadata": {}}, "prompt"
    )
    with pytest.raises(DecodeError, match="invalid Prompt") as info:
        decode_any(data)
    assert info.value.kind == "validation"


# -- JSON prompts: producers that do not frame Avro ---------------------------------------------


def test_a_json_object_is_a_prompt_with_the_fields_of_prompt_avsc() -> None:
    prompt = decode(b'{"prompt_id": "json-1", "text": "Plain JSON prompt", "metadata": {"k": "v"}}', Prompt)
    assert (prompt.prompt_id, prompt.text, prompt.metadata) == ("json-1", "Plain JSON prompt", {"k": "v"})


def test_a_json_prompt_without_an_id_gets_the_id_the_sdk_would_derive() -> None:
    from_object = decode(b'{"text": "How do tides work?", "source": "svc"}', Prompt)
    assert from_object.prompt_id == prompt_id_for("How do tides work?", "svc")
    from_string = decode(b'"How do tides work?"', Prompt)
    assert (from_string.text, from_string.source) == ("How do tides work?", "json")
    assert from_string.prompt_id == prompt_id_for("How do tides work?", "json")


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (b'{"text": "   "}', "validation", "text is empty"),
        (b'{"txt": "typo"}', "validation", "missing 'text'"),
        (b'{"text": "a", "colour": "red"}', "validation", "unknown field(s) ['colour']"),
        (b'{"text": "a", "metadata": {"n": 1}}', "validation", "metadata.n"),
        (b'{"text": "unterminated', "decode", "not valid JSON"),
        (b'"caf\xe9"', "decode", "not UTF-8"),
        (b"[1, 2]", "decode", "first byte is 0x5b"),
        (b"plain text", "decode", "first byte is 0x70"),
    ],
)
def test_json_that_is_not_a_prompt_is_a_decode_error_with_a_reason(
    data: bytes, kind: str, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data, Prompt)
    assert (info.value.kind, reason in info.value.reason) == (kind, True), info.value.reason


def test_only_prompts_take_json() -> None:
    with pytest.raises(DecodeError, match="magic byte is 123"):
        decode(b'{"prompt_id": "p"}', Response)
