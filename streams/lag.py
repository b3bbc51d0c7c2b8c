"""Consumer lag, as the broker sees it: end offset minus the group's committed offset.

Measured from outside the faust consumer (its own admin client and a group-less consumer),
the way kafka-consumer-groups.sh and lag exporters do, so it stays true even when the
worker's own consumer has stopped fetching a partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin, new_consumer
from karma.streams.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)


def lag_by_partition(
    ends: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Messages not yet committed per partition; with no commit, the whole retained log."""
    return {tp: max(0, end - committed.get(tp, beginnings.get(tp, 0))) for tp, end in sorted(ends.items())}


class LagMonitor:
    """Reads a group's lag on some topics; `run` keeps the karma_consumer_lag gauge current."""

    def __init__(self, settings: KarmaSettings, group_id: str, topics: Iterable[str]) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = sorted(set(topics))
        # Through the client factory: the cluster's TLS and SASL settings apply here too.
        self._admin = new_admin(settings)
        self._offsets = new_consumer(settings, enable_auto_commit=False)

    async def start(self) -> None:
        await self._admin.start()
        await self._offsets.start()

    async def stop(self) -> None:
        await self._offsets.stop()
        await self._admin.close()

    async def read(self) -> dict[TopicPartition, int]:
        described = await self._admin.describe_topics(self.topics)
        tps = [
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            if topic["error_code"] == 0
            for partition in sorted(topic["partitions"], key=lambda p: p["partition"])
        ]
        if not tps:
            return {}
        ends = await self._offsets.end_offsets(tps)
        beginnings = await self._offsets.beginning_offsets(tps)
        committed = await self._committed(tps)
        return lag_by_partition(
            ends, {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}, beginnings
        )

    async def _committed(self, tps: list[TopicPartition], attempts: int = 10) -> dict[TopicPartition, Any]:
        # On a new broker the first group lookup creates __consumer_offsets, and the
        # coordinator is "not available" for a moment: a retriable error.
        for _ in range(attempts - 1):
            try:
                return await self._admin.list_consumer_group_offsets(self.group_id, partitions=tps)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
            await asyncio.sleep(0.5)
        return await self._admin.list_consumer_group_offsets(self.group_id, partitions=tps)

    async def run(self, interval_s: float) -> None:
        """Updates the gauge every `interval_s` until cancelled; a failed read is logged, not fatal."""
        await self.start()
        try:
            while True:
                try:
                    for tp, lag in (await self.read()).items():
                        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
                except Exception as exc:  # the broker may be restarting; try again next round
                    log.warning("could not read consumer lag of %s: %s", self.group_id, exc)
                await asyncio.sleep(interval_s)
        finally:
            await self.stop()
