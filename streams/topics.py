"""Topic names and their creation.

Every karma topic carries raw bytes in faust: the agents decode them with `codecs` so that a
message that does not decode can be sent, bytes and all, to the dead-letter topic.

The tables' changelog topics are created here too (`ensure_topics(extra=...)`), before the
worker starts, with the settings faust would give them (`changelog_topics` in streams/app.py).
Left to faust, they are created during start-up, and when the broker's metadata lags behind the
create, faust's assignor sees the changelog with 0 partitions and the rating agent crash-loops
on PartitionsMismatch. No faust here: the topic readers (`karma tail`) import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

from karma.schemas.models import Checkpoint, DeadLetter, KinPair, Preference, Prompt, Record, Response
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import hidden_topics, new_admin


@dataclass(frozen=True)
class TopicSpec:
    """One karma topic: its short name (the field of TopicNames, and what `read_topic` and
    `karma tail` accept), its name under the topic prefix, and the record type it carries."""

    short: str
    name: str
    record: type[Record] | None  # None: raw bytes


# Every karma topic, declared once: the names, the workers' topics, the readers' decoding and
# the CLI follow from here.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("prompts", "prompts", Prompt),
    TopicSpec("responses", "responses", Response),
    TopicSpec("pairs", "pairs", KinPair),
    TopicSpec("preferences", "preferences", Preference),
    TopicSpec("dlq", "dlq", DeadLetter),
    # The model versions `karma train` writes, keyed by model: generation switches to the newest.
    TopicSpec("checkpoints", "checkpoints", Checkpoint),
    # Internal: the rating stage's clock. Same partitions as `responses`, one tick per partition.
    TopicSpec("ticks", "rating.ticks", None),
)
# The topics that carry records (all but the internal clock), in pipeline order.
STAGES = tuple(spec.short for spec in TOPICS if spec.record is not None)
RECORD_OF_STAGE: dict[str, type[Record]] = {
    spec.short: spec.record for spec in TOPICS if spec.record is not None
}


def all_topic_names(settings: KarmaSettings) -> list[str]:
    return [settings.topic(spec.name) for spec in TOPICS]


async def ensure_topics(
    settings: KarmaSettings,
    extra: Iterable[NewTopic] = (),
    timeout_s: float = 30.0,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Creates the karma topics (and `extra` ones) that do not exist yet, and waits until the
    broker's metadata shows every one of them; returns the names it created. `only` (short names)
    limits it to the topics a role uses: a principal sees only the topics its ACLs grant."""
    shorts = None if only is None else set(only)
    admin = new_admin(settings, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        wanted = [
            NewTopic(name, settings.partitions, settings.replication_factor)
            for spec in TOPICS
            if shorts is None or spec.short in shorts
            for name in [settings.topic(spec.name)]
        ]
        wanted += list(extra)
        existing = set(await admin.list_topics())
        await _check_partitions(admin, [topic for topic in wanted if topic.name in existing])
        new = [topic for topic in wanted if topic.name not in existing]
        if new:
            # A topic the ACLs hide is missing from the list too: say so, rather than wait for
            # a create the broker refuses.
            hidden = await hidden_topics(admin, [topic.name for topic in new])
            if hidden:
                raise TopicAuthorizationFailedError(f"DESCRIBE on topic {', '.join(hidden)}")
            # Another process may create them between our list and our create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        await _wait_until_described(admin, [topic.name for topic in wanted], timeout_s)
        return [topic.name for topic in new]
    finally:
        await admin.close()


class TopicMismatchError(RuntimeError):
    """An existing topic whose partition count is not the configured one."""


async def _check_partitions(admin: AIOKafkaAdminClient, existing: list[NewTopic]) -> None:
    """Refuses to run on topics partitioned otherwise than configured: a prompt's responses,
    its verdicts and the rating stage's ticks must land on the same partition number, and a
    table's changelog must match its stream, or state is split across workers unseen."""
    if not existing:
        return
    described = {
        t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([t.name for t in existing])
    }
    wrong = [
        f"{topic.name} has {described[topic.name]} partitions, the configuration {topic.num_partitions}"
        for topic in existing
        if described.get(topic.name) and described[topic.name] != topic.num_partitions
    ]
    if wrong:
        raise TopicMismatchError(
            "; ".join(wrong) + ". The karma topics are co-partitioned (one prompt's responses, pairs, "
            "preferences and ticks on one partition number): set `partitions` to the topics' count, "
            "or use a new topic_prefix/app_id"
        )


async def _wait_until_described(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        missing = sorted(t["topic"] for t in described if t["error_code"] != 0 or not t["partitions"])
        if not missing:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not in the broker's metadata after {timeout_s:.0f} s: {missing}")
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class TopicNames:
    prompts: str
    responses: str
    pairs: str
    preferences: str
    dlq: str
    checkpoints: str
    ticks: str

    @classmethod
    def from_settings(cls, settings: KarmaSettings) -> TopicNames:
        return cls(**{spec.short: settings.topic(spec.name) for spec in TOPICS})
