"""The batching of generation, rating and judging: every event exactly once, in order, acked
only by the caller, even when events keep arriving while a batch is being handled."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from karma.streams.app import Stage
from karma.streams.config import KarmaSettings


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
    settings = KarmaSettings(batch_size=batch_size, batch_wait_s=batch_wait_s)
    return Stage(settings=settings, app=None, names=None, topics={})  # type: ignore[arg-type]


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
