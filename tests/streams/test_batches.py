"""The batching of generation, rating and judging: every event exactly once, in order, acked
only by the caller, even when events keep arriving while a batch is being handled."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from mode.utils.queues import FlowControlEvent

from karma.streams.config import KarmaSettings
from karma.streams.stage import Stage


class FakeStream:
    """Yields numbered events at uneven pace, like a consumer fetching batches."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.count, self.fail_after = count, fail_after
        self.enable_acks = True

    async def events(self) -> AsyncIterator[int]:
        rng = random.Random(7)
        for i in range(self.count):
            if i == self.fail_after:
                raise ConnectionError("the stream broke")
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() / 500)
            yield i


def stage(batch_size: int = 8, batch_wait_s: float = 0.01) -> Stage:
    """A Stage whose app is only what batching needs of it: faust's flow control, flowing."""
    settings = KarmaSettings(batch_size=batch_size, batch_wait_s=batch_wait_s)
    app = SimpleNamespace(flow_control=FlowControlEvent(initially_suspended=False))
    return Stage(settings=settings, app=app, names=None, topics={})  # type: ignore[arg-type]


async def collect(stream: FakeStream, handle_s: float = 0.001) -> list[list[int]]:
    batches: list[list[int]] = []
    async for batch in stage().batches(stream, 8):
        batches.append(batch)
        await asyncio.sleep(handle_s)  # events keep arriving while a batch is handled
        if sum(map(len, batches)) == stream.count:
            break
    return batches


def test_every_event_once_in_order_in_bounded_batches() -> None:
    stream = FakeStream(2_000)
    batches = asyncio.run(collect(stream))
    assert [e for batch in batches for e in batch] == list(range(2_000))
    assert max(map(len, batches)) <= 8 and len(batches) < 2_000  # batched, not one by one
    assert stream.enable_acks is False  # acks are the caller's, after handling


def test_a_broken_stream_is_raised_not_waited_on() -> None:
    async def scenario() -> None:
        async for _ in stage().batches(FakeStream(100, fail_after=50), 8):
            pass

    with pytest.raises(ConnectionError, match="the stream broke"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_a_lone_event_waits_at_most_batch_wait_s() -> None:
    async def scenario() -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for batch in stage(batch_wait_s=0.05).batches(FakeStream(1), 8):
            return batch, loop.time() - started
        return None

    batch, waited = asyncio.run(scenario())
    assert batch == [0] and waited < 1.0


def test_a_rebalance_drops_the_queued_events_and_hands_out_only_new_ones() -> None:
    """faust clears the agents' buffers when a rebalance starts (flow_control.clear()); the events
    queued for the next batches go too, unyielded and so unacked: redelivered to the partitions'
    next owner, while the worker finishes only the batch in hand."""

    class Bursts:
        """Ten events, then (once the test says so) ten more."""

        enable_acks = True

        def __init__(self) -> None:
            self.more = asyncio.Event()

        async def events(self) -> AsyncIterator[int]:
            for i in range(10):
                yield i
            await self.more.wait()
            for i in range(100, 110):
                yield i

    async def scenario() -> list[list[int]]:
        s, stream = stage(batch_size=4), Bursts()
        flow = s.app.flow_control
        yielded = []
        async for batch in s.batches(stream, 4):
            yielded.append(batch)
            if len(yielded) == 1:
                await asyncio.sleep(0.05)  # the other six are queued by now
                flow.suspend()  # a rebalance starts: faust stops the flow and clears the buffers
                flow.clear()
                flow.resume()
                stream.more.set()
            if sum(map(len, yielded)) >= 14:
                return yielded
        return yielded

    yielded = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert yielded[0] == [0, 1, 2, 3]
    assert [e for batch in yielded[1:] for e in batch] == list(range(100, 110))  # 4-9 dropped


def test_a_rebalance_that_clears_a_full_queue_does_not_stall_the_pump() -> None:
    """The pump waits for room in a full queue; faust clears it at a rebalance. The pump must go on
    (asyncio wakes a waiting producer only on a get, and the getter waits for the producer)."""

    class Endless:
        enable_acks = True

        async def events(self) -> AsyncIterator[int]:
            i = 0
            while True:
                yield i
                i += 1

    async def scenario() -> list[int]:
        s = stage(batch_size=4)
        flow = s.app.flow_control
        batches = s.batches(Endless(), 4)
        first = await anext(batches)
        await asyncio.sleep(0.05)  # the queue (8) is full, the pump waits for room
        flow.suspend()
        flow.clear()
        flow.resume()
        second = await asyncio.wait_for(anext(batches), timeout=5)
        await batches.aclose()
        return first + second

    handed = asyncio.run(scenario())
    assert handed[:4] == [0, 1, 2, 3] and len(handed) == 8 and handed[4] > 4  # 4.. were dropped


# --- in_batches: handling, confirming and acking --------------------------------------------------


class AckingStream(FakeStream):
    """A FakeStream that records the order of its acks."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.acked: list[int] = []

    async def ack(self, event: int) -> None:
        self.acked.append(event)

    async def events(self) -> AsyncIterator[int]:
        async for event in super().events():
            yield event
        await asyncio.Event().wait()  # a topic does not end: the agent is cancelled once all is acked


async def run_in_batches(count: int, concurrent: int) -> tuple[AckingStream, list[list[int]], int]:
    """Handles `count` events, every other batch slowly, so that a batch behind a slow one can
    finish first. Returns the stream, the batches in the order their handling finished, and the
    most batches ever handled at once."""
    runner = stage(batch_size=8, batch_wait_s=0.001)
    runner.app.consumer = None  # type: ignore[attr-defined]  # not the batch-drain consumer
    stream = AckingStream(count)
    finished: list[list[int]] = []
    started = active = peak = 0

    async def handle(events: list[Any], outbox: Any) -> None:
        nonlocal started, active, peak
        started += 1
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03 if started % 2 else 0.001)
        active -= 1
        finished.append(list(events))

    agent = asyncio.ensure_future(runner.in_batches(stream, "test", handle, concurrent=concurrent))
    while len(stream.acked) < count:
        await asyncio.sleep(0.005)
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent
    return stream, finished, peak


def test_one_batch_at_a_time_unless_told_otherwise() -> None:
    stream, finished, peak = asyncio.run(run_in_batches(64, concurrent=1))
    assert peak == 1
    assert [e for batch in finished for e in batch] == list(range(64))
    assert stream.acked == list(range(64))


def test_batches_handled_at_once_are_acked_in_the_order_they_came() -> None:
    # two at once: a fast batch finishes before the slow one ahead of it, yet no event is acked
    # before every event that came before it
    stream, finished, peak = asyncio.run(run_in_batches(64, concurrent=2))
    assert peak == 2
    assert [e for batch in finished for e in batch] != list(range(64))  # handling did overlap
    assert sorted(e for batch in finished for e in batch) == list(range(64))
    assert stream.acked == list(range(64))
