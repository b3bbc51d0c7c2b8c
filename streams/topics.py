"""Topic names and their creation.

Every karma topic carries raw bytes in faust: the agents decode them with `codecs` so that a
message that does not decode can be sent, bytes and all, to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from karma.streams.config import KarmaSettings

STAGES = ("prompts", "responses", "pairs", "preferences", "dlq")
# Internal: the rating stage's clock. Same partitions as `responses`, one tick per partition.
TICKS = "rating.ticks"


def all_topic_names(settings: KarmaSettings) -> list[str]:
    return [settings.topic(stage) for stage in (*STAGES, TICKS)]


async def ensure_topics(settings: KarmaSettings, timeout_s: float = 30.0) -> list[str]:
    """Creates the karma topics that do not exist yet; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        wanted = [name for name in all_topic_names(settings) if name not in existing]
        if not wanted:
            return []
        new = [NewTopic(n, settings.partitions, settings.replication_factor) for n in wanted]
        # Another process may create them between our list and our create.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        return wanted
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicNames:
    prompts: str
    responses: str
    pairs: str
    preferences: str
    dlq: str
    ticks: str

    @classmethod
    def from_settings(cls, settings: KarmaSettings) -> TopicNames:
        return cls(*(settings.topic(stage) for stage in (*STAGES, TICKS)))
