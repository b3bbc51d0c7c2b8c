"""How large a record may be, and how much of it each text of a prompt may take.

Kafka refuses a record batch above the topic's `max.message.bytes` (the broker's
`message.max.bytes` unless the topic sets its own, as managed clusters often do), and the
producer refuses, before sending, a record above its `max_request_size`. A record that is
refused is an output lost unless something else is written for it, so sizes are checked before
anything is sent, in three places:

- **at intake** (generation): a prompt's text travels in every response beside one answer, and
  in every pair and preference beside two (its metadata in every response and pair, and both in
  the rating state: `prompt_cost` counts them together). A prompt that leaves less than
  `min_answer_room_bytes` for each of two answers in the smallest record limit on its way is
  too large to travel: it is dead-lettered before any model works on it;
- **per answer** (generation): each answer may take half of what its prompt leaves, so any two
  answers of a prompt make a pair and a preference that fit. A longer answer is dead-lettered
  and its model accounted for by a failure record;
- **per record** (`streams/delivery.py`): every output is measured against its topic's limit
  before it is sent; one over it is handled as the broker would refuse it, without the trip.

Texts are measured as JSON (`json.dumps`, ASCII-escaped), which is never shorter than their
UTF-8 bytes in Avro, because the rating stage keeps answers in faust tables whose changelog
records are JSON.

The limits come from the topics' own configuration, read once at start (`read_limits`); where
the client may not read it, the setting `max_message_bytes` stands in, and the log says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin

log = logging.getLogger(__name__)

# The producer's own cap on one record (faust's default, passed to it explicitly in streams/app.py
# so that this check and the producer's agree).
PRODUCER_MAX_REQUEST_BYTES = 1_000_000
# The producer's batches per partition (faust's default, also passed explicitly): made smaller at
# start (streams/worker.py) when a topic takes less, or the broker would refuse whole batches of
# records that each fit.
PRODUCER_MAX_BATCH_BYTES = 16_384
# Room in a response, pair or preference for everything but its texts: ids and model names (at
# most 256 characters each, schemas/models.py `Id`), the judge's name, policy, scores, timestamps,
# the Avro framing and the record batch header. tests/streams/test_sizes.py checks a preference
# with the longest names fits in it.
RECORD_OVERHEAD_BYTES = 4096
# A dead letter's reason and key are cut too, so that the letter always fits its topic.
MAX_REASON_CHARS = 4096
MAX_KEY_BYTES = 1024
# The longest name of a model (schemas/models.py `Id`: 256 characters, at most 4 bytes each).
MAX_NAME_BYTES = 1024


def names_cost(names: Iterable[str]) -> int:
    """The most these names take as an Avro array of strings: each name with its length prefix,
    and the array's block count and end."""
    return sum(len(name.encode()) + 5 for name in names) + 10


def letter_models_bytes(pool: Iterable[str]) -> int:
    """Room for a dead letter's `models`: the whole pool (a prompt's letter names at most its
    models), and two of the longest names (a pair's, should it come from a stage with another
    pool)."""
    return names_cost(pool) + 2 * (MAX_NAME_BYTES + 5)


