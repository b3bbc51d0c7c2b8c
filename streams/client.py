"""The Python SDK: publish prompts, read any karma topic as typed records.

async with PromptProducer(settings) as producer:
    prompt_id = await producer.send("Explain Kafka consumer groups.")

async for record in read_topic(settings, "preferences", until_end=True):
    ...
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

from karma.agents.competency import Tally, is_evidence, player_of, tally, window_of
from karma.schemas.models import (
    Preference,
    Prompt,
    Record,
    prompt_id_for,
)
from karma.streams.codecs import DecodeError, decode, decode_any, encode
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import hidden_topics, new_admin, new_consumer, new_producer
from karma.streams.topics import RECORD_OF_STAGE, TOPICS

# Short names `read_topic` accepts, and the topic each stands for under the prefix.
SHORT_NAMES: dict[str, str] = {spec.short: spec.name for spec in TOPICS}


class PromptProducer:
    """Publishes prompts to karma.prompts, keyed by prompt_id (idempotent producer, acks=all)."""

    def __init__(self, settings: KarmaSettings, source: str = "sdk") -> None:
        self.settings = settings
        self.source = source
        self._producer = new_producer(settings, acks="all", enable_idempotence=True)

    async def __aenter__(self) -> PromptProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send_prompt(self, prompt: Prompt) -> asyncio.Future[Any]:
        """Queues a validated prompt; the returned future resolves when the broker has it."""
        return await self._producer.send(
            self.settings.topic("prompts"), key=prompt.prompt_id.encode(), value=encode(prompt)
        )

    async def send(
        self, text: str, prompt_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> str:
        """Publishes one prompt and waits for the broker's acknowledgement; returns its id."""
        prompt = Prompt(
            prompt_id=prompt_id or prompt_id_for(text, self.source),
            text=text,
            source=self.source,
            metadata=metadata or {},
        )
        await (await self.send_prompt(prompt))
        return prompt.prompt_id

    async def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Publishes bytes as they are: for tests of the dead-letter path."""
        await self._producer.send_and_wait(self.settings.topic("prompts"), key=key, value=value)


@dataclass(frozen=True)
class Received:
    """A message read from a topic: the decoded record, or why it did not decode."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    record: Record | None
    error: str | None = None
    timestamp_ms: int | None = None  # the broker's record timestamp (producer create time)
    value: bytes | None = None  # the raw value, for a caller that shows what did not decode
    # True when the topic's name says which record type it carries; False when the record type
    # came from the bytes' schema id (or, with `error` set, the bytes are not a karma record).
    typed: bool = True


def topic_name(settings: KarmaSettings, topic: str) -> tuple[str, type[Record] | None]:
    """The full name of a topic and the record type its messages should be (None: not known).

    Accepts a short name (prompts, responses, pairs, preferences, dlq, ticks), a full name with
    the configured prefix, or any full name ending in `.<stage>`: another run's topics, such as
    `demo-20261129-101010.preferences` from `karma demo` or `eval-<stamp>-kin.pairs`.
    """
    if topic in SHORT_NAMES:
        topic = settings.topic(SHORT_NAMES[topic])
    for short, stage in SHORT_NAMES.items():
        if topic == settings.topic(stage) or topic.endswith(f".{stage}"):
            return topic, RECORD_OF_STAGE.get(short)
    return topic, None


async def read_topic(
    settings: KarmaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    until_end: bool = False,
    idle_timeout_s: float | None = None,
    since_ms: int | None = None,
) -> AsyncIterator[Received]:
    """Reads a topic without joining a consumer group (nothing is committed).

    `topic` is anything `topic_name` accepts. Messages of a topic of no known record type are
    decoded by their schema id where they are karma Avro; otherwise `record` is None and
    `value` holds the bytes.

    until_end stops at the end offsets seen when reading began; idle_timeout_s stops after that
    long without a new message; since_ms starts each partition at its first message with a
    timestamp at or after it (the broker's time index, so older messages are not read at all).
    """
    async with TopicReader(settings, topic, from_beginning=from_beginning, since_ms=since_ms) as reader:
        if until_end:
            async for received in reader.to_end():
                yield received
            return
        last_message = time.monotonic()
        while True:
            batch = await reader.poll()
            if batch:
                last_message = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_message > idle_timeout_s:
                return
            for received in batch:
                yield received


class TopicNotFoundError(LookupError):
    """A topic that is not on the broker (reading must not create it)."""


async def list_topics(settings: KarmaSettings) -> set[str]:
    consumer = new_consumer(settings)
    try:
        await consumer.start()
        return set(await consumer.topics())
    finally:
        await consumer.stop()


async def _unauthorized(settings: KarmaSettings, topic: str) -> bool:
    """Whether the broker refuses to describe `topic` to these credentials: a topic the ACLs
    hide is missing from the list of topics, like one that does not exist."""
    admin = new_admin(settings, request_timeout_ms=10_000)
    await admin.start()
    try:
        return bool(await hidden_topics(admin, [topic]))
    finally:
        await admin.close()


