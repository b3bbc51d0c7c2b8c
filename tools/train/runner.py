"""`karma train`'s Kafka loop: rounds of preferences from karma.preferences, a DPO round each
(dpo.py, in a thread: the event loop keeps the clients alive), the version renamed into place and
its `Checkpoint` published on karma.checkpoints, confirmed, before the round's offsets are
committed. Resuming after a crash is rounds.py's: the newest record's offsets, not the group's.

Like `karma export`, the consumer is assigned every partition (no group membership: a rebalance
could not move a round in training) and commits to its group (`<app_id>-train-<model>`) only so
that the group's lag shows how far behind the trainer is. One trainer per model: the versions are
a chain, each the child of the one before.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from rich.progress import Progress

from karma.schemas.models import Checkpoint, InputOffset, Preference, checkpoint_id_for
from karma.streams.client import TopicReader, topic_name
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_consumer, new_producer
from karma.streams.metrics import (
    TRAIN_LOSS,
    TRAIN_PREFERENCES,
    TRAIN_REWARD_MARGIN,
    TRAIN_ROUND_SECONDS,
    TRAIN_ROUNDS,
    TRAIN_VERSION,
)
from karma.tools.export.runner import CommitHint, assign_all, seek_within
from karma.tools.train.dpo import DpoSettings, RoundResult, TrainError, train_round
from karma.tools.train.rounds import PreferenceFilter, RoundBuilder, VersionStore, resume

POLL_TIMEOUT_MS = 500  # also how often an idle trainer checks the stop signal and --idle-exit


@dataclass(frozen=True)
class TrainOptions:
    model: str  # a model of the pool (its served_model is version 1)
    out: Path  # the versions go to <out>/<model>/v<k>
    round_size: int = 64
    rounds: int | None = None  # stop after this many rounds of this run (None: until stopped)
    idle_exit_s: float | None = None  # stop when no message came for this long
    preference_filter: PreferenceFilter = field(default_factory=PreferenceFilter)
    dpo: DpoSettings = field(default_factory=DpoSettings)
    group: str | None = None  # default: <app_id>-train-<model>
    topic: str = "preferences"


@dataclass
class TrainResult:
    model: str
    group: str
    checkpoints: list[Checkpoint]  # published by this run (a recovered one included)
    consumed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    version: int = 1  # the newest version when the run ended


async def run_trainer(
    settings: KarmaSettings,
    options: TrainOptions,
    *,
    say: Callable[[str], object] = print,
    progress: Callable[[], Progress] | None = None,
    stop: asyncio.Event | None = None,
    trainer: Trainer = train_round,
) -> TrainResult:
    """Trains `options.model` in rounds until stopped, `options.rounds` are done, or the input
    has been idle `options.idle_exit_s` (see the module docstring)."""
    spec = next((m for m in settings.pool if m.name == options.model), None)
    if spec is None:
        raise TrainError(f"model {options.model} is not in the pool ({', '.join(settings.model_names)})")
    name, record_type = topic_name(settings, options.topic)
    if record_type is not Preference:
        raise TrainError(f"{name} is not a preferences topic (its name should end in .preferences)")
    group = options.group or f"{settings.app_id}-train-{options.model}"
    store = VersionStore(options.out / options.model)
    for path in store.clean():
        say(f"deleted {path.name}: a round that never finished (trained again)")
    async with TopicReader(settings, "checkpoints") as reader:
        published = [r.record for r in await reader.read_to_end() if isinstance(r.record, Checkpoint)]
    start = resume(published, store.written(), options.model)
    result = TrainResult(options.model, group, [])
    producer = new_producer(settings, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for checkpoint in start.unpublished:
            await _publish(producer, settings, checkpoint)
            result.checkpoints.append(checkpoint)
            say(f"published version {checkpoint.version}: written before a crash, never published")
        parent = (start.newest.version, start.newest.path) if start.newest else (1, spec.served_model)
        result.version = parent[0]
        TRAIN_VERSION.labels(options.model).set(parent[0])
        consumer = new_consumer(
            settings, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = await assign_all(settings, consumer, name)
            positions = await _seek(consumer, tps, start.newest, say)
            builder = RoundBuilder(options.round_size, positions, start.trained, options.preference_filter)
            loop = _Rounds(settings, options, store, producer, consumer, CommitHint(consumer, name, say), say)
            with (progress or partial(Progress, disable=True))() as bar:
                await loop.run(builder, parent, result, bar, stop or asyncio.Event(), trainer)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return result


Trainer = Callable[[Path, list[dict[str, object]], Path, DpoSettings], RoundResult]


@dataclass
class _Rounds:
    """The loop of one run: fill a round, train it, publish it, go on."""

    settings: KarmaSettings
    options: TrainOptions
    store: VersionStore
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    hint: CommitHint
    say: Callable[[str], object]
    pending: deque[ConsumerRecord[bytes, bytes]] = field(default_factory=deque)

    async def run(
        self,
        builder: RoundBuilder,
        parent: tuple[int, str],
        result: TrainResult,
        bar: Progress,
        stop: asyncio.Event,
        trainer: Trainer,
    ) -> None:
        model, rounds = self.options.model, 0
        task = bar.add_task(_filling(model, parent[0] + 1), total=self.options.round_size)
        idle_since = time.monotonic()
        while not stop.is_set() and (self.options.rounds is None or rounds < self.options.rounds):
            if not self.pending:
                if await self._fetch():
                    idle_since = time.monotonic()
                elif self._idle_too_long(idle_since):
                    self.say(f"no preference for {self.options.idle_exit_s:.0f} s: stopping")
                    break
            while self.pending and not builder.full:
                message = self.pending.popleft()
                builder.offer(message.partition, message.offset, message.value)
                result.consumed += 1
            bar.update(task, completed=len(builder.ids))
            if not builder.full:
                continue
            bar.update(task, description=f"training {model} version {parent[0] + 1}")
            checkpoint = await self._train(builder, parent, result.group, trainer)
            await _publish(self.producer, self.settings, checkpoint)
            await self.hint.commit(builder.positions)
            result.checkpoints.append(checkpoint)
            _count(builder, checkpoint, result)
            self.say(_trained(checkpoint))
            rounds += 1
            parent = (checkpoint.version, checkpoint.path)
            result.version = checkpoint.version
            builder = builder.next_round()
            bar.reset(task, total=self.options.round_size, description=_filling(model, parent[0] + 1))
        result.skipped.update(builder.skipped)  # of the round left unfinished

    async def _fetch(self) -> bool:
        """The next messages, in offset order per partition; False when none came."""
        fetched = await self.consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        messages = [m for batch in fetched.values() for m in batch]
        self.pending.extend(sorted(messages, key=lambda m: (m.partition, m.offset)))
        return bool(messages)

    def _idle_too_long(self, idle_since: float) -> bool:
        limit = self.options.idle_exit_s
        return limit is not None and time.monotonic() - idle_since > limit

    async def _train(
        self, builder: RoundBuilder, parent: tuple[int, str], group: str, trainer: Trainer
    ) -> Checkpoint:
        """One round: trained into a staging folder, then the version renamed into place."""
        (parent_version, parent_path), model = parent, self.options.model
        version = parent_version + 1
        staging = self.store.staging(version)
        self.say(f"training {model} version {version} on {len(builder.ids)} preferences from {parent_path}")
        rows: list[dict[str, object]] = list(builder.rows)
        trained = await asyncio.to_thread(trainer, Path(parent_path), rows, staging, self.options.dpo)
        checkpoint = Checkpoint(
            checkpoint_id=checkpoint_id_for(model, version),
            model=model,
            version=version,
            path=str(self.store.final(version)),
            parent_version=parent_version,
            parent_path=parent_path,
            preference_ids=list(builder.ids),
            train_loss=trained.loss,
            reward_margin=trained.reward_margin,
            reward_accuracy=trained.reward_accuracy,
            method=self.options.dpo.method,
            consumer_group=group,
            input_offsets=[InputOffset(partition=p, offset=o) for p, o in sorted(builder.positions.items())],
            simulated_preferences=builder.simulated,
            train_seconds=trained.seconds,
        )
        await asyncio.to_thread(self.store.commit, staging, checkpoint)
        return checkpoint


def _trained(checkpoint: Checkpoint) -> str:
    return (
        f"version {checkpoint.version} of {checkpoint.model}: {len(checkpoint.preference_ids)} preferences, "
        f"loss {checkpoint.train_loss:.4f}, reward margin {checkpoint.reward_margin:.4f}, reward accuracy "
        f"{checkpoint.reward_accuracy:.2f}, {checkpoint.train_seconds:.1f} s -> {checkpoint.path}"
    )


def _filling(model: str, version: int) -> str:
    return f"preferences for {model} version {version}"


async def _publish(producer: AIOKafkaProducer, settings: KarmaSettings, checkpoint: Checkpoint) -> None:
    """The record, keyed by model, confirmed by the broker (acks=all) before anything goes on."""
    await producer.send_and_wait(
        settings.topic("checkpoints"), encode(checkpoint), key=checkpoint.model.encode()
    )


async def _seek(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    newest: Checkpoint | None,
    say: Callable[[str], object],
) -> dict[int, int]:
    """Each partition where the newest version's record says the input stands; before any version,
    at the group's committed offset, or the beginning. Returns the positions."""
    recorded = {o.partition: o.offset for o in newest.input_offsets} if newest is not None else {}
    wanted = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        if newest is None:
            if committed is not None:
                wanted[tp.partition] = committed
        elif tp.partition in recorded:
            wanted[tp.partition] = recorded[tp.partition]
            # Killed between publishing the version and committing the group: the record wins.
            if committed is not None and committed != recorded[tp.partition]:
                say(
                    f"partition {tp.partition}: resuming at {recorded[tp.partition]}, where version "
                    f"{newest.version} says, not at {committed}"
                )

    def recreated(tp: TopicPartition, start: int, end: int) -> TrainError:
        return TrainError(
            f"partition {tp.partition} of {tp.topic} resumes at offset {start}, past its end "
            f"({end}): was the topic recreated? Train into another --out, with another --group"
        )

    return await seek_within(consumer, tps, wanted, recreated, say)


def _count(builder: RoundBuilder, checkpoint: Checkpoint, result: TrainResult) -> None:
    model = checkpoint.model
    TRAIN_ROUNDS.labels(model).inc()
    TRAIN_PREFERENCES.labels(model, "trained").inc(len(builder.ids))
    for reason, n in builder.skipped.items():
        TRAIN_PREFERENCES.labels(model, reason).inc(n)
    TRAIN_LOSS.labels(model).set(checkpoint.train_loss)
    TRAIN_REWARD_MARGIN.labels(model).set(checkpoint.reward_margin)
    TRAIN_ROUND_SECONDS.labels(model).observe(checkpoint.train_seconds)
    TRAIN_VERSION.labels(model).set(checkpoint.version)
    result.skipped.update(builder.skipped)
