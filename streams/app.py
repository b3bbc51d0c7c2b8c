"""The faust app: one per worker process, carrying the agents of the roles it runs.

The app id is the consumer group and the stem of changelog topics, so it follows the role:
`karma worker generate --model M` is group `<app_id>-generate-M` (one group per model, so
every model sees every prompt; more workers with the same --model share its partitions),
`karma worker rate` is `<app_id>-rate`, `karma worker judge` is `<app_id>-judge`, and
`karma run` (all roles in one process, for laptops and CI) is `<app_id>`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
from faust.sensors import Monitor

from karma.schemas.models import DeadLetter, Record, prompt_id_of_key
from karma.streams import transport
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.health import Health
from karma.streams.kafka_clients import faust_credentials
from karma.streams.lag import LagMonitor
from karma.streams.metrics import (
    BATCH_SECONDS,
    DEAD_LETTERS,
    HANDLER_FAILURES,
    LOOP_LAG,
    MESSAGES_IN,
    MESSAGES_OUT,
    STAGE_LATENCY,
)
from karma.streams.recovery import SeekSafeTableManager
from karma.streams.topics import TOPICS, TopicNames

# The roles a worker can run, and the topics (short names, streams/topics.py) each one reads,
# for the lag gauge; streams/worker.py registers each role's agents.
CONSUMES: dict[str, tuple[str, ...]] = {
    "generate": ("prompts",),
    "rate": ("responses", "ticks", "preferences"),
    "judge": ("pairs",),
}
ROLES = tuple(CONSUMES)
log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)


def raw_topic(app: faust.App, *names: str, partitions: int) -> faust.TopicT:
    """A topic of undecoded bytes: agents decode themselves so bad bytes can reach the DLQ."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