def _received(msg: Any, model: type[Record] | None) -> Received:
    record, error = None, None
    try:
        # No expected type: the bytes may still be karma Avro, which names its schema.
        record = decode(msg.value, model) if model is not None else decode_any(msg.value)
    except DecodeError as exc:
        error = exc.reason
    return Received(
        msg.topic,
        msg.partition,
        msg.offset,
        msg.key,
        record,
        error,
        msg.timestamp,
        value=msg.value,
        typed=model is not None,
    )


def parse_prompt_line(line: str, source: str) -> Prompt:
    """One JSONL line to a Prompt; raises ValueError saying what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return Prompt.from_json(data, source)


def parse_prompt_file(lines: list[str], source: str) -> Iterator[tuple[int, Prompt | None, str | None]]:
    """(line number, prompt, None) for good lines, (line number, None, reason) for bad ones."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield line_no, parse_prompt_line(line, source), None
        except ValueError as exc:
            yield line_no, None, str(exc)


async def window_verdicts(settings: KarmaSettings, now_s: float | None = None) -> WindowVerdicts:
    """The verdicts on karma.preferences in the current competency window, tallied per pair of
    players (a model's versions apart: agents/competency.py), each preference id once: the
    evidence the rating stage's online competency holds."""
    now_s = time.time() if now_s is None else now_s
    start, end = window_of(now_s, settings.window_size_s, settings.window_step_s)
    seen: set[str] = set()
    verdicts = []
    async for received in read_topic(settings, "preferences", until_end=True, since_ms=int(start * 1000)):
        record = received.record
        if not isinstance(record, Preference) or record.preference_id in seen or not is_evidence(record):
            continue  # as the rating stage: each verdict once, and only one that read the answers
        if received.timestamp_ms is None or not start * 1000 <= received.timestamp_ms < end * 1000:
            continue
        seen.add(record.preference_id)
        a, b = (player_of(side.model, side.model_version) for side in (record.response_a, record.response_b))
        verdicts.append((a, b, record.winner))
    return WindowVerdicts(start_s=start, end_s=end, preferences=len(seen), tallies=tally(verdicts))


@dataclass(frozen=True)
class WindowVerdicts:
    start_s: float
    end_s: float
    preferences: int
    tallies: dict[tuple[str, str], Tally]


class TopicReader:
    """A topic read without a consumer group (nothing is committed), in steps: each `to_end()`
    (or `read_to_end()`) yields what arrived since the previous one, up to the end offsets as
    they are at the call. `read_topic` reads once with it; `karma eval` watches topics grow.

    async with TopicReader(settings, "responses") as reader:
        new = await reader.read_to_end()
    """

    def __init__(
        self, settings: KarmaSettings, topic: str, *, from_beginning: bool = True, since_ms: int | None = None
    ) -> None:
        self.settings = settings
        self.name, self.model = topic_name(settings, topic)
        self._since_ms = since_ms
        self._from_beginning = from_beginning
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> TopicReader:
        if self.name not in await list_topics(self.settings):
            if await _unauthorized(self.settings, self.name):
                raise TopicAuthorizationFailedError(self.name)
            raise TopicNotFoundError(f"topic {self.name} does not exist on {self.settings.bootstrap_servers}")
        # Without a group id, a subscribed consumer is assigned every partition and commits nothing.
        self._consumer = consumer = new_consumer(
            self.settings,
            self.name,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest" if self._from_beginning else "latest",
        )
        await consumer.start()
        try:
            self._tps = sorted(consumer.assignment())
            if self._since_ms is not None:
                found = await consumer.offsets_for_times(dict.fromkeys(self._tps, self._since_ms))
                ends = await consumer.end_offsets(self._tps)
                for tp in self._tps:
                    # No message that recent: start at the end, where the next one will be.
                    consumer.seek(tp, found[tp].offset if found[tp] else ends[tp])
        except BaseException:  # __aexit__ is not called when __aenter__ raises
            await consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("a TopicReader reads inside `async with` only")
        return self._consumer

    async def poll(self, timeout_ms: int = 200) -> list[Received]:
        """What the next fetch brings (possibly nothing, after `timeout_ms`)."""
        batch = await self._live.getmany(timeout_ms=timeout_ms)
        return [_received(msg, self.model) for messages in batch.values() for msg in messages]

    async def to_end(self) -> AsyncIterator[Received]:
        ends = await self._live.end_offsets(self._tps)
        while not all([await self._live.position(tp) >= ends[tp] for tp in self._tps]):
            for received in await self.poll():
                yield received

    async def read_to_end(self) -> list[Received]:
        return [received async for received in self.to_end()]
