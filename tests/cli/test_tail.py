"""`karma tail` prints every message of any topic, on the real broker: decoded records by short
name and by the full name of another run's prefix, records found by their schema id on a topic
of no known type, and bytes that are not karma Avro as base64 with a note. Never a bare offset."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from typer.testing import CliRunner

from karma.cli import app
from karma.schemas.models import Prompt, Winner
from karma.streams.codecs import encode, encode_raw
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env
from tests import records

CANDIDATE = records.candidate("m1", "r-1", text="one", superiority=0.4)
OTHER = CANDIDATE.model_copy(update={"response_id": "r-2", "model": "m2", "text": "two"})
PROMPT = Prompt(prompt_id="p-1", text="What is Kafka?", source="test")
PAIR = records.kin_pair(
    "p-1", CANDIDATE, OTHER, pair_id="pair-1", prompt_text=PROMPT.text, similarity=0.97, gap=0.05
)
PREFERENCE = records.preference_on(PAIR, Winner.A, consistent=True, confidence=0.8)
DEAD = records.dead_letter("x.prompts", 3, reason="bad", key=b"k", value=b"\xff\x00")


@pytest.fixture(autouse=True)
def _log_file_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's default log file is relative to the working directory: keep it out of the repo.
    monkeypatch.chdir(tmp_path)


def _settings(kafka_bootstrap: str, prefix: str) -> KarmaSettings:
    return KarmaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, app_id=prefix.strip(".-"))


def _publish(kafka_bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for topic, key, value in messages:
                await producer.send_and_wait(topic, value, key=key, partition=0)
        finally:
            await producer.stop()

    asyncio.run(send())


def _tail(settings: KarmaSettings, topic: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["tail", topic], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, Any]:
    """This run's topics (prefix tNNN.), another run's (demo-NNN.), and two of no known type."""
    run = uuid.uuid4().hex[:8]
    own = _settings(kafka_bootstrap, f"t{run}.")
    other = _settings(kafka_bootstrap, f"demo-{run}.")
    mixed, plain = f"u{run}-mixed", f"u{run}-plain"
    asyncio.run(ensure_topics(own, [NewTopic(mixed, 1, 1), NewTopic(plain, 1, 1)]))
    asyncio.run(ensure_topics(other))
    blank_prompt = {"prompt_id": "p-9", "text": " ", "source": "t", "created_at_ms": 1, "metadata": {}}
    _publish(
        kafka_bootstrap,
        [
            (own.topic("prompts"), b"p-1", encode(PROMPT)),
            (own.topic("prompts"), b"p-2", b"not avro"),
            (own.topic("rating.ticks"), None, b"tick"),
            (own.topic("dlq"), b"p-2", encode(DEAD)),
            (other.topic("preferences"), b"p-1", encode(PREFERENCE)),
            (other.topic("pairs"), b"p-1", encode(PAIR)),
            (mixed, b"p-1", encode(PROMPT)),
            (mixed, b"p-1", encode(PREFERENCE)),
            (mixed, b"\xff\xfe", encode(DEAD)),
            (mixed, b"p-9", encode_raw(blank_prompt, "prompt")),
            (plain, b"\xff\x00", b"tick"),
            (plain, b'["a"]', b'{"json": true}'),
            (plain, b"gone", None),
        ],
    )
    return {"own": own, "other": other, "mixed": mixed, "plain": plain}


def test_tail_by_short_name_decodes_and_shows_what_does_not(topics: dict[str, Any]) -> None:
    own = topics["own"]
    rows = _tail(own, "prompts")
    assert [(r["topic"], r["partition"], r["offset"], r["key"]) for r in rows] == [
        (own.topic("prompts"), 0, 0, "p-1"),
        (own.topic("prompts"), 0, 1, "p-2"),
    ]
    assert rows[0]["value"] == PROMPT.model_dump(mode="json")
    assert "value" not in rows[1] and "first byte is 0x6e" in rows[1]["error"]
    # A dead letter's raw bytes are base64 (they are rarely UTF-8: the old code crashed on them).
    (dead,) = _tail(own, "dlq")
    assert dead["value"] == {
        **DEAD.model_dump(mode="json", exclude={"key", "value"}),
        "key": "aw==",
        "value": "/wA=",
    }
    # The rating stage's clock: raw bytes, not a record.
    (tick,) = _tail(own, "ticks")
    assert tick["topic"] == own.topic("rating.ticks") and tick["key"] is None
    assert base64.b64decode(tick["value_base64"]) == b"tick"
    assert tick["note"].startswith("not a valid karma record (message of 4 bytes")


def test_tail_of_another_prefix_full_name_decodes_its_records(topics: dict[str, Any]) -> None:
    own, other = topics["own"], topics["other"]
    (preference,) = _tail(own, other.topic("preferences"))
    # Before, a name without the configured prefix printed topic, partition and offset only.
    assert preference.get("value") == PREFERENCE.model_dump(mode="json"), preference
    assert preference["topic"] == other.topic("preferences") and preference["key"] == "p-1"
    (pair,) = _tail(own, other.topic("pairs"))
    assert pair["value"] == PAIR.model_dump(mode="json")


def test_tail_of_a_topic_of_unknown_type_decodes_karma_avro_by_schema_id(topics: dict[str, Any]) -> None:
    rows = _tail(topics["own"], topics["mixed"])
    assert [r["offset"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["value"] == PROMPT.model_dump(mode="json")
    assert rows[1]["value"] == PREFERENCE.model_dump(mode="json")
    # A dead letter's bytes fields are base64, and so is a key that is not UTF-8.
    assert rows[2]["value"]["reason"] == "bad" and rows[2]["value"]["value"] == "/wA="
    assert "key" not in rows[2] and rows[2]["key_base64"] == base64.b64encode(b"\xff\xfe").decode()
    # Karma Avro, but not a valid record: the bytes and why.
    assert "value" not in rows[3] and base64.b64decode(rows[3]["value_base64"]) == encode_raw(
        {"prompt_id": "p-9", "text": " ", "source": "t", "created_at_ms": 1, "metadata": {}}, "prompt"
    )
    assert "invalid Prompt" in rows[3]["note"]


def test_tail_of_plain_bytes_shows_them_as_base64_with_a_note(topics: dict[str, Any]) -> None:
    rows = _tail(topics["own"], topics["plain"])
    assert [r["offset"] for r in rows] == [0, 1, 2]
    assert rows[0]["key_base64"] == base64.b64encode(b"\xff\x00").decode() and "key" not in rows[0]
    assert base64.b64decode(rows[0]["value_base64"]) == b"tick"
    assert rows[1]["key"] == '["a"]' and base64.b64decode(rows[1]["value_base64"]) == b'{"json": true}'
    assert "magic byte is 123" in rows[1]["note"]
    for row in rows[:2]:
        assert "value" not in row and "error" not in row
        assert row["note"].startswith("not a valid karma record (") and "shown as base64" in row["note"]
    assert rows[2]["key"] == "gone" and rows[2]["value_base64"] is None and "tombstone" in rows[2]["note"]
