"""Throughput, latency and memory of the streaming pipeline on one Kafka broker, each figure next
to the ceiling measured in the same run. Prints figures; it is not a test.

    .venv/bin/python benchmarks/bench_pipeline.py [--bootstrap HOST:PORT] [--scenarios ceiling,rate]
        [--prompts 2000] [--backlog-small 1000] [--backlog-large 20000] [--cap-s 240] [--repeats 3]
        [--json PATH]

It measures the karma package of the Python that runs it, so one copy of the script serves two
checkouts: `cd OTHER && .venv/bin/python /path/to/benchmarks/bench_pipeline.py` measures OTHER's
code (workers are started with the same interpreter; the throw-away broker's jars are looked up
in OTHER/.cache/karma, or --jars-home). --repeats N runs the quick scenarios (ceiling, generate, rate,
judge) N times and reports medians; the others run once. On a 2-core machine, with the code
of commit 1a301b6, `--repeats 3 --cap-s 360` took 7 minutes; the 20,000-prompt backlog alone
took about 245 s, so at the default --cap-s 240 it is reported as capped.

What is measured (each scenario on fresh topics, a fresh consumer group and a fresh worker):

- ceiling: a raw aiokafka loop in this process, consume (group, getmany) -> produce (acks=all)
  -> commit after each batch, 400-byte values, as many partitions as the karma topics. No
  decoding, no faust: what Python and this broker allow before any stage does its own work.
- generate / rate / judge, each stage alone: its input (prompts; Response records of every
  model of the pool for N prompts; KinPair records) is published BEFORE the worker starts, then
  `karma worker ROLE` runs as a real process and drains the backlog. Throughput is output
  messages / (broker timestamp of the last output - that of the first), so start-up and the
  group join (2-5 s) are not in it; "wall" is spawn -> last output, start-up included.
- run5 / run16 / backlog: `karma run` (all stages in one process) on a backlog of prompts, with
  the default 5 simulated models and with all 16 models of the bundled profile table, and on a
  large backlog (5 models). Done when every expected preference arrived (the prompts times
  `expected_pairs_per_prompt`). Prompts/s counts preferences / pairs-per-prompt over the span of
  the preferences' timestamps; ms/prompt is its inverse. backlog/run5 is the ratio of per-prompt
  costs: 1.0x means the cost does not grow with the backlog.
- latency: a `karma run` worker, up and idle (one warm-up prompt went through), gets prompts at
  a steady low rate; latency is the prompt's broker timestamp -> the timestamp of the last of
  its preferences (p50, p99).
- Worker memory: VmRSS sampled every 0.5 s, and VmHWM (the kernel's peak) read just before the
  worker is stopped.
- Changelog messages: what the worker wrote to faust's changelog topics besides its output,
  per input (rating) or per prompt (`karma run`): table writes cost as much as output messages.

A fresh broker first gets --warmup-messages through the ceiling loop, unreported: its JVM is
still compiling, and the first scenario would otherwise pay for it.

How to read it: "share of ceiling" is the messages/s on a stage's busier side (read or
written, whichever is more: generation writes 5 per prompt it reads, rating reads 5 responses
per 2 pairs it writes; for `karma run`, everything it reads or writes on all topics) divided by
the ceiling's messages/s. A stage near 100% is bounded by Kafka and the client; far below, by
its own work. Simulated models are instant, so these are the pipeline's own costs, not a
model's. Online competency is off and the lag gauge and /metrics server are disabled in every
worker. Outputs are counted from end offsets (not read), so the script itself takes almost no
CPU from the worker; a replay (none in a clean run) would count twice. A scenario that runs
past --cap-s (from spawn) stops there and reports the rate reached so far, marked "capped";
one with no new output for --stall-s is marked "stalled". Other load on the machine moves
every figure: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from _kafka_bench import (
    BenchError,
    RssSampler,
    Span,
    TopicProbe,
    ceiling,
    check_reachable,
    default_jars_home,
    delete_topics_with_prefix,
    load_average,
    median,
    percentile,
    publish,
    start_local_broker,
    topic_sizes,
)
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from karma.agents.kinship import Scored, load_profiles
from karma.agents.policies import select_pairs
from karma.schemas.models import Candidate, KinPair, Prompt, Response, pair_id_for, response_id_for
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.demo import expected_pairs_per_prompt
from karma.tools.processes import spawn_worker, stop_worker

SCENARIOS = ("ceiling", "generate", "rate", "judge", "run5", "run16", "backlog", "latency")
# Short enough to repeat: --repeats applies to these; the others run once.
QUICK = ("ceiling", "generate", "rate", "judge")
LOCAL_KAFKA_VERSION = "4.1.1"  # what LocalBroker resolves by default (BrokerConfig.kafka_version)

_TOPICS = (
    "consumer group rebalances",
    "exactly-once delivery",
    "log compaction",
    "partition leadership",
    "producer idempotence",
    "offset commits",
    "KRaft controllers",
    "retention and segment rolling",
)
_WORDS = (
    "the answer depends on context and careful reasoning shows that each step follows from the previous "
    "one so we first restate the question then weigh the evidence and conclude with a clear summary "
    "including caveats examples and a short justification of every trade off"
).split()


def prompt_text(i: int) -> str:
    """About 150 characters, like a short real prompt."""
    topic = _TOPICS[i % len(_TOPICS)]
    return (
        f"Question {i}: explain, step by step and with one small example, how {topic} works in "
        "Apache Kafka and what can go wrong in production."
    )


def response_text(model: str, prompt_id: str) -> str:
    """40-56 words (about 300 characters): every pair of responses passes the kin rule's length
    gate, so the rating stage yields exactly the pairs `expected_pairs_per_prompt` predicts."""
    rng = random.Random(f"{model}/{prompt_id}")
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 56)))
    return f"[simulated {model}] {words}."


def make_prompts(count: int, tag: str) -> list[Prompt]:
    return [
        Prompt(prompt_id=f"{tag}-{i:06d}", text=prompt_text(i), source="bench-pipeline") for i in range(count)
    ]


def make_responses(prompts: Sequence[Prompt], models: Sequence[str]) -> list[Response]:
    return [
        Response(
            response_id=response_id_for(p.prompt_id, m),
            prompt_id=p.prompt_id,
            prompt_text=p.text,
            model=m,
            text=(text := response_text(m, p.prompt_id)),
            backend="simulated",
            simulated=True,
            num_tokens=len(text.split()),
            latency_ms=0.0,
        )
        for p in prompts
        for m in models
    ]


def make_pairs(prompts: Sequence[Prompt], settings: KarmaSettings) -> list[KinPair]:
    """The pairs the rating stage would send for these prompts (kin rule, prior profiles)."""
    profiles = load_profiles(settings.kin.profiles)
    rule = settings.kin.rule()
    pairs = []
    for p in prompts:
        texts = {m: response_text(m, p.prompt_id) for m in settings.model_names}
        scored = [
            Scored(
                response_id=response_id_for(p.prompt_id, m),
                model=m,
                superiority=profiles.superiority(m),
                length=len(texts[m].split()),
            )
            for m in settings.model_names
        ]
        for chosen in select_pairs(settings.policy, scored, profiles, rule, seed_key=p.prompt_id):
            a, b = (
                Candidate(
                    response_id=s.response_id,
                    model=s.model,
                    text=texts[s.model],
                    superiority=s.superiority,
                    simulated=True,
                )
                for s in (chosen.a, chosen.b)
            )
            pairs.append(
                KinPair(
                    pair_id=pair_id_for(p.prompt_id, chosen.a.response_id, chosen.b.response_id),
                    prompt_id=p.prompt_id,
                    prompt_text=p.text,
                    response_a=a,
                    response_b=b,
                    policy=settings.policy,
                    similarity=max(-1.0, min(1.0, chosen.similarity)),
                    gap=abs(chosen.gap),
                )
            )
    return pairs


def keyed(records: Sequence[Any]) -> tuple[list[tuple[bytes, bytes]], float]:
    """(key, value) per record, keyed by prompt_id as every karma topic is; and the mean size."""
    items = [(r.prompt_id.encode(), encode(r)) for r in records]
    return items, sum(len(v) for _, v in items) / max(1, len(items))


@dataclass
class WorkerRun:
    """What a worker did with its backlog, read from its output topic."""

    outputs: int
    expected: int
    span: Span | None
    wall_s: float  # spawn -> last output seen (or the cap)
    startup_s: float | None  # spawn -> first output's timestamp
    capped: bool
    stalled: bool
    rss_hwm_mib: float | None
    rss_max_sampled_mib: float | None
    rss_samples: list[tuple[float, float]]
    counts: dict[str, int]
    log: str
    # Messages in every topic of the run (changelogs, ticks, dead letters included), at the end.
    topic_messages: dict[str, int] = field(default_factory=dict)
    changelog_messages: int = 0  # of those, in faust's changelog topics

    @property
    def rate(self) -> float:
        if not self.span or self.span.seconds <= 0:
            return float("nan")
        return self.outputs / self.span.seconds

    @property
    def status(self) -> str:
        return "capped" if self.capped else "stalled" if self.stalled else "complete"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["span"] = asdict(self.span) if self.span else None
        data["span_s"] = self.span.seconds if self.span else None
        data["rate"] = self.rate
        data["status"] = self.status
        return data


@dataclass
class Result:
    """One row of the summary: the headline figure of a scenario run, with its details."""

    scenario: str
    figure: str
    value: float
    unit: str
    kafka_rate: float | None  # messages/s on the busier side, for the share of the ceiling
    wall_s: float | None
    rss_mib: float | None
    note: str
    details: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, workdir: Path, broker_note: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.broker_note = broker_note
        self.stem = f"kbench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
        self.started = time.monotonic()
        self.results: dict[str, list[Result]] = {}
        self.failures: dict[str, str] = {}
        self.load_at_start = load_average()

    # -- plumbing ----------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def settings(self, name: str, **overrides: Any) -> KarmaSettings:
        """Fresh topics, group and changelogs per scenario run (as the e2e tests do); online
        competency, the lag gauge and /metrics off."""
        tag = f"{self.stem}-{name}"
        return KarmaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=f"{tag}.",
            app_id=tag,
            data_dir=self.workdir / "faust" / tag,
            metrics_port=0,
            lag_interval_s=0,
            competency={"online": False},
            partitions=self.args.partitions,
            **overrides,
        )

    async def prepare(self, settings: KarmaSettings, stage: str, records: Sequence[Any], what: str) -> float:
        """Creates the topics and publishes the backlog; returns the mean message size."""
        await ensure_topics(settings)
        items, size = keyed(records)
        self.say(f"  publishing {len(items):,} {what} ({size:.0f} B each) to {settings.topic(stage)}")
        count, seconds = await publish(self.bootstrap, settings.topic(stage), items)
        self.say(f"  published in {seconds:.1f} s")
        return size

    async def run_worker(
        self,
        name: str,
        settings: KarmaSettings,
        args: Sequence[str],
        output: str,
        expected: int,
        watch: Sequence[str] = (),
    ) -> WorkerRun:
        """Spawns the worker, waits until `expected` messages are on `output` (or the cap, or a
        stall), reads its peak memory, stops it and dates the outputs."""
        log = self.workdir / f"{name}.log"
        cap_s, stall_s = self.args.cap_s, self.args.stall_s
        spawned_ms = time.time() * 1000
        spawned = time.monotonic()
        process = spawn_worker(settings, log, *args)
        self.say(f"  `karma {' '.join(args)}` started (pid {process.pid}); waiting for {expected:,} {output}")
        sampler = RssSampler(process.pid).start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                probe = await stack.enter_async_context(TopicProbe(self.bootstrap, settings.topic(output)))
                others = {
                    s: await stack.enter_async_context(TopicProbe(self.bootstrap, settings.topic(s)))
                    for s in watch
                }
                count, changed, printed = 0, time.monotonic(), time.monotonic()
                capped = stalled = False
                while True:
                    await asyncio.sleep(0.5)
                    now = time.monotonic()
                    current = await probe.count()
                    if current != count:
                        count, changed = current, now
                    if count >= expected:
                        break
                    if process.poll() is not None:
                        raise BenchError(
                            f"{name}: the worker exited with code {process.returncode} after "
                            f"{now - spawned:.0f} s; last lines of {log}:\n{_tail(log)}"
                        )
                    if now - spawned > cap_s:
                        capped = True
                        break
                    if count and now - changed > stall_s:
                        stalled = True
                        break
                    if now - printed >= 5:
                        printed = now
                        extra = ", ".join([f"{s} {await p.count():,}" for s, p in others.items()])
                        rss = sampler.current_mib()
                        self.say(
                            f"  {name}: {count:,}/{expected:,} {output} ({100 * count / expected:.0f}%)"
                            + (f"; {extra}" if extra else "")
                            + f"; {now - spawned:.0f} s since spawn"
                            + (f"; worker RSS {rss:.0f} MiB" if rss else "")
                            + ("" if count else "; waiting for the first output (start-up, group join)")
                        )
                wall = time.monotonic() - spawned
                hwm = sampler.high_water_mib()
                counts = {output: await probe.count(), **{s: await p.count() for s, p in others.items()}}
                span = await probe.span()
        finally:
            sampler.stop()
            stop_worker(process, timeout=30)
        sizes = await topic_sizes(self.bootstrap, (settings.topic_prefix, f"{settings.app_id}-"))
        run = WorkerRun(
            outputs=counts[output],
            expected=expected,
            span=span,
            wall_s=wall,
            startup_s=(span.first_ms - spawned_ms) / 1000 if span else None,
            capped=capped,
            stalled=stalled,
            rss_hwm_mib=hwm,
            rss_max_sampled_mib=sampler.max_sampled_mib(),
            rss_samples=sampler.every(1.0),
            counts=counts,
            log=str(log),
            topic_messages=sizes,
            changelog_messages=sum(n for t, n in sizes.items() if t.endswith("-changelog")),
        )
        startup = f"{run.startup_s:.1f} s" if run.startup_s is not None else "n/a"
        self.say(
            f"  {name}: {run.status}, {run.outputs:,}/{expected:,} {output} in {wall:.1f} s "
            f"(start-up {startup}); {run.rate:,.1f} {output}/s; peak RSS {_mib(hwm)}"
        )
        return run

    # -- scenarios ---------------------------------------------------------------------------------

    async def run_ceiling(self, rep: int) -> Result:
        size = self.args.ceiling_value_bytes
        stem, messages = f"{self.stem}-ceiling{rep}", self.args.ceiling_messages
        run = await ceiling(self.bootstrap, stem, messages, size, self.args.partitions, self.say)
        self.say(f"  ceiling: {run.rate:,.0f} msg/s (client clock {run.client_rate:,.0f} msg/s)")
        return Result(
            "ceiling",
            "consume -> produce -> commit",
            run.rate,
            "msg/s",
            run.rate,
            run.wall_s,
            None,
            f"{run.messages:,} msgs x {size} B, {run.batches} batches; client clock {run.client_rate:,.0f}/s",
            asdict(run),
        )

    async def run_generate(self, rep: int) -> Result:
        settings = self.settings(f"generate{rep}")
        n, k = self.args.prompts, len(settings.pool)
        size = await self.prepare(settings, "prompts", make_prompts(n, f"gen{rep}"), "prompts")
        run = await self.run_worker(f"generate{rep}", settings, ("worker", "generate"), "responses", n * k)
        return Result(
            "generate",
            "responses written/s",
            run.rate,
            "msg/s",
            run.rate,
            run.wall_s,
            run.rss_hwm_mib,
            f"{n:,} prompts x {k} models; {run.rate / k:,.0f} prompts/s; {run.status}",
            {**run.as_dict(), "prompts": n, "models": k, "input_bytes": size},
        )

    async def run_rate(self, rep: int) -> Result:
        settings = self.settings(f"rate{rep}")
        n, k = self.args.prompts, len(settings.pool)
        per_prompt = expected_pairs_per_prompt(settings)
        responses = make_responses(make_prompts(n, f"rate{rep}"), settings.model_names)
        size = await self.prepare(settings, "responses", responses, "responses")
        run = await self.run_worker(f"rate{rep}", settings, ("worker", "rate"), "pairs", n * per_prompt)
        read_rate = run.rate * k / per_prompt  # every prompt's k responses make per_prompt pairs
        return Result(
            "rate",
            "responses read/s",
            read_rate,
            "msg/s",
            max(read_rate, run.rate),
            run.wall_s,
            run.rss_hwm_mib,
            f"{n:,} prompts x {k} responses -> {per_prompt} pairs; {run.rate:,.0f} pairs/s; "
            f"{run.changelog_messages / (n * k):.1f} changelog msgs/response; {run.status}",
            {**run.as_dict(), "prompts": n, "models": k, "pairs_per_prompt": per_prompt, "input_bytes": size},
        )

    async def run_judge(self, rep: int) -> Result:
        settings = self.settings(f"judge{rep}")
        pairs = make_pairs(make_prompts(self.args.prompts, f"judge{rep}"), settings)
        size = await self.prepare(settings, "pairs", pairs, "kin pairs")
        run = await self.run_worker(f"judge{rep}", settings, ("worker", "judge"), "preferences", len(pairs))
        return Result(
            "judge",
            "pairs judged/s",
            run.rate,
            "msg/s",
            run.rate,
            run.wall_s,
            run.rss_hwm_mib,
            f"{len(pairs):,} pairs (both orders each); {run.status}",
            {**run.as_dict(), "pairs": len(pairs), "input_bytes": size},
        )

    async def run_e2e(self, scenario: str, models: int, prompts: int) -> Result:
        pool = None
        if models != 5:  # every model of the bundled profile table
            names = list(load_profiles(None).vectors)[:models]
            pool = [{"name": name} for name in names]
        settings = self.settings(scenario, **({"pool": pool} if pool else {}))
        k, per_prompt = len(settings.pool), expected_pairs_per_prompt(settings)
        if per_prompt < 1:
            raise BenchError(f"{scenario}: the policy pairs nothing in this pool; no preference to wait for")
        size = await self.prepare(settings, "prompts", make_prompts(prompts, scenario), "prompts")
        run = await self.run_worker(
            scenario, settings, ("run",), "preferences", prompts * per_prompt, watch=("responses", "pairs")
        )
        prompt_rate = run.rate / per_prompt
        # Read: prompts, responses, pairs; written: responses, pairs, preferences.
        kafka_rate = prompt_rate * max(1 + k + per_prompt, k + 2 * per_prompt)
        done = run.outputs / per_prompt
        return Result(
            scenario,
            "prompts/s (karma run)",
            prompt_rate,
            "prompts/s",
            kafka_rate,
            run.wall_s,
            run.rss_hwm_mib,
            f"{1000 / prompt_rate:,.1f} ms/prompt; {k} models, {per_prompt} pairs/prompt; "
            f"{done:,.0f}/{prompts:,} prompts; "
            f"{run.changelog_messages / max(done, 1):.0f} changelog msgs/prompt; {run.status}",
            {
                **run.as_dict(),
                "prompts": prompts,
                "models": k,
                "pairs_per_prompt": per_prompt,
                "ms_per_prompt": 1000 / prompt_rate,
                "prompts_done": done,
                "input_bytes": size,
            },
        )

    async def run_latency(self) -> Result:
        settings = self.settings("latency")
        per_prompt = expected_pairs_per_prompt(settings)
        await ensure_topics(settings)
        rate, seconds = self.args.latency_rate, self.args.latency_s
        count = max(1, round(rate * seconds))
        log = self.workdir / "latency.log"
        spawned = time.monotonic()
        process = spawn_worker(settings, log, "run")
        self.say(f"  `karma run` started (pid {process.pid}); one warm-up prompt first")
        sampler = RssSampler(process.pid).start()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        topic = settings.topic("prompts")
        try:
            await producer.start()
            async with TopicProbe(self.bootstrap, settings.topic("preferences")) as probe:

                async def wait_for(target: int, what: str) -> None:
                    deadline = time.monotonic() + self.args.cap_s
                    while await probe.count() < target:
                        if process.poll() is not None:
                            raise BenchError(
                                f"latency: the worker exited with code {process.returncode}; "
                                f"last lines of {log}:\n{_tail(log)}"
                            )
                        if time.monotonic() > deadline:
                            raise BenchError(f"latency: {what} not done within --cap-s {self.args.cap_s:g} s")
                        await asyncio.sleep(0.2)

                warm = Prompt(prompt_id="latency-warmup", text=prompt_text(0), source="bench-pipeline")
                await producer.send_and_wait(topic, encode(warm), key=warm.prompt_id.encode())
                await wait_for(per_prompt, "the warm-up prompt")
                self.say(
                    f"  worker up and through its warm-up prompt after {time.monotonic() - spawned:.1f} s"
                )
                await asyncio.sleep(2.0)  # idle: nothing in flight
                self.say(f"  submitting {count} prompts at {rate:g}/s")
                loop = asyncio.get_running_loop()
                begin = loop.time()
                sent: list[tuple[str, float, asyncio.Future[Any]]] = []
                for i, prompt in enumerate(make_prompts(count, "lat")):
                    await asyncio.sleep(max(0.0, begin + i / rate - loop.time()))
                    future = await producer.send(topic, encode(prompt), key=prompt.prompt_id.encode())
                    sent.append((prompt.prompt_id, time.time() * 1000, future))
                metas = await asyncio.gather(*(f for _, _, f in sent))
                self.say("  all submitted; waiting for their preferences")
                await wait_for(per_prompt * (count + 1), "the submitted prompts")
                hwm = sampler.high_water_mib()
                records = await probe.read_all()
        finally:
            sampler.stop()
            await producer.stop()
            stop_worker(process, timeout=30)
        arrivals: dict[str, list[int]] = {}
        for r in records:
            arrivals.setdefault(r.key.decode(), []).append(r.timestamp)
        last, first = [], []
        for (prompt_id, sent_ms, _), meta in zip(sent, metas, strict=True):
            stamp = meta.timestamp if meta.timestamp and meta.timestamp > 0 else sent_ms
            times = arrivals.get(prompt_id, [])
            if len(times) >= per_prompt:
                last.append(max(times) - stamp)
                first.append(min(times) - stamp)
        p50, p99 = percentile(last, 50), percentile(last, 99)
        self.say(f"  latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(last)} prompts")
        return Result(
            "latency",
            "submit -> preferences p50",
            p50,
            "ms",
            None,
            time.monotonic() - spawned,
            hwm,
            f"p99 {p99:,.0f} ms, max {max(last, default=float('nan')):,.0f} ms; {count} prompts at "
            f"{rate:g}/s; first preference p50 {percentile(first, 50):,.0f} ms",
            {
                "p50_ms": p50,
                "p90_ms": percentile(last, 90),
                "p99_ms": p99,
                "max_ms": max(last, default=None),
                "first_preference_p50_ms": percentile(first, 50),
                "prompts": count,
                "measured": len(last),
                "rate": rate,
                "rss_hwm_mib": hwm,
                "rss_max_sampled_mib": sampler.max_sampled_mib(),
                "rss_samples": sampler.every(1.0),
                "log": str(log),
            },
        )

    async def run(self, scenario: str, rep: int) -> Result:
        if scenario == "ceiling":
            return await self.run_ceiling(rep)
        if scenario == "generate":
            return await self.run_generate(rep)
        if scenario == "rate":
            return await self.run_rate(rep)
        if scenario == "judge":
            return await self.run_judge(rep)
        if scenario == "run5":
            return await self.run_e2e("run5", 5, self.args.backlog_small)
        if scenario == "run16":
            return await self.run_e2e("run16", 16, self.args.backlog_small)
        if scenario == "backlog":
            return await self.run_e2e("backlog", 5, self.args.backlog_large)
        return await self.run_latency()

    # -- report ------------------------------------------------------------------------------------

    def median_of(self, scenario: str, attribute: str = "value") -> float | None:
        runs = self.results.get(scenario)
        if not runs:
            return None
        value = median([v for r in runs if (v := getattr(r, attribute)) is not None])
        return None if value != value else value  # NaN: no figure

    def cost_ratio(self) -> float | None:
        """Per-prompt cost of the large backlog over that of the small one (5 models each)."""
        small, large = self.median_of("run5"), self.median_of("backlog")
        if not small or not large:
            return None
        return small / large  # (1/large) / (1/small): ms/prompt ratio

    def machine(self) -> dict[str, Any]:
        import karma.streams

        root = Path(karma.streams.__file__).resolve().parents[1]
        revision = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return {
            "cores": os.cpu_count(),
            "memory_gib": round(memory, 1),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "aiokafka": metadata.version("aiokafka"),
            "faust_streaming": metadata.version("faust-streaming"),
            "kafka": self.broker_note,
            "karma_code": f"{root} ({revision or 'no git revision'})",
            "load_average_start": self.load_at_start,
            "load_average_end": load_average(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine(),
            "options": {k: v for k, v in vars(self.args).items() if k != "json"},
            "ceiling_msgs_per_s": self.median_of("ceiling"),
            "backlog_vs_small_cost_ratio": self.cost_ratio(),
            "results": {s: [asdict(r) for r in runs] for s, runs in self.results.items()},
            "failures": self.failures,
        }

    def write_json(self) -> None:
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")

    def summary(self) -> None:
        ceiling_rate = self.median_of("ceiling")
        table = Table(title="KARMA-stream pipeline benchmark", title_justify="left")
        for column, justify in (
            ("scenario", "left"),
            ("figure", "left"),
            ("value", "right"),
            ("share of ceiling", "right"),
            ("wall, start-up incl.", "right"),
            ("worker peak RSS", "right"),
            ("notes", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for scenario in SCENARIOS:
            runs = self.results.get(scenario, [])
            if scenario in self.failures and not runs:
                table.add_row(scenario, "failed", "-", "-", "-", "-", self.failures[scenario][:100])
                continue
            if not runs:
                continue
            value = self.median_of(scenario) or float("nan")
            kafka = self.median_of(scenario, "kafka_rate")
            share = f"{100 * kafka / ceiling_rate:.1f}%" if kafka and ceiling_rate else "-"
            wall = self.median_of(scenario, "wall_s")
            startups = [r.details["startup_s"] for r in runs if r.details.get("startup_s") is not None]
            startup = f" ({median(startups):.1f} s to 1st output)" if startups else ""
            rss = max((r.rss_mib for r in runs if r.rss_mib), default=None)
            # The notes of the run whose figure is the median (the middle one of 3).
            middle = sorted(runs, key=lambda r: r.value)[len(runs) // 2]
            note = middle.note if len(runs) == 1 else f"{_spread(runs)}; {middle.note}"
            fmt = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
            table.add_row(
                scenario,
                runs[0].figure,
                f"{fmt} {runs[0].unit}",
                share,
                f"{wall:,.1f} s{startup}" if wall else "-",
                _mib(rss),
                note,
            )
        # Wide enough that a row stays one line in a pipe or a log file.
        console = Console(width=max(250, shutil.get_terminal_size().columns), soft_wrap=True)
        console.print(table)
        ratio = self.cost_ratio()
        if ratio is not None:
            small = self.results["run5"][0].details
            large = self.results["backlog"][0].details
            console.print(
                f"per-prompt cost, {large['prompts']:,} vs {small['prompts']:,} prompts of backlog "
                f"(5 models): {large['ms_per_prompt']:.1f} / {small['ms_per_prompt']:.1f} ms = {ratio:.2f}x"
                + (f" ({large['status']})" if large["status"] != "complete" else "")
            )
        m = self.machine()
        console.print(
            f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['system']}; Python {m['python']}, "
            f"aiokafka {m['aiokafka']}, faust-streaming {m['faust_streaming']}; {m['kafka']}; "
            f"karma code {m['karma_code']}; load average {m['load_average_start']} at start, "
            f"{m['load_average_end']} at end"
        )


def _spread(runs: list[Result]) -> str:
    return f"median of {len(runs)}: " + ", ".join(f"{r.value:,.0f}" for r in runs)


def _mib(value: float | None) -> str:
    return f"{value:,.0f} MiB" if value else "-"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str | None:
            return action.help if action.default is None else super()._get_help_string(action)

    # The module docstring's first paragraph; the rest (what is measured, how to read it) is long.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Formatter)
    parser.add_argument("--bootstrap", help="an existing broker HOST:PORT (default: start a throw-away one)")
    parser.add_argument(
        "--jars-home",
        type=Path,
        help="folder holding kafka-<version>/lib for the throw-away broker "
        "(default: <repo of the karma package in use>/.cache/karma)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--prompts", type=int, default=2000, help="prompts behind each stage-alone backlog")
    parser.add_argument("--backlog-small", type=int, default=1000, help="prompts for run5 and run16")
    parser.add_argument("--backlog-large", type=int, default=20000, help="prompts for the backlog scenario")
    parser.add_argument("--cap-s", type=float, default=240.0, help="time cap per scenario, from spawn")
    parser.add_argument("--stall-s", type=float, default=30.0, help="stop when no output came for this long")
    parser.add_argument(
        "--repeats", type=int, default=1, help=f"runs of the quick scenarios {QUICK} (median)"
    )
    parser.add_argument(
        "--ceiling-messages", type=int, default=50000, help="messages through the ceiling loop"
    )
    parser.add_argument(
        "--warmup-messages",
        type=int,
        default=100_000,
        help="through the ceiling loop first, unreported (0: none)",
    )
    parser.add_argument("--ceiling-value-bytes", type=int, default=400, help="value size in the ceiling loop")
    parser.add_argument("--latency-rate", type=float, default=10.0, help="prompts/s in the latency scenario")
    parser.add_argument("--latency-s", type=float, default=20.0, help="seconds of submitting in it")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic (karma's: 4)")
    parser.add_argument("--logs", type=Path, help="keep worker logs (and faust data) in this folder")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        parser.error(f"--scenarios: unknown {unknown}; choose from {','.join(SCENARIOS)}")
    args.scenarios = [s for s in SCENARIOS if s in chosen]
    for name in ("prompts", "backlog_small", "backlog_large", "repeats", "ceiling_messages", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_messages < 0:
        parser.error("--warmup-messages must be >= 0")
    if args.cap_s <= 0 or args.stall_s <= 0 or args.latency_rate <= 0 or args.latency_s <= 0:
        parser.error("--cap-s, --stall-s, --latency-rate and --latency-s must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # aiokafka logs retried NotLeaderForPartition on topics created a moment ago; not news here.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # ...nor a coordinator still electing
    workdir = args.logs.resolve() if args.logs else Path(tempfile.mkdtemp(prefix="karma-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    bench: Bench | None = None
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        if args.bootstrap:
            say(f"checking the broker at {args.bootstrap}")
            asyncio.run(check_reachable(args.bootstrap))
            bootstrap, note = args.bootstrap, f"Kafka at {args.bootstrap} (version not queried)"
        else:
            jars = (args.jars_home or default_jars_home()).resolve()
            say(f"starting a throw-away Kafka {LOCAL_KAFKA_VERSION} broker (jars: {jars})")
            broker = start_local_broker(workdir / "broker", jars)
            bootstrap, note = broker.bootstrap, f"Kafka {LOCAL_KAFKA_VERSION} (throw-away local broker)"
            say(f"broker up on {bootstrap}")
        bench = Bench(args, bootstrap, workdir, note)
        bench.started = started
        say(f"scenarios: {', '.join(args.scenarios)}; load average {bench.load_at_start}")
        if args.warmup_messages:
            # A fresh broker's JVM is still compiling its hot paths: the first run would be slow.
            say(f"warm-up: {args.warmup_messages:,} messages through the ceiling loop (not reported)")
            warm = ceiling(
                bootstrap, f"{bench.stem}-warmup", args.warmup_messages, 400, args.partitions, lambda _: None
            )
            asyncio.run(warm)
        for scenario in args.scenarios:
            for rep in range(args.repeats if scenario in QUICK else 1):
                label = f"{scenario} (run {rep + 1}/{args.repeats})" if scenario in QUICK else scenario
                say(f"== {label}")
                try:
                    result = asyncio.run(bench.run(scenario, rep))
                except BenchError as exc:
                    say(f"error: {exc}")
                    bench.failures[scenario] = str(exc).splitlines()[0]
                    break
                except Exception as exc:  # e.g. an API the code under test changed: go on with the rest
                    say(f"error: {scenario} failed:\n{traceback.format_exc()}")
                    bench.failures[scenario] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    break
                bench.results.setdefault(scenario, []).append(result)
                bench.write_json()
        say(f"done in {time.monotonic() - started:.0f} s")
        bench.summary()
        bench.write_json()
        if args.json:
            say(f"figures written to {args.json}")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if broker is not None:
            say("stopping the throw-away broker")
            broker.stop()
        elif args.bootstrap and bench is not None:
            with contextlib.suppress(Exception):
                removed = asyncio.run(delete_topics_with_prefix(args.bootstrap, bench.stem))
                say(f"deleted this run's {removed} topics from {args.bootstrap}")
        if args.logs or (bench is not None and bench.failures):
            say(f"worker logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bench is None or bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