def record_size(key: bytes | None, value: bytes | None) -> int:
    """The bytes one record takes in a batch of its own: what the producer compares with
    `max_request_size` and the broker with `max.message.bytes`."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))


def text_cost(text: str) -> int:
    """What a text takes in a record: its length as ASCII-escaped JSON (at least its UTF-8 size)."""
    return len(json.dumps(text))


def prompt_cost(text: str, metadata: Mapping[str, str] | None = None) -> int:
    """What a prompt takes in each response, pair and rating state that carries it: its text and
    its metadata (`prompt_metadata`), both as ASCII-escaped JSON, never less than their Avro size
    (a JSON object spends at least 6 bytes per entry on quotes and separators, Avro's map at most
    two length prefixes of 5)."""
    return text_cost(text) + (len(json.dumps(dict(metadata))) if metadata else 0)


@dataclass(frozen=True)
class Limit:
    """The largest record a topic takes, and where that figure came from."""

    max_bytes: int
    source: str

    def describe(self, topic: str) -> str:
        return f"{topic} takes records of at most {self.max_bytes:,} bytes ({self.source})"


@dataclass(frozen=True)
class RecordLimits:
    """The record limit of each topic a worker writes; `fallback` for a topic it did not read."""

    by_topic: Mapping[str, Limit]
    fallback: Limit

    @classmethod
    def unread(cls, settings: KarmaSettings) -> RecordLimits:
        """Every topic at the setting (or the producer's cap, if lower): before the topics are read."""
        return cls({}, _fallback(settings, "not read"))

    def of(self, topic: str) -> Limit:
        return self.by_topic.get(topic, self.fallback)

    def smallest(self, topics: Iterable[str]) -> tuple[str, Limit]:
        """The topic of `topics` with the smallest limit, and that limit."""
        return min(((t, self.of(t)) for t in topics), key=lambda item: item[1].max_bytes)

    def replaced(self, topic: str, limit: Limit) -> RecordLimits:
        return RecordLimits({**self.by_topic, topic: limit}, self.fallback)


@dataclass(frozen=True)
class TextBudget:
    """What the texts of one prompt may take, given the smallest record limit on their way
    (`topic`, `limit`): the prompt leaves room for two answers, each answer takes half of it."""

    topic: str
    limit: Limit
    min_answer_room: int

    def room(self, prompt_text: str, metadata: Mapping[str, str] | None = None) -> int:
        """The bytes each of two answers may take beside this prompt (its text and metadata)."""
        return (self.limit.max_bytes - RECORD_OVERHEAD_BYTES - prompt_cost(prompt_text, metadata)) // 2

    def prompt_too_large(self, prompt_text: str, metadata: Mapping[str, str] | None = None) -> str | None:
        """Why this prompt cannot travel, or None when it can."""
        if self.room(prompt_text, metadata) >= self.min_answer_room:
            return None
        return (
            f"the prompt is {prompt_cost(prompt_text, metadata):,} bytes (as JSON, its metadata included); "
            "its pairs and preferences carry it "
            f"beside two answers, and {self.limit.describe(self.topic)}: that leaves less than "
            f"min_answer_room_bytes ({self.min_answer_room:,}) for each answer"
        )

    def answer_too_large(
        self, prompt_text: str, answer: str, metadata: Mapping[str, str] | None = None
    ) -> str | None:
        """Why this answer cannot travel beside its prompt and another answer, or None."""
        room = self.room(prompt_text, metadata)
        cost = text_cost(answer)
        if cost <= room:
            return None
        return (
            f"the answer is {cost:,} bytes (as JSON); beside its prompt "
            f"({prompt_cost(prompt_text, metadata):,} bytes) "
            f"and another answer it may take {room:,}, because {self.limit.describe(self.topic)}"
        )


def _fallback(settings: KarmaSettings, why: str) -> Limit:
    if settings.max_message_bytes <= PRODUCER_MAX_REQUEST_BYTES:
        return Limit(settings.max_message_bytes, f"setting max_message_bytes; topic config {why}")
    return Limit(PRODUCER_MAX_REQUEST_BYTES, "the producer's max_request_size")


def _limit(configured: str | None, settings: KarmaSettings, why: str) -> Limit:
    if configured is None:
        return _fallback(settings, why)
    topic_bytes = int(configured)
    if topic_bytes < PRODUCER_MAX_REQUEST_BYTES:
        return Limit(topic_bytes, "its max.message.bytes")
    return Limit(PRODUCER_MAX_REQUEST_BYTES, "the producer's max_request_size")


async def read_limits(settings: KarmaSettings, topics: Iterable[str]) -> RecordLimits:
    """Each topic's record limit from its `max.message.bytes` (DescribeConfigs); a topic whose
    configuration cannot be read (no permission, an error) gets the setting, and a warning."""
    names = sorted(set(topics))
    admin = new_admin(settings, request_timeout_ms=10_000)
    await admin.start()
    try:
        configured = await _max_message_bytes(admin, names)
    finally:
        await admin.close()
    limits = {}
    for name in names:
        value, error = configured.get(name, (None, "not in the broker's answer"))
        if value is None:
            log.warning("cannot read max.message.bytes of %s (%s); using max_message_bytes", name, error)
        limits[name] = _limit(value, settings, f"unreadable: {error}")
    return RecordLimits(limits, _fallback(settings, "not read"))


async def _max_message_bytes(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, tuple[str | None, str | None]]:
    """topic -> (its max.message.bytes, or None; the broker's error, if any)."""
    wanted = {"max.message.bytes": None}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, wanted) for name in names]
    found: dict[str, tuple[str | None, str | None]] = {}
    for response in await admin.describe_configs(resources):
        # resources: (error_code, error_message, type, name, [(config name, value, ...), ...])
        for error_code, error_message, _, name, entries in response.resources:
            if error_code:
                found[name] = (None, error_message or f"error code {error_code}")
                continue
            values = {entry[0]: entry[1] for entry in entries}
            found[name] = (values.get("max.message.bytes"), None)
    return found
