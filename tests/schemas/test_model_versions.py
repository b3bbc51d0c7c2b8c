"""The schema versions issue 21 added: a response (v4) names the checkpoint version that wrote it,
and so does each side of a pair (v3) and of a preference (v4); a new record type, Checkpoint, says
what `karma train` wrote. Bytes of the earlier versions decode as version 1; the ids of version 1
are the ids records had before versions existed, and a later version's answer is another response."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from pydantic import ValidationError

from karma.schemas.catalogue import SCHEMA_HISTORY, schema_id
from karma.schemas.models import (
    Checkpoint,
    InputOffset,
    KinPair,
    Preference,
    Record,
    Response,
    Winner,
    checkpoint_id_for,
    response_id_for,
    stable_id,
)
from karma.streams.codecs import decode, decode_any, encode
from tests import records

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _written_with(filename: str, record: Record) -> bytes:
    """`record` as a worker on the schema `filename` wrote it: only the fields that schema has
    (nested candidates too)."""
    schema = json.loads((SCHEMAS / filename).read_text())
    body = io.BytesIO()
    data = record.model_dump(mode="python")
    for side in ("response_a", "response_b"):
        if side in data:
            data[side].pop("model_version")
    data.pop("model_version", None)
    schemaless_writer(body, parse_schema(schema), data)
    return struct.pack(">bI", 0, schema_id(schema)) + body.getvalue()


def _response(version: int) -> Response:
    return records.response("p-1", "m1", model_version=version)


def _pair(version: int) -> KinPair:
    return records.kin_pair("p-1", records.candidate("m1", prompt_id="p-1", model_version=version), "m2")


def _preference(version: int) -> Preference:
    return records.preference_on(_pair(version), Winner.A)


@pytest.mark.parametrize(
    ("make", "old_file"),
    [(_response, "response.v3.avsc"), (_pair, "kin_pair.v2.avsc"), (_preference, "preference.v3.avsc")],
    ids=["response-v3", "kin_pair-v2", "preference-v3"],
)
def test_bytes_of_the_previous_version_decode_as_version_1(make: Any, old_file: str) -> None:
    record = make(1)
    assert old_file in SCHEMA_HISTORY[record.schema_name]
    data = _written_with(old_file, record)
    assert decode(data, type(record)) == record
    assert decode_any(data) == record


@pytest.mark.parametrize("make", [_response, _pair, _preference], ids=["response", "kin_pair", "preference"])
def test_a_later_version_round_trips(make: Any) -> None:
    record = make(3)
    decoded = decode(encode(record), type(record))
    assert decoded == record
    version = decoded.model_version if isinstance(decoded, Response) else decoded.response_a.model_version
    assert version == 3


def test_version_1_keeps_the_old_ids_and_a_later_version_is_another_response() -> None:
    old_id = "r-" + stable_id("p-1", "m1", "0")  # response_id_for before versions existed
    assert response_id_for("p-1", "m1") == old_id == response_id_for("p-1", "m1", version=1)
    assert response_id_for("p-1", "m1", version=2) not in {old_id, response_id_for("p-1", "m1", version=3)}
    # Two versions' answers to one prompt make two different pairs with a third model's answer.
    assert _pair(1).pair_id != _pair(2).pair_id


def _checkpoint(**changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "checkpoint_id": checkpoint_id_for("m1", 2),
        "model": "m1",
        "version": 2,
        "path": "/models/m1/v2",
        "parent_version": 1,
        "parent_path": "/models/m1",
        "preference_ids": ["pair-a", "pair-b"],
        "train_loss": 0.69,
        "reward_margin": 0.01,
        "reward_accuracy": 0.5,
        "method": "full",
        "consumer_group": "karma-train-m1",
        "input_offsets": [InputOffset(partition=0, offset=7)],
        "simulated_preferences": 0,
        "train_seconds": 1.5,
    }
    return Checkpoint(**(fields | changes))


def test_a_checkpoint_round_trips_and_names_its_parent() -> None:
    checkpoint = _checkpoint()
    assert decode(encode(checkpoint), Checkpoint) == checkpoint
    assert decode_any(encode(checkpoint)) == checkpoint
    with pytest.raises(ValidationError, match="parent version 2"):
        _checkpoint(version=3)
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        _checkpoint(version=1, parent_version=0)
