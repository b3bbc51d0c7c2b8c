"""Kafka and process plumbing for `bench_pipeline.py`: a throw-away broker, topic probes that
count and date a topic's messages without reading it all, bulk publishing, the raw aiokafka
consume -> produce -> commit loop (the ceiling) and a sampler of a worker's resident memory.

Only aiokafka and the karma APIs that every version of the pipeline has are used here, so the
same script measures the code before and after a rework.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

Say = Callable[[str], None]


class BenchError(RuntimeError):
    """A scenario or the set-up failed; the message says what and where to look."""


# -- broker ----------------------------------------------------------------------------------------


def default_jars_home() -> Path:
    """`<repo>/.cache/karma` of the karma package in use (the frozen copy's or the live one's),
    where `make` and the test suite keep the resolved Kafka jars."""
    import karma.streams

    return Path(karma.streams.__file__).resolve().parents[1] / ".cache" / "karma"


def start_local_broker(home: Path, jars_home: Path, timeout_s: float = 120.0) -> Any:
    """A single-node KRaft broker on two free loopback ports, state under `home`."""
    from karma.localkafka.broker import BrokerConfig, BrokerError, LocalBroker

    broker = LocalBroker(BrokerConfig.on_free_ports(home, jars_home))
    try:
        broker.start(timeout=timeout_s)
    except BrokerError as exc:
        raise BenchError(
            f"could not start a throw-away Kafka broker (jars from {jars_home}): {exc}\n"
            "Pass --jars-home DIR (the folder holding kafka-<version>/lib) or --bootstrap HOST:PORT."
        ) from None
    return broker


async def check_reachable(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Raises BenchError unless a broker at `bootstrap` answers a metadata request in time."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise BenchError(
            f"Kafka broker at {bootstrap} is not reachable ({type(exc).__name__}: {exc}). Start one "
            "(`karma broker start`) or leave out --bootstrap to let this script start its own."
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names], timeout_ms=30_000)
        deadline = time.monotonic() + 30
        while True:  # wait until the metadata shows them with every partition led
            described = await admin.describe_topics(list(names))
            if all(t["error_code"] == 0 and len(t["partitions"]) == partitions for t in described):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"topics {list(names)} not in the broker's metadata after 30 s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> int:
    """Deletes this run's topics (and faust's changelog and assignor topics) from a broker that
    outlives the run; returns how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names, timeout_ms=30_000)
        return len(names)
    finally:
        await admin.close()


async def topic_sizes(bootstrap: str, prefixes: Sequence[str]) -> dict[str, int]:
    """Messages in every topic whose name starts with one of `prefixes` (end - beginning
    offsets): a run's own topics and faust's changelog topics, to see what a stage writes besides
    its output."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(tuple(prefixes)))
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    sizes = dict.fromkeys(names, 0)
    for tp in tps:
        sizes[tp.topic] += end[tp] - begin[tp]
    return sizes


# -- publishing ------------------------------------------------------------------------------------


async def publish(bootstrap: str, topic: str, items: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """Publishes (key, value) pairs with acks=all, as a producer service would; returns the count
    and the seconds it took. Futures are awaited in chunks to bound memory on large backlogs."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    started = time.monotonic()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in items:
            pending.append(await producer.send(topic, value, key=key))
            count += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count, time.monotonic() - started


# -- reading what a worker wrote -------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    first_ms: int  # broker timestamp (the producer's create time) of the earliest message
    last_ms: int  # ...and of the latest

    @property
    def seconds(self) -> float:
        return (self.last_ms - self.first_ms) / 1000


