"""`Stage`: what every agent shares. Batching (a model backend gets many requests at once),
retries and dead letters (no message can stop a stage), and confirmed delivery (a batch's input is
acked only once the broker has confirmed everything it wrote, streams/delivery.py). The agents
(agents/generation.py, rating.py, judging.py) say what a stage does with a batch; this module says
how batches come and go. streams/app.py builds the faust app a Stage runs on."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import faust
from mode.utils.queues import FlowControlQueue

from karma.schemas.models import Record
from karma.streams import transport
from karma.streams.codecs import DecodeError, decode
from karma.streams.config import KarmaSettings
from karma.streams.delivery import Delivery, DeliveryFailed, Outbox
from karma.streams.health import Health
from karma.streams.metrics import BATCH_SECONDS, HANDLER_FAILURES, MESSAGES_IN, STAGE_LATENCY
from karma.streams.sizes import RecordLimits
from karma.streams.topics import TopicNames

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)
# A batch handler: the batch's events, and the outbox everything it writes goes through.
Handler = Callable[[list[Any], Outbox], Awaitable[None]]
# Exit codes of a worker that stops without committing: a message it cannot even dead-letter
# (EX_SOFTWARE), a write the cluster does not take (EX_TEMPFAIL: start it again later).
EX_UNHANDLED = 70
EX_UNDELIVERED = 75
# Batches handled whose writes the broker has not confirmed yet, per agent (`Stage.in_batches`).
UNCONFIRMED_BATCHES = 4


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
    """What every agent needs: settings, its app, the topics, batching, and confirmed delivery
    (an Outbox per batch, streams/delivery.py); and what the worker needs of the stages: their
    health, and their model backends to close at shutdown."""

    settings: KarmaSettings
    app: faust.App
    names: TopicNames
    topics: dict[str, faust.TopicT]
    health: Health = field(default_factory=Health)
    delivery: Delivery = field(init=False)
    # The `close` of every model backend the stages built (agents/generation.py, judging.py).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The `load` of every model, by name: streams/worker.py awaits them before faust starts.
    loaders: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    # Shutdown: no new batch is handed out once stopping; `_idle` is set while none is handled.
    _stopping: bool = field(default=False, init=False)
    _in_flight: int = field(default=0, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        # Every topic at the configured limit until streams/worker.py reads the topics' own.
        self.delivery = Delivery(self.app, self.settings, self.names, RecordLimits.unread(self.settings))

    async def finish_batches(self) -> None:
        """Stops handing out batches and waits for those being handled (their outputs sent, their
        messages acked). Events already fetched but not yet in a batch stay unacked, so they are
        not committed and the group redelivers them: handed back rather than worked off."""
        self._stopping = True
        self.health.mark_stopping()
        await self.batches_done()

    async def batches_done(self) -> None:
        """Returns once no batch is being handled. A rebalance waits for this before the worker
        rejoins its group (streams/transport.py `on_partitions_revoked`): the batch in hand is
        finished and committed, the events queued behind it are handed back (`batches`)."""
        if self._in_flight:
            await self._idle.wait()

    def expect_model(self, name: str, load: Callable[[], Awaitable[None]]) -> None:
        """A model the worker loads before it consumes (`load_models`); not ready until then."""
        self.health.expect_model(name)
        self.loaders.append((name, load))

    async def load_models(self) -> None:
        """Loads every model, one after the other (two loading at once would fight for memory),
        each marked loaded on /readyz as it is. A model that cannot load raises ModelLoadError
        (agents/backends/base.py), before anything is consumed."""
        for name, load in self.loaders:
            log.info("loading model %s", name)
            started = time.perf_counter()
            await load()
            self.health.mark_model_loaded(name)
            log.info("loaded model %s in %.1f s", name, time.perf_counter() - started)

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

    async def in_batches(
        self,
        stream: Any,
        stage: str,
        handle: Handler,
        on_retry: Callable[[], None] = lambda: None,
        batch_size: int | None = None,
        concurrent: int = 1,
    ) -> None:
        """Feeds `handle` the stream's events in batches (`batch_size`, or what arrived within
        `batch_wait_s`), so a model backend gets many requests at once; each message's latency
        is its share of its batch's time. A batch's messages are acked only once the broker has
        confirmed every output and dead letter they caused (`Outbox.confirm`), and in the order
        the batches came. The next batch is handled while that confirmation is on its way (at most
        UNCONFIRMED_BATCHES of them), so the stage does not idle for a broker round trip per batch.

        `concurrent` batches may be handled at once (a stage without state between batches:
        generation), so that the next batch is decoded and waiting at the model while the last
        one's answers are published; acks keep the batches' order all the same."""
        consumer = self.app.consumer
        if isinstance(consumer, transport.BatchDrainConsumer):
            consumer.finish_in_hand = self.batches_done  # a rebalance lets the batch in hand finish
        handling: set[asyncio.Future[Outbox]] = set()
        unconfirmed: deque[asyncio.Future[None]] = deque()
        try:
            async for events in self.batches(stream, batch_size or self.settings.batch_size):
                started = time.perf_counter()
                self._in_flight += 1
                self._idle.clear()
                handled = asyncio.ensure_future(self.handle_safely(events, stage, handle, on_retry))
                previous = unconfirmed[-1] if unconfirmed else None
                confirming = asyncio.ensure_future(
                    self._confirm_then_ack(stream, stage, events, handled, previous, started)
                )
                # Counted down however it ends: a task cancelled before it started runs no finally.
                confirming.add_done_callback(lambda _: self._batch_done())
                unconfirmed.append(confirming)
                handling.add(handled)
                while len(handling) >= concurrent:
                    done, _ = await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
                    for finished in done:
                        handling.discard(finished)
                        finished.result()  # what stopped a handler stops the agent
                while unconfirmed and (len(unconfirmed) > UNCONFIRMED_BATCHES or unconfirmed[0].done()):
                    await unconfirmed.popleft()
        finally:
            for task in (*handling, *unconfirmed):
                task.cancel()  # the agent stops: what is not acked is redelivered
                if task.done() and not task.cancelled():
                    task.exception()  # raised above already, or its batch's own failure: retrieved

    async def _confirm_then_ack(
        self,
        stream: Any,
        stage: str,
        events: list[Any],
        handled: asyncio.Future[Outbox],
        previous: asyncio.Future[None] | None,
        started: float,
    ) -> None:
        """Acks a handled batch once the broker confirmed what it wrote, after the batch before it."""
        outbox = await handled  # a handler that was stopped acks nothing
        try:
            await outbox.confirm()
            if previous is not None:
                await previous
            for event in events:
                await stream.ack(event)  # only now: handled or dead-lettered, and confirmed
        except DeliveryFailed as exc:
            _exit_uncommitted(EX_UNDELIVERED, f"{stage}: {exc}")
        except Exception as exc:  # a bug in confirming: nothing is acked
            _exit_uncommitted(EX_UNHANDLED, f"{stage}: confirming a batch failed: {exc!r}")
        spent = time.perf_counter() - started
        BATCH_SECONDS.labels(stage).observe(spent)
        latency = STAGE_LATENCY.labels(stage)
        for _ in events:
            latency.observe(spent / len(events))

    def _batch_done(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()  # `batches_done` may be waiting for this

    async def batches(self, stream: Any, batch_size: int) -> AsyncIterator[list[Any]]:
        """The stream's events in batches: up to `batch_size`, or what arrived within
        `batch_wait_s` of a batch's first event. Acks are left to the caller.

        Not faust's `take_events`: when events arrive while a batch is being handled, it can
        ack one it never yielded and yield another twice (seen here: in a backlog of 100,000
        responses one was skipped and its prompt never paired, while its neighbour came twice).
        So a task of our own pumps the stream, with faust's acks off, into a bounded queue (its
        bound is the back-pressure).

        The queue is under faust's flow control, like the agents' own buffers: a rebalance
        clears it, and a batch assembled while the flow is stopped is dropped, so the events
        queued go to the partitions' owner-to-be (uncommitted, they are redelivered) while this
        worker finishes only the batch in hand (`batches_done`). Left to run them, a worker spent
        a whole queue's worth of slow model batches in the rebalance, past the rebalance timeout,
        and the group dropped it (tests/e2e/test_scaling.py)."""
        stream.enable_acks = False
        queue: HandBackQueue[Any] = HandBackQueue(
            maxsize=2 * batch_size, flow_control=self.app.flow_control, clear_on_resume=True
        )

        flow = self.app.flow_control

        async def pump() -> None:
            async for event in stream.events():
                if flow.is_active():
                    await queue.put(event)
                    if not flow.is_active():  # it went in after a rebalance cleared the queue
                        queue.clear()
                # Not held while the next event is awaited: faust's rebalance waits for every
                # event still referenced to be acked, and this one will not be.
                del event

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
                if not flow.is_active():
                    # A rebalance began: handed back, unacked, and no reference to them kept.
                    batch.clear()
                    first = event = None
                    continue
                yield batch
        finally:
            pumping.cancel()

    async def handle_safely(
        self,
        events: list[Any],
        stage: str,
        handle: Handler,
        on_retry: Callable[[], None] = lambda: None,
    ) -> Outbox:
        """Runs `handle(events, outbox)` and returns the outbox, for the caller to confirm. An
        unexpected exception is retried with backoff (`handler_retries` times, from 0.5 s,
        doubling): a model hiccup must not cost a message. If the batch still fails, each message
        is handled alone (and what it wrote confirmed here), and one that still fails goes to the
        DLQ with the exception (error_type `exception`). `on_retry` forgets the failed attempt's
        unsaved state. A write that cannot be made (DeliveryFailed: the cluster does not take it,
        or a dead letter cannot be written) stops the process at once, before the batch is
        acked, so the group redelivers."""
        delay = 0.5
        for attempt in range(1, self.settings.handler_retries + 1):
            outbox = self.delivery.outbox(stage)
            try:
                await handle(events, outbox)
                return outbox
            except DeliveryFailed as exc:
                _exit_uncommitted(EX_UNDELIVERED, f"{stage}: {exc}")
            except Exception as exc:
                on_retry()
                HANDLER_FAILURES.labels(stage).inc()
                log.warning("%s: batch of %d failed (attempt %d): %r", stage, len(events), attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        for event in events:
            outbox = self.delivery.outbox(stage)
            try:
                await handle([event], outbox)
                await outbox.confirm()
            except DeliveryFailed as exc:
                _exit_uncommitted(EX_UNDELIVERED, f"{stage}: {exc}")
            except Exception as exc:
                on_retry()
                reason = (
                    f"unexpected {type(exc).__name__}: {exc} (its batch failed "
                    f"{self.settings.handler_retries} time(s), then it failed alone)"
                )
                outbox = self.delivery.outbox(stage)
                try:
                    await outbox.dead_letter(event, reason=reason, error_type="exception")
                    await outbox.confirm()
                except Exception as unsent:
                    _exit_uncommitted(
                        EX_UNHANDLED, f"{stage}: cannot dead-letter a failing message: {unsent!r}"
                    )
        return self.delivery.outbox(stage)  # every message confirmed above: nothing left

    async def decode_batch(
        self, events: list[Any], model: type[R], outbox: Outbox, *, report_errors: bool = True
    ) -> list[tuple[Any, R]]:
        """Each event with its record; one that does not decode goes to the DLQ with the reason,
        unless `report_errors` is False (another consumer group of the same topic reports it)."""
        decoded = []
        for event in events:
            MESSAGES_IN.labels(outbox.stage).inc()
            try:
                decoded.append((event, decode(event.value, model)))
            except DecodeError as exc:
                if report_errors:
                    await outbox.dead_letter(event, reason=exc.reason, error_type=exc.kind)
        return decoded


def _exit_uncommitted(code: int, why: str) -> NoReturn:
    """Exits at once (no finally blocks, no faust shutdown): nothing of the batch in hand is
    acked, so the group redelivers it to whoever runs next."""
    log.critical("%s; exiting uncommitted (code %d)", why, code)
    logging.shutdown()
    os._exit(code)


class HandBackQueue(FlowControlQueue[Any]):
    """The batching queue (`Stage.batches`): faust clears it when a rebalance begins, like its own
    buffers. Clearing also wakes the producer waiting for room, which asyncio's queue would only
    wake on a `get`; with the queue cleared while full, the pump waited for a `get` that waited
    for the pump, and the stage stalled (seen in tests/e2e/test_scaling.py)."""

    def clear(self) -> None:
        super().clear()
        while self._putters:  # type: ignore[attr-defined]  # asyncio.Queue's, as mode's queue uses
            self._wakeup_next(self._putters)  # type: ignore[attr-defined]


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
