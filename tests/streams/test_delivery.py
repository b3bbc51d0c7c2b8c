"""Confirmed delivery without a broker: a producer that answers each record as told, and the
rules of streams/delivery.py. A batch's outbox returns from `confirm` only when every record is
confirmed or replaced by its dead letter; a failure that is no record's fault raises."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidTimestampError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError
from prometheus_client import REGISTRY

from karma.schemas.models import DeadLetter
from karma.streams.codecs import decode, encode
from karma.streams.config import KarmaSettings
from karma.streams.delivery import Delivery, DeliveryFailed, Outbox, Refusal, bounded_letter, kind_of
from karma.streams.sizes import MAX_KEY_BYTES, Limit, RecordLimits, record_size
from karma.streams.topics import TopicNames

SETTINGS = KarmaSettings()
NAMES = TopicNames.from_settings(SETTINGS)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    value: bytes
    message: Message
    key: bytes | None = b"p-1"


PROMPT_EVENT = Event(b"the prompt's bytes", Message(NAMES.prompts, 2, 41))


@dataclass
class Producer:
    """Answers each send with a future: `answer(topic, value, attempt)` returns None (written)
    or the exception the broker would answer with; `raises[topic]` is raised by send itself."""

    answer: Callable[[str, bytes, int], BaseException | None] = lambda topic, value, attempt: None
    raises: dict[str, BaseException] = field(default_factory=dict)
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes | None, value: bytes, **_: Any) -> asyncio.Future[Any]:
        if topic in self.raises:
            raise self.raises[topic]
        attempt = sum(1 for t, v in self.sent if (t, v) == (topic, value))
        self.sent.append((topic, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.answer(topic, value, attempt)
        future.set_exception(error) if error is not None else future.set_result("metadata")
        return future

    def on(self, topic: str) -> list[bytes]:
        return [value for t, value in self.sent if t == topic]


class FakeDelivery(Delivery):
    """A Delivery whose limits are given, and whose re-read of a limit finds `reread` (if set)."""

    def __init__(self, producer: Producer, limits: dict[str, int] | None = None) -> None:
        app = type("App", (), {"producer": producer})()
        by_topic = {topic: Limit(size, "test") for topic, size in (limits or {}).items()}
        super().__init__(app, SETTINGS, NAMES, RecordLimits(by_topic, Limit(1_000_000, "test")))  # type: ignore[arg-type]
        self.reread: dict[str, int] = {}

    async def reread_limit(self, topic: str) -> None:
        if topic in self.reread:
            self.limits = self.limits.replaced(topic, Limit(self.reread[topic], "re-read"))


def letters(producer: Producer) -> list[DeadLetter]:
    return [decode(value, DeadLetter) for value in producer.on(NAMES.dlq)]


def failures(stage: str, topic: str, error: str) -> float:
    labels = {"stage": stage, "topic": topic, "error": error}
    return REGISTRY.get_sample_value("karma_publish_failures_total", labels) or 0.0


def run(outbox: Outbox, *sends: Any) -> None:
    async def scenario() -> None:
        for send in sends:
            await send(outbox)
        await outbox.confirm()

    asyncio.run(scenario())


def answer_of(size: int = 100, **kwargs: Any) -> Callable[[Outbox], Any]:
    return lambda outbox: outbox.publish(
        "responses", "p-1", b"x" * size, record_id="r-1", cause=PROMPT_EVENT, **kwargs
    )


# --- written, or replaced by a dead letter --------------------------------------------------


def test_confirm_returns_once_every_record_is_written() -> None:
    producer = Producer()
    run(Outbox(FakeDelivery(producer), "generation"), answer_of(), answer_of(200))
    assert [len(v) for v in producer.on(NAMES.responses)] == [100, 200] and not letters(producer)


def test_a_record_over_its_topics_limit_is_not_sent_and_gets_a_letter_and_the_stage_fallback() -> None:
    producer = Producer()
    fallbacks: list[Refusal] = []

    async def fallback(refusal: Refusal) -> None:
        fallbacks.append(refusal)

    before = failures("generation", "responses", "exceeds_limit")
    run(
        Outbox(FakeDelivery(producer, {NAMES.responses: 500}), "generation"),
        answer_of(600, on_refused=fallback, models=["m-1"]),
    )
    assert not producer.on(NAMES.responses)  # found before sending
    [letter] = letters(producer)
    assert letter.error_type == "too_large" and letter.prompt_id == "p-1" and letter.record_id == "r-1"
    assert letter.models == ["m-1"]  # the model whose answer it stands for
    assert f"not written to {NAMES.responses}" in letter.reason and "at most 500 bytes" in letter.reason
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (NAMES.prompts, 2, 41)
    assert letter.value == PROMPT_EVENT.value  # the message that caused it, for a resubmission
    assert [f.error_type for f in fallbacks] == ["too_large"]
    assert failures("generation", "responses", "exceeds_limit") == before + 1


def test_a_record_the_broker_refuses_as_too_large_is_sent_alone_again_when_it_fits_the_limit_read_again() -> (
    None
):
    # Refused with the others of its batch (or before the limit was raised): it fits on its own.
    producer = Producer(answer=lambda t, v, attempt: MessageSizeTooLargeError() if attempt == 0 else None)
    run(Outbox(FakeDelivery(producer), "generation"), answer_of())
    assert len(producer.on(NAMES.responses)) == 2 and not letters(producer)


def test_a_record_over_the_limit_read_again_after_the_broker_refused_it_gets_its_letter() -> None:
    producer = Producer(answer=lambda t, v, a: MessageSizeTooLargeError() if t == NAMES.responses else None)
    delivery = FakeDelivery(producer)
    delivery.reread[NAMES.responses] = 300  # an operator lowered the topic's max.message.bytes
    run(Outbox(delivery, "generation"), answer_of(400))
    [letter] = letters(producer)
    assert letter.error_type == "too_large" and "at most 300 bytes (re-read)" in letter.reason
    assert len(producer.on(NAMES.responses)) == 1  # not sent again: it cannot fit


def test_another_refusal_of_the_record_gets_a_letter_with_the_brokers_error() -> None:
    producer = Producer(answer=lambda t, v, a: InvalidTimestampError() if t == NAMES.preferences else None)
    outbox = Outbox(FakeDelivery(producer), "judging")
    pair_event = Event(b"pair bytes", Message(NAMES.pairs, 1, 7))
    run(
        outbox,
        lambda o: o.publish(
            "preferences", "p-1", b"v", record_id="pair-1", models=("a", "b"), cause=pair_event
        ),
    )
    [letter] = letters(producer)
    assert letter.error_type == "refused" and "InvalidTimestampError" in letter.reason
    assert (letter.source_topic, letter.source_offset, letter.record_id) == (NAMES.pairs, 7, "pair-1")
    assert letter.models == ["a", "b"]


def test_a_refused_output_of_no_single_message_is_lettered_on_its_prompts_partition() -> None:
    producer = Producer()
    outbox = Outbox(FakeDelivery(producer, {NAMES.pairs: 200}), "rating")
    run(
        outbox,
        lambda o: o.publish("pairs", "p-1", b"x" * 300, record_id="pair-9", models=["b", "a"], partition=3),
    )
    [letter] = letters(producer)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (NAMES.responses, 3, -1)
    assert letter.record_id == "pair-9" and letter.value is None and letter.models == ["b", "a"]


# --- failures that are no record's fault ----------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [NotEnoughReplicasError(), TopicAuthorizationFailedError()],
    ids=["retriable after the producer's retries", "authorization"],
)
def test_a_write_the_cluster_does_not_take_raises_and_writes_nothing_instead(error: BaseException) -> None:
    producer = Producer(answer=lambda t, v, a: error)
    before = failures("generation", "responses", type(error).__name__)
    with pytest.raises(DeliveryFailed, match=type(error).__name__):
        run(Outbox(FakeDelivery(producer), "generation"), answer_of())
    assert not letters(producer)
    assert failures("generation", "responses", type(error).__name__) == before + 1


def test_an_error_raised_by_send_itself_is_classified_by_its_cause() -> None:
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = MessageSizeTooLargeError()
    assert kind_of(wrapped) == "too_large" and kind_of(RuntimeError("producer not running")) == "stop"
    producer = Producer(raises={NAMES.responses: wrapped})
    run(Outbox(FakeDelivery(producer), "generation"), answer_of())
    [letter] = letters(producer)  # refused before sending, by the client: too large, lettered
    assert letter.error_type == "too_large" and "MessageSizeTooLargeError" in letter.reason


def test_a_dead_letter_that_cannot_be_written_raises() -> None:
    producer = Producer(answer=lambda t, v, a: MessageSizeTooLargeError())
    with pytest.raises(DeliveryFailed, match="dlq"):
        run(Outbox(FakeDelivery(producer), "generation"), answer_of())


def test_a_changelog_write_that_fails_raises() -> None:
    async def failed_write() -> None:
        raise NotEnoughReplicasError()

    outbox = Outbox(FakeDelivery(Producer()), "rating")
    outbox.track([failed_write()])
    with pytest.raises(DeliveryFailed, match="changelog"):
        asyncio.run(outbox.confirm())


# --- bounded letters ------------------------------------------------------------------------


def test_a_letter_keeps_a_bounded_prefix_with_the_whole_values_length_and_hash() -> None:
    value = bytes(range(256)) * 4_000  # 1,024,000 bytes
    letter = bounded_letter(
        stage="generation",
        reason="r" * 10_000,
        error_type="too_large",
        prompt_id="p-1",
        record_id=None,
        source=(NAMES.prompts, 0, 5),
        key=b"k" * 5_000,
        value=value,
        max_value_bytes=65_536,
    )
    assert letter.value == value[:65_536] and letter.value_size == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.key == b"k" * MAX_KEY_BYTES
    assert (
        "value of 1,024,000 bytes cut to 65,536" in letter.reason
        and "key of 5,000 bytes cut" in letter.reason
    )
    assert record_size(b"p-1", encode(letter)) < 100_000


def test_a_letter_fits_a_small_dead_letter_topic() -> None:
    producer = Producer()
    delivery = FakeDelivery(producer, {NAMES.dlq: 30_000})
    big = Event(b"z" * 900_000, Message(NAMES.prompts, 0, 1))
    run(
        Outbox(delivery, "generation"), lambda o: o.dead_letter(big, reason="too big", error_type="too_large")
    )
    [value] = producer.on(NAMES.dlq)
    assert record_size(b"p-1", value) <= 30_000
    letter = decode(value, DeadLetter)
    assert letter.value_size == 900_000 and len(letter.value or b"") == delivery.letter_value_bytes()


def test_a_letter_naming_a_whole_pool_of_the_longest_names_still_fits() -> None:
    # 40 names of 256 characters: without room kept for them, this letter would not fit.
    settings = KarmaSettings(pool=[{"name": f"{i:02d}" + "m" * 254} for i in range(40)])  # type: ignore[list-item]
    producer = Producer()
    delivery = FakeDelivery(producer, {NAMES.dlq: 40_000})
    delivery.settings = settings
    big = Event(b"z" * 900_000, Message(NAMES.responses, 0, 1), key=b"k" * 5_000)
    reason = "\N{GRINNING FACE}" * 10_000  # 4 bytes a character: the most a reason may take
    run(
        Outbox(delivery, "rating"),
        lambda o: o.dead_letter(big, reason=reason, error_type="incomplete", models=settings.model_names),
    )
    [value] = producer.on(NAMES.dlq)
    letter = decode(value, DeadLetter)
    assert letter.models == settings.model_names and record_size(None, value) <= 40_000
