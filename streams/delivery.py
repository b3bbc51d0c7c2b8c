"""Confirmed delivery: a batch's messages are acked only once the broker has confirmed every
record handling them caused.

Every record a stage writes while it handles a batch goes through that batch's `Outbox`: its
outputs (responses, pairs, preferences), its dead letters, and (rating) the changes faust writes
to the tables' changelogs. `Stage.handle_safely` acks the batch only after `Outbox.confirm`
returned, that is when the broker has acknowledged each of them, so a worker that dies at any
moment leaves uncommitted every message whose outputs are not all on their topics.

A write that fails is handled by what its failure says about it:

- **the record is too large** (over the topic's record limit, found before sending, or the
  broker's MessageSizeTooLarge / RecordListTooLarge): the topic's limit is read again (an
  operator may have changed it), and a record that fits the new limit, refused only with the
  others of its batch, is sent again alone. Otherwise it is refused;
- **the broker refused the record** for another reason of its own (an invalid timestamp, a
  policy, ...): refused;
- a refused output is replaced by a dead letter naming its prompt, the record, the models it
  concerns (`models`), the topic and the error (`error_type` `too_large` or `refused`), and the
  stage's own fallback, if any (generation also publishes the model's failure record, so the
  rating stage does not wait);
- **the write could not be made** (a retriable error still failing after the producer retried
  it for `delivery_timeout_s`: not enough replicas, no leader, brokers down; or an authorization
  error), and **any dead letter or changelog write that fails**: that is no single message's
  fault, so nothing is written instead. `DeliveryFailed` is raised and the worker stops
  without committing (`Stage.handle_safely`): its input is redelivered once the cluster takes
  writes again.

Every failed write counts in `karma_publish_failures_total{stage,topic,error}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from faust.exceptions import ProducerSendError

from karma.schemas.models import DeadLetter, prompt_id_of_key
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import AUTHORIZATION_ERRORS
from karma.streams.metrics import DEAD_LETTERS, MESSAGES_OUT, PUBLISH_FAILURES
from karma.streams.sizes import (
    MAX_KEY_BYTES,
    MAX_REASON_CHARS,
    RECORD_OVERHEAD_BYTES,
    RecordLimits,
    TextBudget,
    letter_models_bytes,
    read_limits,
    record_size,
)
from karma.streams.topics import TopicNames

log = logging.getLogger(__name__)

# The broker's answers that say "this record is too large" (Kafka error codes 10 and 18).
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# Answers about this worker's credentials, not about a record: every record would get them.
NOT_ALLOWED = AUTHORIZATION_ERRORS
# How much longer than the producer's own delivery timeout a confirmation may take (a changelog
# write waits in faust's buffer before it reaches the producer).
CONFIRM_GRACE_S = 30.0


class DeliveryFailed(RuntimeError):
    """A write failed for no fault of a single record (or a dead letter could not be written):
    the worker must stop without committing, so that its input is redelivered."""


def kind_of(error: BaseException) -> str:
    """How a failed write is handled: `too_large`, `refused` (the broker refused this record), or
    `stop` (the cluster or this worker's credentials: no record is to blame)."""
    if isinstance(error, ProducerSendError) and isinstance(error.__cause__, BaseException):
        error = error.__cause__  # faust wraps what the client raised before sending
    if isinstance(error, TOO_LARGE):
        return "too_large"
    if not isinstance(error, KafkaError) or isinstance(error, NOT_ALLOWED):
        return "stop"
    if error.retriable or isinstance(error, (KafkaTimeoutError, KafkaConnectionError)):
        return "stop"  # still failing after the producer's retries for delivery_timeout_s
    return "refused"


def error_name(error: BaseException) -> str:
    """The metric label and the letter's name for an error: the client's exception class."""
    if isinstance(error, ProducerSendError) and isinstance(error.__cause__, BaseException):
        error = error.__cause__
    return type(error).__name__


@dataclass(frozen=True)
class Refusal:
    """Why an output was not written: `error` names it (an exception class, or `exceeds_limit`
    for our own check), `detail` says it in words."""

    error: str
    detail: str
    too_large: bool

    @property
    def error_type(self) -> str:
        """The dead letter's error_type."""
        return "too_large" if self.too_large else "refused"


# A stage's extra fallback for a refused output (beside the dead letter every refusal gets).
OnRefused = Callable[["Refusal"], Awaitable[None]]


@dataclass(frozen=True)
class Output:
    """One record to write, with what a dead letter needs should it be refused: its prompt, its
    id, the models it concerns, and the message that caused it (`cause`, an event), or else the
    prompt's partition."""

    stage: str
    short: str  # the topic's short name (TopicNames field), the metric label
    topic: str
    key: bytes | None
    value: bytes
    prompt_id: str | None
    record_id: str | None = None
    models: tuple[str, ...] = ()
    cause: Any = None
    partition: int = 0
    on_refused: OnRefused | None = None
    error_type: str | None = None  # a dead letter's, for its metric

    @property
    def is_letter(self) -> bool:
        return self.short == "dlq"

    @property
    def size(self) -> int:
        return record_size(self.key, self.value)

    def describe(self) -> str:
        what = f"{self.short} record {self.record_id}" if self.record_id else f"{self.short} record"
        return f"{what} of prompt {self.prompt_id}" if self.prompt_id else what


@dataclass
class Delivery:
    """What every Outbox of a worker shares: its app (the producer), the settings, the topics'
    names, and their record limits (read at start by streams/worker.py, read again when the
    broker refuses a record as too large)."""

    app: faust.App
    settings: KarmaSettings
    names: TopicNames
    limits: RecordLimits

    async def reread_limit(self, topic: str) -> None:
        try:
            fresh = await read_limits(self.settings, [topic])
        except Exception as exc:  # the limit we had stands; the refusal is handled as refused
            log.warning("cannot read the record limit of %s again: %r", topic, exc)
            return
        self.limits = self.limits.replaced(topic, fresh.of(topic))

    def text_budget(self) -> TextBudget:
        """What a prompt's texts may take: the smallest limit of the topics that carry them."""
        names = self.names
        topic, limit = self.limits.smallest((names.responses, names.pairs, names.preferences))
        return TextBudget(topic, limit, self.settings.min_answer_room_bytes)

    def outbox(self, stage: str) -> Outbox:
        return Outbox(self, stage)

    def letter_value_bytes(self) -> int:
        """How much of a message's raw value a dead letter keeps: the setting, or less where the
        dead-letter topic's own limit leaves less room beside the reason, key and ids."""
        letter_bytes = self.limits.of(self.names.dlq).max_bytes
        room = letter_bytes - RECORD_OVERHEAD_BYTES - 4 * MAX_REASON_CHARS - MAX_KEY_BYTES
        room -= letter_models_bytes(self.settings.model_names)
        return max(0, min(self.settings.dead_letter_max_value_bytes, room))


@dataclass
class Outbox:
    """Everything one batch (or one message handled alone) writes; see the module docstring."""

    delivery: Delivery
    stage: str
    _sent: list[tuple[Output, Awaitable[Any]]] = field(default_factory=list)
    _refused: list[tuple[Output, Refusal]] = field(default_factory=list)
    _changelog: list[Awaitable[Any]] = field(default_factory=list)

    async def publish(
        self,
        short: str,
        key: str,
        value: bytes,
        *,
        record_id: str,
        models: Iterable[str] = (),
        cause: Any = None,
        partition: int = 0,
        on_refused: OnRefused | None = None,
    ) -> None:
        """Sends one output keyed by its prompt id; `confirm` waits for the broker's answer.
        `models`: the models it concerns (its letter names them should it be refused)."""
        await self._send(
            Output(
                self.stage,
                short,
                getattr(self.delivery.names, short),
                key.encode(),
                value,
                prompt_id=key,
                record_id=record_id,
                models=tuple(models),
                cause=cause,
                partition=partition,
                on_refused=on_refused,
            )
        )

    async def dead_letter(
        self,
        event: Any,
        *,
        reason: str,
        error_type: str,
        prompt_id: str | None = None,
        record_id: str | None = None,
        models: Iterable[str] = (),
    ) -> None:
        """A letter with the event's raw bytes (bounded), why, and where it came from. It names its
        prompt (field and key): `prompt_id`, or else the one the message key carries; and the
        models it concerns, if any."""
        message = event.message
        raw_key = event.key if isinstance(event.key, bytes) else None
        await self._send_letter(
            bounded_letter(
                stage=self.stage,
                reason=reason,
                error_type=error_type,
                prompt_id=prompt_id or prompt_id_of_key(raw_key),
                record_id=record_id,
                models=models,
                source=(message.topic, message.partition, message.offset),
                key=raw_key,
                value=event.value,
                max_value_bytes=self.delivery.letter_value_bytes(),
            )
        )

    async def dead_letter_prompt(
        self,
        prompt_id: str,
        partition: int,
        *,
        reason: str,
        error_type: str,
        record_id: str | None = None,
        models: Iterable[str] = (),
    ) -> None:
        """A letter about a prompt that no single message caused (the rating stage's `unpaired`,
        `incomplete`, or a pair not written): it points at the prompt's partition of the responses
        topic, offset -1, no value, and names the models it concerns."""
        await self._send_letter(
            bounded_letter(
                stage=self.stage,
                reason=reason,
                error_type=error_type,
                prompt_id=prompt_id,
                record_id=record_id,
                models=models,
                source=(self.delivery.names.responses, partition, -1),
                key=prompt_id.encode(),
                value=None,
                max_value_bytes=0,
            )
        )

    def track(self, writes: Iterable[Awaitable[Any]]) -> None:
        """Changelog writes (faust's futures) to be confirmed with the outputs."""
        self._changelog.extend(writes)

    async def confirm(self) -> None:
        """Returns once the broker has confirmed every record sent through this outbox, and every
        refused output has its dead letter (itself confirmed). Raises DeliveryFailed when a write
        failed for no fault of its record (see the module docstring)."""
        timeout = self.delivery.settings.delivery_timeout_s + CONFIRM_GRACE_S
        while self._sent or self._refused or self._changelog:
            sent, self._sent = self._sent, []
            writes, self._changelog = self._changelog, []
            try:
                results, changelog = await asyncio.wait_for(
                    asyncio.gather(
                        asyncio.gather(*(future for _, future in sent), return_exceptions=True),
                        asyncio.gather(*writes, return_exceptions=True),
                    ),
                    timeout,
                )
            except TimeoutError:
                raise DeliveryFailed(f"{self.stage}: writes not confirmed within {timeout:g} s") from None
            for (output, _), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    self._failed(output, result)
                else:
                    self._confirmed(output)
            for result in changelog:
                if isinstance(result, BaseException):
                    PUBLISH_FAILURES.labels(self.stage, "changelog", error_name(result)).inc()
                    raise DeliveryFailed(f"{self.stage}: a state write to a changelog failed: {result!r}")
            refused, self._refused = self._refused, []
            for output, refusal in refused:
                await self._replace(output, refusal)

    # -- internals ----------------------------------------------------------------------------

    async def _send(self, output: Output) -> None:
        limit = self.delivery.limits.of(output.topic)
        if output.size > limit.max_bytes:
            detail = f"{output.size:,} bytes; {limit.describe(output.topic)}"
            self._refused.append((output, Refusal("exceeds_limit", detail, too_large=True)))
            return
        try:
            future = await self.delivery.app.producer.send(
                output.topic, output.key, output.value, partition=None, timestamp=None, headers=None
            )
        except Exception as exc:  # refused before sending: by the client, or it cannot send at all
            self._failed(output, exc)
            return
        self._sent.append((output, future))

    def _confirmed(self, output: Output) -> None:
        MESSAGES_OUT.labels(output.stage, output.short).inc()
        if output.error_type is not None:
            DEAD_LETTERS.labels(output.stage, output.error_type).inc()

    def _failed(self, output: Output, error: BaseException) -> None:
        kind = kind_of(error)
        name = error_name(error)
        if kind == "stop" or output.is_letter:
            PUBLISH_FAILURES.labels(output.stage, output.short, name).inc()
            raise DeliveryFailed(f"{output.describe()} not written to {output.topic}: {name}: {error}")
        self._refused.append((output, Refusal(name, f"{name}: {error}", too_large=kind == "too_large")))

    async def _replace(self, output: Output, refusal: Refusal) -> None:
        """A refused output: sent again alone if it fits its topic's limit as read now, else
        replaced by its dead letter and the stage's fallback."""
        PUBLISH_FAILURES.labels(output.stage, output.short, refusal.error).inc()
        if output.is_letter:
            raise DeliveryFailed(f"a dead letter could not be written to {output.topic}: {refusal.detail}")
        if refusal.too_large and refusal.error != "exceeds_limit":
            await self.delivery.reread_limit(output.topic)
            limit = self.delivery.limits.of(output.topic)
            if output.size > limit.max_bytes:
                detail = f"{output.size:,} bytes; {limit.describe(output.topic)}"
                refusal = Refusal(refusal.error, detail, too_large=True)
            elif await self._sent_alone(output):
                return
        reason = f"{output.describe()} not written to {output.topic}: {refusal.detail}"
        log.warning("%s: %s", output.stage, reason)
        if output.cause is not None:
            await self.dead_letter(
                output.cause,
                reason=reason,
                error_type=refusal.error_type,
                prompt_id=output.prompt_id,
                record_id=output.record_id,
                models=output.models,
            )
        else:
            await self.dead_letter_prompt(
                output.prompt_id or "",
                output.partition,
                reason=reason,
                error_type=refusal.error_type,
                record_id=output.record_id,
                models=output.models,
            )
        if output.on_refused is not None:
            await output.on_refused(refusal)

    async def _sent_alone(self, output: Output) -> bool:
        """Sends a record that fits its topic's limit on its own and waits for the broker: True
        when it is written, False when the broker refuses it again (DeliveryFailed when the
        write cannot be made at all)."""
        try:
            await (
                await self.delivery.app.producer.send(
                    output.topic, output.key, output.value, partition=None, timestamp=None, headers=None
                )
            )
        except Exception as exc:
            if kind_of(exc) == "stop":
                self._failed(output, exc)
            return False
        self._confirmed(output)
        return True

    async def _send_letter(self, letter: DeadLetter) -> None:
        await self._send(
            Output(
                self.stage,
                "dlq",
                self.delivery.names.dlq,
                letter.prompt_id.encode() if letter.prompt_id else letter.key,
                encode(letter),
                prompt_id=letter.prompt_id,
                record_id=letter.record_id,
                error_type=letter.error_type,
            )
        )


class ConfirmedTable(faust.Table):
    """faust's Table, keeping each changelog write's future until `take_writes` hands them over,
    so that a stage confirms its state writes with its outputs (`Outbox.track`). faust itself
    only logs a changelog write the broker refused. Plugged in as `faust.App(Table=...)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[Awaitable[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(future)
        return future

    def take_writes(self) -> list[Awaitable[Any]]:
        """The changelog writes made since the last call."""
        writes, self._unconfirmed = self._unconfirmed, []
        return writes


def bounded_letter(
    *,
    stage: str,
    reason: str,
    error_type: str,
    prompt_id: str | None,
    record_id: str | None,
    source: tuple[str, int, int],
    key: bytes | None,
    value: bytes | None,
    max_value_bytes: int,
    models: Iterable[str] = (),
) -> DeadLetter:
    """A dead letter whose size is bounded whatever it is about: the raw value is cut to
    `max_value_bytes` (its whole length and SHA-256 kept), the key to MAX_KEY_BYTES and the
    reason to MAX_REASON_CHARS (each cut said in the reason). `models` is never cut: a letter
    names at most the pool, or a pair's two models (`Delivery.letter_value_bytes` leaves room)."""
    notes = []
    if key is not None and len(key) > MAX_KEY_BYTES:
        notes.append(f"key of {len(key):,} bytes cut to {MAX_KEY_BYTES:,}")
        key = key[:MAX_KEY_BYTES]
    if value is not None and len(value) > max_value_bytes:
        notes.append(f"value of {len(value):,} bytes cut to {max_value_bytes:,}")
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    if notes:
        reason = f"{reason} [{'; '.join(notes)}]"
    source_topic, source_partition, source_offset = source
    return DeadLetter(
        reason=reason,
        error_type=error_type,
        stage=stage,
        prompt_id=prompt_id,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        key=key,
        value=None if value is None else value[:max_value_bytes],
        value_size=None if value is None else len(value),
        value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
        record_id=record_id,
        models=list(dict.fromkeys(models)),  # each once, in the order given
    )