@dataclass
class Stage:
    """What every agent needs: settings, its app, the topics, and the dead-letter path; and what
    the worker needs of the stages: their health, and their model backends to close at shutdown."""

    settings: KarmaSettings
    app: faust.App
    names: TopicNames
    topics: dict[str, faust.TopicT]
    health: Health = field(default_factory=Health)
    # The `close` of every model backend the stages built (agents/generation.py, judging.py).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Shutdown: no new batch is handed out once stopping; `_idle` is set while none is handled.
    _stopping: bool = field(default=False, init=False)
    _in_flight: int = field(default=0, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def finish_batches(self) -> None:
        """Stops handing out batches and waits for those being handled (their outputs sent, their
        messages acked). Events already fetched but not yet in a batch stay unacked, so they are
        not committed and the group redelivers them: handed back rather than worked off."""
        self._stopping = True
        self.health.mark_stopping()
        if self._in_flight:
            await self._idle.wait()

    async def close_backends(self, timeout_s: float = 10.0) -> None:
        """Closes the model backends (HTTP sessions, in-process engines), each within `timeout_s`:
        one that fails or hangs is logged, and the others are closed all the same."""
        closers, self.closers = self.closers, []
        for close in closers:
            try:
                await asyncio.wait_for(close(), timeout_s)
            except Exception as exc:  # TimeoutError included: shutdown goes on regardless
                log.warning("closing a model backend failed: %r", exc)
        log.info("closed backends (%d)", len(closers))

    async def publish(self, stage: str, topic: str, key: str, value: bytes) -> None:
        """Queues one output record (faust's producer flushes before every offset commit, so an
        input is committed only after its outputs are written). Straight to the producer: the
        topic exists (checked at start-up), and faust's channel path costs as much again."""
        await self.app.producer.send(
            getattr(self.names, topic), key.encode(), value, partition=None, timestamp=None, headers=None
        )
        MESSAGES_OUT.labels(stage, topic).inc()

    async def in_batches(
        self,
        stream: Any,
        stage: str,
        handle: Callable[[list[Any]], Awaitable[None]],
        on_retry: Callable[[], None] = lambda: None,
        batch_size: int | None = None,
    ) -> None:
        """Feeds `handle` the stream's events in batches (`batch_size`, or what arrived within
        `batch_wait_s`), so a model backend gets many requests at once; each message's latency
        is its share of its batch's time. A batch's messages are acked after `handle_safely`
        returns, that is once every one of them has its output or its dead letter."""
        async for events in self.batches(stream, batch_size or self.settings.batch_size):
            started = time.perf_counter()
            self._in_flight += 1
            self._idle.clear()
            try:
                await self.handle_safely(events, stage, handle, on_retry)
                for event in events:
                    await stream.ack(event)  # only now: handled, or dead-lettered
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()  # `finish_batches` may be waiting for this
            spent = time.perf_counter() - started
            BATCH_SECONDS.labels(stage).observe(spent)
            latency = STAGE_LATENCY.labels(stage)
            for _ in events:
                latency.observe(spent / len(events))

    async def batches(self, stream: Any, batch_size: int) -> AsyncIterator[list[Any]]:
        """The stream's events in batches: up to `batch_size`, or what arrived within
        `batch_wait_s` of a batch's first event. Acks are left to the caller.

        Not faust's `take_events`: when events arrive while a batch is being handled, it can
        ack one it never yielded and yield another twice (seen here: in a backlog of 100,000
        responses one was skipped and its prompt never paired, while its neighbour came twice).
        So a task of our own pumps the stream, with faust's acks off, into a bounded queue (its
        bound is the back-pressure)."""
        stream.enable_acks = False
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * batch_size)

        async def pump() -> None:
            async for event in stream.events():
                await queue.put(event)

        pumping = asyncio.ensure_future(pump())
        loop = asyncio.get_running_loop()
        try:
            while (first := await _next_event(queue, pumping, None)) is not _ENDED:
                batch = [first]
                deadline = loop.time() + self.settings.batch_wait_s
                while len(batch) < batch_size:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    event = await _next_event(queue, pumping, deadline - loop.time())
                    if event is None or event is _ENDED:
                        break
                    batch.append(event)
                if self._stopping:
                    # Handed back, unacked (see `finish_batches`); faust cancels this agent
                    # when it stops, which ends the wait.
                    await loop.create_future()
                yield batch
        finally:
            pumping.cancel()

    async def handle_safely(
        self,
        events: list[Any],
        stage: str,
        handle: Callable[[list[Any]], Awaitable[None]],
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        """Runs `handle(events)`. An unexpected exception is retried with backoff
        (`handler_retries` times, from 0.5 s, doubling): a broker blip or a model hiccup must not
        cost a message. If the batch still fails, each message is handled alone, and one that
        still fails goes to the DLQ with the exception (error_type `exception`). `on_retry`
        forgets the failed attempt's unsaved state. If even the dead letter cannot be sent,
        the process exits at once, before the batch is acked, so the group redelivers."""
        delay = 0.5
        for attempt in range(1, self.settings.handler_retries + 1):
            try:
                await handle(events)
                return
            except Exception as exc:
                on_retry()
                HANDLER_FAILURES.labels(stage).inc()
                log.warning("%s: batch of %d failed (attempt %d): %r", stage, len(events), attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        for event in events:
            try:
                await handle([event])
            except Exception as exc:
                on_retry()
                reason = (
                    f"unexpected {type(exc).__name__}: {exc} (its batch failed "
                    f"{self.settings.handler_retries} time(s), then it failed alone)"
                )
                try:
                    await self.dead_letter(event, stage=stage, reason=reason, error_type="exception")
                except Exception:
                    log.critical("%s: cannot dead-letter a failing message; exiting uncommitted", stage)
                    logging.shutdown()
                    os._exit(70)  # no finally blocks: the batch must not be acked

    async def decode_batch(
        self, events: list[Any], model: type[R], stage: str, *, report_errors: bool = True
    ) -> list[tuple[Any, R]]:
        """Each event with its record; one that does not decode goes to the DLQ with the reason,
        unless `report_errors` is False (another consumer group of the same topic reports it)."""
        decoded = []
        for event in events:
            MESSAGES_IN.labels(stage).inc()
            try:
                decoded.append((event, decode(event.value, model)))
            except DecodeError as exc:
                if report_errors:
                    await self.dead_letter(event, stage=stage, reason=exc.reason, error_type=exc.kind)
        return decoded

    async def dead_letter(
        self,
        event: Any,
        *,
        stage: str,
        reason: str,
        error_type: str,
        prompt_id: str | None = None,
    ) -> None:
        """Sends the event's raw bytes to the DLQ with why and where it came from. The letter
        names its prompt (field and key): `prompt_id`, or else the one the message key carries."""
        message = event.message
        raw_key = event.key if isinstance(event.key, bytes) else None
        await self._send_letter(
            DeadLetter(
                reason=reason,
                error_type=error_type,
                stage=stage,
                prompt_id=prompt_id or prompt_id_of_key(raw_key),
                source_topic=message.topic,
                source_partition=message.partition,
                source_offset=message.offset,
                key=raw_key,
                value=event.value,
            )
        )

    async def dead_letter_prompt(
        self, prompt_id: str, partition: int, *, stage: str, reason: str, error_type: str
    ) -> None:
        """A letter about a prompt that no single message caused (the rating stage's `unpaired`
        and `incomplete`): it points at the prompt's partition of the responses topic, offset
        -1, no value."""
        await self._send_letter(
            DeadLetter(
                reason=reason,
                error_type=error_type,
                stage=stage,
                prompt_id=prompt_id,
                source_topic=self.names.responses,
                source_partition=partition,
                source_offset=-1,
                key=prompt_id.encode(),
                value=None,
            )
        )

    async def _send_letter(self, letter: DeadLetter) -> None:
        key = letter.prompt_id.encode() if letter.prompt_id else letter.key
        await self.topics["dlq"].send(key=key, value=encode(letter))
        DEAD_LETTERS.labels(letter.stage, letter.error_type).inc()
        MESSAGES_OUT.labels(letter.stage, "dlq").inc()


_ENDED = object()


async def _next_event(queue: asyncio.Queue[Any], pumping: asyncio.Future[None], timeout: float | None) -> Any:
    """The next event of the queue, None after `timeout` seconds, or _ENDED when the stream
    ended; re-raises what stopped the task that fills the queue, so a broken stream is never
    waited on forever."""
    if timeout is not None and timeout <= 0:
        return None
    getting = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({getting, pumping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if getting in done:
        return getting.result()
    getting.cancel()
    if pumping in done:
        pumping.result()  # raises the stream's error, if any
        return queue.get_nowait() if not queue.empty() else _ENDED
    return None


class PerMessageQuietMonitor(Monitor):
    """faust's monitor without its per-message bookkeeping (in-memory stats for faust's web
    views, which these workers do not serve): every message, send and table access would
    otherwise update it. The workers export their own Prometheus metrics instead."""

    def on_message_in(self, *args: Any) -> None:
        return None

    def on_stream_event_in(self, *args: Any) -> None:
        return None

    def on_stream_event_out(self, *args: Any) -> None:
        return None

    def on_message_out(self, *args: Any) -> None:
        return None

    def on_table_get(self, *args: Any) -> None:
        return None

    def on_table_set(self, *args: Any) -> None:
        return None

    def on_table_del(self, *args: Any) -> None:
        return None

    def on_send_initiated(self, *args: Any, **kwargs: Any) -> None:
        return None

    def on_send_completed(self, *args: Any) -> None:
        return None


def app_id_for(settings: KarmaSettings, roles: Iterable[str], models: Iterable[str] = ()) -> str:
    """The consumer group: one per role, and one per model (or model set) for generation."""
    roles = tuple(roles)
    if set(roles) == set(ROLES):
        return settings.app_id
    parts = [settings.app_id, *roles, *sorted(models)]
    # The id also names internal topics, which allow only [a-zA-Z0-9._-].
    return re.sub(r"[^a-zA-Z0-9._-]", "_", "-".join(parts))


def new_stage(
    settings: KarmaSettings,
    roles: Iterable[str] = ROLES,
    models: list[ModelSpec] | None = None,
) -> Stage:
    """A faust app for `roles`, with its topics and the lag and loop-lag watchers, and no agents
    yet: `streams/worker.py` registers the stages' agents on it. `models` narrows generation to
    part of the pool (it names the consumer group)."""
    roles = tuple(roles)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {list(ROLES)}")
    chosen_models = [m.name for m in models] if models and roles == ("generate",) else []
    app = faust.App(
        app_id_for(settings, roles, chosen_models),
        broker=[f"{transport.SCHEME}://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),  # TLS and SASL, as every other client
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=1.0,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=16384,
        producer_linger_ms=5,
        web_enabled=False,
        autodiscover=False,
        TableManager=SeekSafeTableManager,  # see streams/recovery.py
        monitor=PerMessageQuietMonitor(),
    )
    names = TopicNames.from_settings(settings)
    topics = {
        spec.short: raw_topic(app, getattr(names, spec.short), partitions=settings.partitions)
        for spec in TOPICS
    }
    stage = Stage(settings=settings, app=app, names=names, topics=topics)
    _watch_loop_lag(app, stage.health)
    _track_health(stage)
    if settings.lag_interval_s:
        consumed = {name for role in roles for name in CONSUMES[role]}
        if not settings.competency.online:
            consumed.discard("preferences")  # only the online competency reads the verdicts
        _report_lag(app, settings, [getattr(names, name) for name in sorted(consumed)])
    return stage


def _watch_loop_lag(app: faust.App, health: Health, interval_s: float = 0.05) -> None:
    @app.task
    async def watch_loop_lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval_s)
            LOOP_LAG.observe(max(0.0, loop.time() - started - interval_s))
            health.beat()  # the loop ran this tick: /healthz says alive


def _track_health(stage: Stage) -> None:
    """Keeps `stage.health` up to date from faust's signals, and closes the stage's backends
    when the app stops: faust sends `on_before_shutdown` once its consumer has stopped, after the
    batches in flight were handled and committed (streams/worker.py `KarmaWorker`), and before
    the producer's last flush."""
    app, health = stage.app, stage.health

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        health.mark_revoked()

    @app.on_partitions_assigned.connect
    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        health.mark_assigned(assigned)

    # Sent when tables are recovered, just before the assignment's streams resume.
    @app.on_rebalance_complete.connect
    async def rebalanced(sender: Any, **kwargs: Any) -> None:
        health.mark_consuming()

    @app.on_before_shutdown.connect
    async def shutting_down(sender: Any, **kwargs: Any) -> None:
        health.mark_stopping()
        await stage.close_backends()


def _report_lag(app: faust.App, settings: KarmaSettings, topics: list[str]) -> None:
    @app.task
    async def report_lag() -> None:
        monitor = LagMonitor(settings, app.conf.id, topics)
        await monitor.run(settings.lag_interval_s)
