"""Consumer lag is end offset minus committed offset, read from the real broker."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from karma.streams.config import KarmaSettings
from karma.streams.lag import LagMonitor, lag_by_partition

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


def test_lag_counts_what_is_not_committed() -> None:
    assert lag_by_partition({A0: 10, A1: 7}, {A0: 4, A1: 7}, {A0: 0, A1: 0}) == {A0: 6, A1: 0}


def test_without_a_commit_the_whole_retained_log_is_lag() -> None:
    # Offsets 0-2 were deleted by retention, so only 3..9 are still to be read.
    assert lag_by_partition({A0: 10}, {}, {A0: 3}) == {A0: 7}


def test_lag_is_never_negative() -> None:
    # A commit can briefly run ahead of a stale end offset read a moment earlier.
    assert lag_by_partition({A0: 5}, {A0: 6}, {A0: 0}) == {A0: 0}


def test_monitor_reads_lag_of_a_group_from_the_broker(kafka_bootstrap: str) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 2, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        for _ in range(5):
            await producer.send_and_wait(topic, b"x", partition=0)
        for _ in range(3):
            await producer.send_and_wait(topic, b"x", partition=1)
        await producer.stop()

        monitor = LagMonitor(KarmaSettings(bootstrap_servers=kafka_bootstrap), group, [topic])
        await monitor.start()
        try:
            before = await monitor.read()
            # No auto-commit: stopping would otherwise commit the consumer's own position.
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
            )
            await consumer.start()
            try:
                consumer.assign([TopicPartition(topic, 0)])
                await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
            finally:
                await consumer.stop()
            after = await monitor.read()
        finally:
            await monitor.stop()
        return before, after

    before, after = asyncio.run(scenario())
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert before == {p0: 5, p1: 3}
    assert after == {p0: 3, p1: 3}