class TopicProbe:
    """Counts a topic's messages (end offsets) and dates the first and last ones (a few messages
    per partition), without a consumer group and without reading the topic: polling it costs the
    benchmark process next to nothing, so it does not take CPU from the worker it measures."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._tps: list[TopicPartition] = []
        self._begin: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> TopicProbe:
        # The consumer's metadata holds only topics it is interested in: ask an admin client.
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                (described,) = await admin.describe_topics([self.topic])
                if described["error_code"] == 0 and described["partitions"]:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"topic {self.topic} does not exist (error {described['error_code']})")
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        self._tps = [TopicPartition(self.topic, p["partition"]) for p in described["partitions"]]
        self._tps.sort()
        await self._consumer.start()
        self._begin = await self._consumer.beginning_offsets(self._tps)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def ends(self) -> dict[TopicPartition, int]:
        return await self._consumer.end_offsets(self._tps)

    async def count(self) -> int:
        ends = await self.ends()
        return sum(ends[tp] - self._begin[tp] for tp in self._tps)

    async def span(self) -> Span | None:
        """First and last timestamps over all partitions (None while the topic is empty)."""
        ends = await self.ends()
        firsts, lasts = [], []
        for tp in self._tps:
            begin, end = self._begin[tp], ends[tp]
            if end <= begin:
                continue
            head = await self._read(tp, begin, begin + 1)
            tail = await self._read(tp, max(begin, end - 5), end)
            firsts += [m.timestamp for m in head]
            lasts += [m.timestamp for m in tail]
        if not firsts or not lasts:
            return None
        return Span(min(firsts), max(lasts))

    async def read_all(self) -> list[Any]:
        """Every message up to the current end offsets (for small topics: the latency run)."""
        ends = await self.ends()
        records: list[Any] = []
        for tp in self._tps:
            records += await self._read(tp, self._begin[tp], ends[tp])
        return records

    async def _read(self, tp: TopicPartition, start: int, stop: int, timeout_s: float = 30.0) -> list[Any]:
        if stop <= start:
            return []
        self._consumer.assign([tp])
        self._consumer.seek(tp, start)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while await self._consumer.position(tp) < stop and time.monotonic() < deadline:
            batch = await self._consumer.getmany(tp, timeout_ms=500)
            records += [m for m in batch.get(tp, []) if m.offset < stop]
        return records


# -- the ceiling -----------------------------------------------------------------------------------


@dataclass
class CeilingRun:
    messages: int
    value_bytes: int
    rate: float  # messages/s, broker timestamps of the outputs
    client_rate: float  # messages/s, the loop's own clock from the first batch to the last commit
    span_s: float
    wall_s: float  # including the group join
    batches: int
    publish_s: float


async def ceiling(
    bootstrap: str, stem: str, messages: int, value_bytes: int, partitions: int, say: Say
) -> CeilingRun:
    """What one Python process can push through this broker with aiokafka alone: read a batch
    (consumer group, getmany, at most 500 records as Kafka's max.poll.records default), write each
    message to another topic (acks=all), wait for the acks, commit, repeat. No decoding: this is
    the bound every stage's own work comes on top of."""
    source, sink = f"{stem}.in", f"{stem}.out"
    await create_topics(bootstrap, [source, sink], partitions)
    rng = random.Random(0)
    values = [rng.randbytes(value_bytes) for _ in range(64)]
    say(f"ceiling: publishing {messages:,} messages of {value_bytes} B to {source}")
    _, publish_s = await publish(
        bootstrap, source, ((f"p-{i:08d}".encode(), values[i % len(values)]) for i in range(messages))
    )
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"{stem}-group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    started = time.monotonic()
    await consumer.start()
    await producer.start()
    done = batches = 0
    first_batch_at = 0.0
    try:
        deadline = time.monotonic() + 600
        while done < messages:
            if time.monotonic() > deadline:
                raise BenchError(f"ceiling: only {done:,}/{messages:,} messages in 600 s")
            fetched = await consumer.getmany(timeout_ms=500)
            records = [m for batch in fetched.values() for m in batch]
            if not records:
                continue
            if not first_batch_at:
                first_batch_at = time.monotonic()
                say(f"ceiling: group joined after {first_batch_at - started:.1f} s; copying")
            await asyncio.gather(*[await producer.send(sink, m.value, key=m.key) for m in records])
            await consumer.commit()
            done += len(records)
            batches += 1
        finished = time.monotonic()
    finally:
        await producer.stop()
        await consumer.stop()
    async with TopicProbe(bootstrap, sink) as probe:
        span = await probe.span()
        written = await probe.count()
    span_s = span.seconds if span else 0.0
    return CeilingRun(
        messages=written,
        value_bytes=value_bytes,
        rate=written / span_s if span_s > 0 else float("nan"),
        client_rate=done / (finished - first_batch_at),
        span_s=span_s,
        wall_s=finished - started,
        batches=batches,
        publish_s=publish_s,
    )


# -- worker memory ---------------------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's VmRSS every `interval_s` in a thread; `high_water_mib()` reads the
    kernel's own peak (VmHWM), which catches spikes between samples: read it before stopping
    the process."""

    pid: int
    interval_s: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        started = time.monotonic()

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                kib = _status_kib(self.pid, "VmRSS")
                if kib is not None:
                    self.samples.append((round(time.monotonic() - started, 2), kib / 1024))

        self._thread = threading.Thread(target=run, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def high_water_mib(self) -> float | None:
        kib = _status_kib(self.pid, "VmHWM")
        return kib / 1024 if kib is not None else None

    def current_mib(self) -> float | None:
        return self.samples[-1][1] if self.samples else None

    def max_sampled_mib(self) -> float | None:
        return max((mib for _, mib in self.samples), default=None)

    def every(self, seconds: float) -> list[tuple[float, float]]:
        """The samples thinned to one per `seconds`, for the JSON report."""
        kept: list[tuple[float, float]] = []
        for t, mib in self.samples:
            if not kept or t - kept[-1][0] >= seconds:
                kept.append((t, round(mib, 1)))
        return kept


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between ranks, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "n/a"
