"""`karma export`'s Kafka loop: read the preferences topic, hand each message to the
`ShardBuilder` (shards.py), and stop at the topic's end or, with `follow`, when told to.

The consumer is assigned every partition of the topic (no group membership: one exporter
owns one folder, and a rebalance could not move the folder's manifests with a partition) and
seeks each partition to where the folder's manifests say the last committed shard ended. It
still has a consumer group (`<app_id>-export` by default) and commits each shard's end offsets
there after the shard is durable, so that the group's lag shows how far behind the export is;
that commit is only a hint, never read to decide where to start.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from rich.progress import Progress

from karma.schemas.models import Preference
from karma.streams.client import TopicNotFoundError, topic_name
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin, new_consumer
from karma.tools.export.files import ExportError, Layout
from karma.tools.export.manifest import Manifest
from karma.tools.export.shards import Recovery, ShardBuilder, ShardStore

POLL_TIMEOUT_MS = 500  # also how often an idle follower checks --shard-seconds and the stop signal
SHOW_UNDECODABLE = 10  # undecodable messages reported one by one; the rest are counted


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    layout: Layout
    topic: str = "preferences"  # anything client.topic_name accepts
    group: str | None = None  # default: <app_id>-export
    follow: bool = False
    shard_rows: int = 10_000
    shard_seconds: float | None = 60.0


@dataclass
class ExportResult:
    topic: str
    group: str
    folder: Path
    consumed: int  # messages read this run
    committed: list[Manifest]  # this run's manifests
    skipped: Counter[str]  # this run's, by reason
    recovery: Recovery
    folder_rows: int = 0  # over every manifest of the folder, earlier runs' included
    folder_shards: int = 0
    folder_skipped: Counter[str] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.committed)

    @property
    def shards(self) -> int:
        return sum(1 for m in self.committed if m.shard is not None)


async def run_export(
    settings: KarmaSettings,
    options: ExportOptions,
    *,
    say: Callable[[str], object] = print,
    progress: Callable[[], Progress] | None = None,
    stop: asyncio.Event | None = None,
) -> ExportResult:
    """Exports the preferences topic into shards under `options.out` (see tools/export/)."""
    name, record_type = topic_name(settings, options.topic)
    if record_type is not Preference:
        raise ExportError(f"{name} is not a preferences topic (its name should end in .preferences)")
    group = options.group or f"{settings.app_id}-export"
    stop = stop or asyncio.Event()
    shown = 0

    def undecodable(partition: int, offset: int, reason: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= SHOW_UNDECODABLE:
            say(f"undecodable: partition {partition} offset {offset}: {reason}")

    with ShardStore.open(options.out, name, options.layout) as store:
        _report_recovery(store.recovery, say)
        consumer = new_consumer(
            settings, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = await assign_all(settings, consumer, name)
            positions = await _seek(consumer, tps, store.resume_offsets(), say)
            builder = ShardBuilder(
                store,
                positions,
                shard_rows=options.shard_rows,
                shard_seconds=options.shard_seconds,
                on_undecodable=undecodable,
            )
            ends = None if options.follow else await consumer.end_offsets(tps)
            hint = CommitHint(consumer, name, say)
            with (progress or partial(Progress, disable=True))() as bar:  # disabled: draws nothing
                backlog = None if ends is None else [ends[tp] - positions[tp.partition] for tp in tps]
                total = None if backlog is None else sum(max(0, n) for n in backlog)
                task = bar.add_task(f"exporting {name}", total=total)
                while not stop.is_set():
                    if ends is not None and await _at_end(consumer, tps, ends):
                        break
                    batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                    for tp, messages in batch.items():
                        for message in messages:
                            if ends is not None and message.offset >= ends[tp]:
                                continue  # arrived after the start: left for the next run
                            if builder.add(tp.partition, message.offset, message.value) is not None:
                                await hint.commit(builder.positions)
                    if builder.due() and builder.flush() is not None:
                        await hint.commit(builder.positions)
                    bar.update(task, completed=builder.consumed, description=_describe(name, builder))
                if builder.flush() is not None:
                    await hint.commit(builder.positions)
                bar.update(task, completed=total or builder.consumed, description=_describe(name, builder))
        finally:
            await consumer.stop()
        if shown > SHOW_UNDECODABLE:
            say(f"undecodable: {shown - SHOW_UNDECODABLE} more (every one is listed in the manifests)")
        folder_rows, folder_shards, folder_skipped = store.totals()
        return ExportResult(
            topic=name,
            group=group,
            folder=options.out,
            consumed=builder.consumed,
            committed=builder.committed,
            skipped=builder.skipped,
            recovery=store.recovery,
            folder_rows=folder_rows,
            folder_shards=folder_shards,
            folder_skipped=folder_skipped,
        )


def _describe(name: str, builder: ShardBuilder) -> str:
    rows = sum(m.rows for m in builder.committed)
    shards = sum(1 for m in builder.committed if m.shard is not None)
    return f"exporting {name}: {rows} rows in {shards} shards, {builder.pending} pending"


def _report_recovery(recovery: Recovery, say: Callable[[str], object]) -> None:
    if recovery.rolled_forward:
        say(f"recovered {len(recovery.rolled_forward)} shard(s) committed just before a crash")
    if recovery.deleted:
        say(f"deleted {len(recovery.deleted)} temporary file(s) of shards never committed (read again)")
    if recovery.missing:
        say(f"{len(recovery.missing)} committed shard(s) are no longer in the folder (not exported again)")
    for gap in recovery.gaps:
        say(f"warning: {gap}")


async def assign_all(settings: KarmaSettings, consumer: AIOKafkaConsumer, name: str) -> list[TopicPartition]:
    """Assigns every partition the topic has now. (The consumer knows partitions only of topics
    it subscribes to, and subscribing with a group id would join the group: the admin client
    tells them.)"""
    if name not in await consumer.topics():
        raise TopicNotFoundError(f"topic {name} does not exist (has the pipeline run? see `karma run`)")
    admin = new_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics([name])
    finally:
        await admin.close()
    tps = sorted(TopicPartition(name, int(p["partition"])) for t in described for p in t["partitions"])
    consumer.assign(tps)
    return tps


async def seek_within(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    wanted: Mapping[int, int],
    past_end: Callable[[TopicPartition, int, int], Exception],
    say: Callable[[str], object],
) -> dict[int, int]:
    """Seeks each partition to `wanted[partition]` (its beginning when absent) and returns the
    positions. A position past the partition's end raises `past_end(tp, wanted, end)`: the topic
    was deleted and made again, and reading it would reuse offsets already accounted for. One
    before the beginning (expired from the topic) starts at the beginning, with a warning. Shared
    by `karma export` and `karma train`, which differ only in where they resume."""
    beginnings = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    positions = {}
    for tp in tps:
        start = wanted.get(tp.partition, beginnings[tp])
        if start > ends[tp]:
            raise past_end(tp, start, ends[tp])
        if start < beginnings[tp]:
            say(
                f"warning: partition {tp.partition}: offsets {start}-{beginnings[tp] - 1} expired from the "
                "topic before they were read"
            )
            start = beginnings[tp]
        consumer.seek(tp, start)
        positions[tp.partition] = start
    return positions


async def _seek(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    resume: dict[int, int],
    say: Callable[[str], object],
) -> dict[int, int]:
    """Seeks each partition to where the manifests say to resume (its beginning when they name
    none); returns those positions."""

    def recreated(tp: TopicPartition, start: int, end: int) -> ExportError:
        return ExportError(
            f"the manifests resume partition {tp.partition} of {tp.topic} at offset {start}, past its "
            f"end ({end}): was the topic recreated? Export it to another --out"
        )

    positions = await seek_within(consumer, tps, resume, recreated, say)
    behind = []
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is not None and committed != positions[tp.partition]:
            behind.append(f"{tp.partition}: {committed} -> {positions[tp.partition]}")
    if behind:
        # Expected after a crash between a shard's commit and the group's (the manifest wins).
        moved = ", ".join(behind)
        say(f"starting where the folder's manifests say, not at the group's committed offsets ({moved})")
    return positions


async def _at_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    return all([await consumer.position(tp) >= ends[tp] for tp in tps])


class CommitHint:
    """Commits the exported positions to the consumer group, for lag monitoring; a failure is
    reported once and otherwise ignored (the manifests, not the group, say where to resume)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, say: Callable[[str], object]) -> None:
        self.consumer, self.topic, self.say = consumer, topic, say
        self.failed = False

    async def commit(self, positions: dict[int, int]) -> None:
        try:
            await self.consumer.commit({TopicPartition(self.topic, p): o for p, o in positions.items()})
        except KafkaError as exc:
            if not self.failed:
                self.say(f"warning: could not commit the export's offsets to its group ({exc}); carrying on")
            self.failed = True
