"""The karma:// transport delivers a fetched batch in one task and stops at once when the flow
stops, as faust's own per-record loop does (see streams/transport.py). A real broker exercises
it in every end-to-end test (tests/e2e/test_faults.py restarts one mid-stream); this pins down
the delivery rules with faust's consumer and a recording callback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from faust.types import TP, Message

from karma.streams.config import KarmaSettings
from karma.streams.transport import BatchDrainConsumer
from karma.streams.worker import create_app

TOPIC_TP = TP("karma.responses", 0)


def message(offset: int) -> Message:
    return Message(TOPIC_TP.topic, TOPIC_TP.partition, offset, 0.0, 0, {}, b"k", b"v", None, tp=TOPIC_TP)


async def fetched(offsets: list[int]) -> AsyncGenerator[tuple[TP, Message], None]:
    for offset in offsets:
        yield TOPIC_TP, message(offset)


def consumer_with(on_message: Any) -> BatchDrainConsumer:
    app = create_app(KarmaSettings(lag_interval_s=0), roles=("judge",))
    consumer = app.consumer
    assert isinstance(consumer, BatchDrainConsumer)  # the app runs on the karma:// transport
    consumer.callback = on_message
    return consumer


async def deliver(consumer: BatchDrainConsumer, offsets: list[int]) -> None:
    records = fetched(offsets)
    first = await anext(records)
    await consumer._deliver(first, records)


def test_a_batch_is_delivered_in_order_and_read_offsets_follow() -> None:
    delivered: list[int] = []

    async def on_message(msg: Message) -> None:
        delivered.append(msg.offset)

    consumer = consumer_with(on_message)
    asyncio.run(deliver(consumer, list(range(250))))
    assert delivered == list(range(250))
    assert consumer._read_offset[TOPIC_TP] == 249


def test_nothing_more_is_delivered_once_the_flow_stops() -> None:
    delivered: list[int] = []

    async def on_message(msg: Message) -> None:
        delivered.append(msg.offset)
        if msg.offset == 2:
            consumer.stop_flow()  # a rebalance begins while the batch is being handed over

    consumer = consumer_with(on_message)
    asyncio.run(deliver(consumer, list(range(10))))
    assert delivered == [0, 1, 2]
    assert consumer._read_offset[TOPIC_TP] == 2  # the seek that follows re-reads 3..9


def test_records_already_read_are_not_delivered_twice() -> None:
    delivered: list[int] = []

    async def on_message(msg: Message) -> None:
        delivered.append(msg.offset)

    consumer = consumer_with(on_message)
    consumer._read_offset[TOPIC_TP] = 5
    asyncio.run(deliver(consumer, list(range(3, 9))))
    assert delivered == [5, 6, 7, 8]


def test_a_delivery_blocked_on_a_full_queue_is_abandoned_when_the_flow_stops() -> None:
    delivered: list[int] = []
    full = asyncio.Event()

    async def on_message(msg: Message) -> None:
        if msg.offset == 1:
            await full.wait()  # the agent's queue is full: this put waits
        delivered.append(msg.offset)

    async def scenario() -> BatchDrainConsumer:
        consumer = consumer_with(on_message)  # made inside the loop that runs it
        records = fetched(list(range(5)))
        first = await anext(records)
        racing = asyncio.ensure_future(
            consumer.wait_first(consumer._deliver(first, records), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.05)
        consumer.stop_flow()
        await asyncio.wait_for(racing, timeout=5)
        return consumer

    consumer = asyncio.run(scenario())
    assert delivered == [0]
    assert consumer._read_offset[TOPIC_TP] == 0


class FakeThread:
    """The consumer thread's calls these tests reach, recorded."""

    def __init__(self, committed: dict[TP, int | None] | None = None) -> None:
        self.committed = committed or {}
        self.asked: list[Any] = []
        self.rewound: list[TP] = []
        self.while_fetching: Any = lambda: None

    async def getmany(self, active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:
        self.asked.append(active_partitions)
        self.while_fetching()  # what faust does on the main thread while the fetch waits
        return {}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.rewound.extend(partitions)


def test_a_fetch_asks_for_the_partitions_active_when_it_starts_not_for_faust_s_live_set() -> None:
    """aiokafka re-reads the set while a fetch waits, and takes an empty one for every partition:
    a fetch issued for the changelogs must not come back with the paused streams' records once
    recovery pauses the changelogs and resumes the streams (the rating worker's lost backlog)."""
    changelog = TP("karma-rate-rating-prompts-changelog", 0)

    async def scenario() -> FakeThread:
        consumer = consumer_with(lambda msg: None)
        thread = consumer._thread = FakeThread()  # type: ignore[assignment]
        active = consumer._set_active_tps({changelog})

        def recovery_ends() -> None:
            consumer.pause_partitions({changelog})  # "Done reading from changelog topics"
            consumer.resume_partitions({TOPIC_TP})  # the stream partitions, before their seek

        thread.while_fetching = recovery_ends
        await consumer._getmany(active, timeout=1.0)
        return thread

    thread = asyncio.run(scenario())
    assert thread.asked == [{changelog}]


def test_a_seek_rewinds_a_stream_partition_with_no_committed_offset_to_its_beginning() -> None:
    """faust's seek re-reads dropped records only where an offset was committed; a partition with
    none is rewound too, so a batch dropped at a flow stop is fetched again, not skipped."""
    committed_tp, changelog = TP("karma.responses", 1), TP("karma-rate-rating-prompts-changelog", 0)

    async def scenario() -> tuple[BatchDrainConsumer, FakeThread]:
        consumer = consumer_with(lambda msg: None)
        thread = consumer._thread = FakeThread({TOPIC_TP: None, committed_tp: 7, changelog: None})  # type: ignore[assignment]
        consumer._is_changelog_tp = lambda tp: tp.topic.endswith("-changelog")  # type: ignore[method-assign]
        consumer._read_offset[TOPIC_TP] = 1398  # read before the batch was dropped
        await consumer.perform_seek()
        return consumer, thread

    consumer, thread = asyncio.run(scenario())
    assert thread.rewound == [TOPIC_TP]  # changelogs are recovery's to seek
    assert consumer._read_offset[TOPIC_TP] is None and consumer._read_offset[committed_tp] == 7
