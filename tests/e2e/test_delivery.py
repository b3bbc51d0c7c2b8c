"""Writes the broker refuses, and records too large to travel, on the real broker: nothing is
lost in silence and no message stops the pipeline.

- a topic whose `max.message.bytes` is below the answers' size: every prompt ends as dead letters
  that name it, and the worker commits nothing it has not accounted for;
- a limit lowered while the workers run: the broker refuses pairs, which become letters naming
  them, while the pairs that fit are judged;
- a JSON prompt of about 1,000,000 bytes among ordinary ones: a bounded letter for it, the
  ordinary ones their preferences, the worker keeps running;
- pairs the broker does not take (a cluster of three that lost a node) when the rating worker
  dies: they arrive after the restart (today's main had written the state that said they were
  sent);
- a rating batch that fails after its verdicts were handled and is handled again: each verdict
  is counted once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from confluent_kafka import Producer

from karma.agents.backends.simulated import generator
from karma.agents.gathering import Gathered
from karma.agents.kinship import load_profiles
from karma.agents.pairing import make_pairs
from karma.localkafka.cluster import LocalCluster
from karma.schemas.models import DeadLetter, KinPair, Prompt, Response, response_id_for
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin
from karma.streams.lag import LagMonitor
from karma.streams.sizes import record_size
from karma.tools.processes import settings_env
from tests.conftest import BROKER_START_TIMEOUT, JARS_HOME, REPO_ROOT, set_topic_config
from tests.e2e.conftest import Pipeline, audit, ids, make_prompts
from tests.e2e.test_competency import _gauges, _live
from tests.oracle import expected_pair_ids, read_table

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]


def group_lag(settings: KarmaSettings, group: str, short: str, timeout_s: float = 30.0) -> int:
    """The group's lag on a topic (end offsets minus committed ones), once it is 0 or after
    `timeout_s` (the workers commit every second)."""

    async def read() -> int:
        monitor = LagMonitor(settings, group, [settings.topic(short)])
        await monitor.start()
        try:
            return sum((await monitor.read()).values())
        finally:
            await monitor.stop()

    deadline = time.monotonic() + timeout_s
    while (lag := asyncio.run(read())) and time.monotonic() < deadline:
        time.sleep(1)
    return lag


def wait_until_ready(pipeline: Pipeline, worker: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    """Until the worker has said "Worker ready" (faust, once its partitions are assigned)."""
    deadline = time.monotonic() + timeout_s
    while not any(f"[{worker.pid}]" in line and "Worker ready" in line for line in pipeline.log_lines()):
        assert worker.poll() is None and time.monotonic() < deadline, pipeline.log()
        time.sleep(0.5)


def letters_of(pipeline: Pipeline) -> list[DeadLetter]:
    return [r.record for r in pipeline.read("dlq") if isinstance(r.record, DeadLetter)]


def failures_of(metrics: str, stage: str, topic: str, error: str) -> float:
    line = f'karma_publish_failures_total{{error="{error}",stage="{stage}",topic="{topic}"}}'
    return sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith(line))


def test_a_topic_limit_below_the_answers_leaves_every_prompt_dead_lettered_by_name(
    pipeline_factory: Any,
) -> None:
    pipeline = pipeline_factory(pool=[{"name": m} for m in POOL])
    settings = pipeline.settings
    prompts = make_prompts(40, tag="limit")
    # The smallest answer's record is far above it (a managed cluster's per-topic limit).
    smallest = min(
        record_size(p.prompt_id.encode(), encode(answer))
        for p in prompts
        for answer in simulated_answers(settings, p).values()
    )
    assert smallest > 300
    set_topic_config(settings, "responses", max_message_bytes="300")
    pipeline.submit(prompts)
    pipeline.start_worker()

    wanted = {p.prompt_id for p in prompts}
    pipeline.wait_for("dlq", lambda r: {x.record.prompt_id for x in r} >= wanted)  # type: ignore[union-attr]
    letters = {letter.prompt_id: letter for letter in letters_of(pipeline)}
    for prompt in prompts:
        letter = letters[prompt.prompt_id]
        assert letter.error_type == "too_large" and letter.stage == "generation"
        assert f"prompt {prompt.prompt_id}: the prompt is" in letter.reason
        assert f"{settings.topic('responses')} takes records of at most 300 bytes" in letter.reason
    assert not pipeline.read("responses")  # nothing half-written

    ledger = audit(pipeline)
    assert ledger["counts"]["dead-lettered"] == len(prompts) and ledger["unaccounted_total"] == 0
    # What it accounted for, it committed: here, every prompt.
    assert group_lag(settings, settings.app_id, "prompts") == 0


def test_pairs_the_broker_refuses_become_letters_naming_them(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(pool=[{"name": m} for m in POOL], batch_wait_s=0.05)
    settings = pipeline.settings
    prompts = make_prompts(60, tag="refused")
    pairs = [pair for p in prompts for pair in simulated_pairs(settings, p)]
    limit = limit_between(sorted(record_size(pair.prompt_id.encode(), encode(pair)) for pair in pairs))
    # One worker per stage, as in production: what the rating worker learns of the pairs topic
    # (its lower limit) stays its own, so the generation worker goes on as before. Each reads the
    # topics' limits at start: all have, once all are ready.
    workers = [pipeline.start_worker("worker", role, "--metrics-port", "0") for role in ("generate", "judge")]
    workers.append(pipeline.start_worker("worker", "rate"))
    for worker in workers:
        wait_until_ready(pipeline, worker)
    # Lowered while the worker runs: it read the old limit at start, so the broker refuses.
    set_topic_config(settings, "pairs", max_message_bytes=str(limit))
    pipeline.submit(prompts)

    too_large = {p.pair_id for p in pairs if record_size(p.prompt_id.encode(), encode(p)) > limit}
    fitting = {p.pair_id for p in pairs} - too_large

    def settled(received: list[Any]) -> bool:
        return set(ids(received)) >= fitting

    received = pipeline.wait_for("preferences", settled)
    assert set(ids(received)) == fitting  # every pair that fits is judged, none that does not
    lettered = {letter.record_id: letter for letter in letters_of(pipeline) if letter.record_id}
    deadline = time.monotonic() + 60
    while set(lettered) < too_large and time.monotonic() < deadline:
        time.sleep(1)
        lettered = {letter.record_id: letter for letter in letters_of(pipeline) if letter.record_id}
    assert set(lettered) == too_large
    for letter in lettered.values():
        assert letter.stage == "rating" and letter.error_type == "too_large" and letter.prompt_id
        assert f"at most {limit:,} bytes" in letter.reason and letter.source_offset == -1
    metrics = pipeline.metrics()
    assert failures_of(metrics, "rating", "pairs", "MessageSizeTooLargeError") >= 1  # the broker's
    ledger = audit(pipeline)
    assert ledger["unaccounted_total"] == 0
    assert (
        ledger["counts"]["complete"] + ledger["counts"]["partial"] + ledger["counts"]["dead-lettered"] == 60
    )


def test_a_prompt_close_to_the_brokers_limit_gets_a_bounded_letter_and_stops_nothing(
    pipeline_factory: Any,
) -> None:
    pipeline = pipeline_factory()
    settings = pipeline.settings
    ordinary = [Prompt(prompt_id=f"big-{i:02d}", text=f"Ordinary question {i}") for i in range(30)]
    huge = {"prompt_id": "big-document", "text": "Summarise this document: " + "lorem ipsum " * 83_330}
    raw = json.dumps(huge).encode()
    assert 999_000 < len(raw) < 1_000_100
    messages = [
        (p.prompt_id.encode(), json.dumps({"prompt_id": p.prompt_id, "text": p.text}).encode())
        for p in ordinary
    ]
    messages.insert(15, (b"big-document", raw))
    # librdkafka, as a producer of another team would send it (its own cap raised to the broker's).
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "message.max.bytes": 1_048_576})
    for key, value in messages:
        producer.produce(settings.topic("prompts"), value=value, key=key)
    assert producer.flush(30) == 0
    worker = pipeline.start_worker()

    expected = pipeline.expected_preference_ids(ordinary)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    assert set(ids(received)) == expected
    [letter] = [x for x in letters_of(pipeline) if x.prompt_id == "big-document"]
    assert letter.error_type == "too_large" and letter.stage == "generation"
    assert "takes records of at most 1,000,000 bytes" in letter.reason
    assert letter.value == raw[: settings.dead_letter_max_value_bytes]  # bounded...
    assert letter.value_size == len(raw) and letter.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert worker.poll() is None  # ...and the worker keeps running
    ledger = audit(pipeline)
    assert ledger["unaccounted_total"] == 0 and ledger["counts"]["dead-lettered"] == 1


def test_pairs_not_confirmed_when_the_rating_worker_dies_still_arrive(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    """A cluster of three that lost a node, and a pairs topic that wants all three in sync: the
    broker answers every pair NOT_ENOUGH_REPLICAS (the producer retries it), while the rating
    tables' changelogs (two in sync are enough) take their writes. Today's main wrote the state
    that records the pairs as emitted, so its restarted worker never sent them again."""
    cluster = LocalCluster.on_free_ports(tmp_path / "cluster", nodes=3, jars_home=JARS_HOME)
    cluster.start(timeout=2 * BROKER_START_TIMEOUT)
    pipeline = None
    try:
        pipeline = pipeline_factory(**cluster.client_settings(), pool=[{"name": m} for m in POOL])
        settings = pipeline.settings
        prompts = make_prompts(60, tag="unconfirmed")
        expected = pipeline.expected_preference_ids(prompts)
        set_topic_config(settings, "pairs", min_insync_replicas="3")
        lost = cluster.brokers[2]
        os.kill(lost.status().pid or 0, signal.SIGKILL)
        wait_for_isr(settings, "pairs", 2)  # the cluster fenced the node: pairs cannot be written

        pipeline.submit(prompts)
        for role in ("generate", "judge"):
            pipeline.start_worker("worker", role, "--metrics-port", "0")
        pipeline.wait_for("responses", lambda r: len(r) >= 5 * len(prompts))
        rater = pipeline.start_worker("worker", "rate")

        def rated(text: str) -> bool:
            rows = [x for x in text.splitlines() if x.startswith('karma_messages_in_total{stage="rating"}')]
            return bool(rows) and float(rows[0].rsplit(" ", 1)[1]) >= 5

        pipeline.wait_for_metrics(rated)
        time.sleep(5)  # today's main has handled every response and written its state by now
        rater.kill()
        rater.wait()
        pipeline.workers.remove(rater)
        assert not pipeline.read("pairs")

        cluster.start(timeout=2 * BROKER_START_TIMEOUT)  # the node comes back
        wait_for_isr(settings, "pairs", 3)
        pipeline.start_worker("worker", "rate", "--metrics-port", "0")
        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=180)
        assert set(ids(received)) == expected
        assert not set(ids(pipeline.read("pairs"), "pair_id")) - expected
        assert audit(pipeline)["unaccounted_total"] == 0
    finally:
        for worker in list(pipeline.workers if pipeline else []):
            pipeline.stop_worker(worker)  # type: ignore[union-attr]
        cluster.stop()


def wait_for_isr(settings: KarmaSettings, short: str, size: int, timeout_s: float = 60.0) -> None:
    """Until every partition of a topic has `size` replicas in sync."""

    async def sizes() -> set[int]:
        admin = new_admin(settings)
        try:
            await admin.start()
            [described] = await admin.describe_topics([settings.topic(short)])
            return {len(partition["isr"]) for partition in described["partitions"]}
        except KafkaError:  # asked the node that is down: ask again
            return set()
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout_s
    while (found := asyncio.run(sizes())) != {size}:
        assert time.monotonic() < deadline, f"in-sync replicas of {short}: {found}, not {size}"
        time.sleep(0.5)


def test_a_rating_batch_handled_again_counts_each_verdict_once(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(pool=[{"name": m} for m in POOL], competency={"online": True})
    settings = pipeline.settings
    pipeline.workdir.mkdir(parents=True, exist_ok=True)
    log = (pipeline.workdir / "worker.log").open("ab")
    # Every rating batch fails once after it was handled, then is handled again.
    flaky = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.flaky_state", "run", "--loglevel", "info"],
        env={**os.environ, **settings_env(settings)},
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pipeline.workers.append(flaky)
    prompts = make_prompts(40, tag="verdicts")
    pipeline.submit(prompts)
    wanted = {p.prompt_id for p in prompts}
    pipeline.wait_for("preferences", lambda r: {x.record.prompt_id for x in r} >= wanted)  # type: ignore[union-attr]

    def agrees(text: str) -> bool:
        live = _live(settings)
        counts = _gauges(text, "karma_model_comparisons")
        return bool(counts) and all(counts.get(m) == row["comparisons"] for m, row in live.items())

    metrics = pipeline.wait_for_metrics(agrees, timeout_s=60)
    assert sum(_gauges(metrics, "karma_model_comparisons").values()) >= 2 * len(prompts)  # evidence came
    assert 'karma_handler_failures_total{stage="rating"}' in metrics  # and batches were handled again
    assert audit(pipeline)["unaccounted_total"] == 0


# -- what the simulated models answer, as the workers will ------------------------------------


def limit_between(sizes: list[int]) -> int:
    """A record limit near the median of `sizes` with no size within 4 bytes of it (a record's
    timestamp may make it a byte longer or shorter than computed here)."""
    middle = len(sizes) // 2
    for i in sorted(range(len(sizes) - 1), key=lambda i: abs(i - middle)):
        if sizes[i + 1] - sizes[i] >= 10:
            return sizes[i] + 5
    raise AssertionError(f"no gap between the record sizes {sizes}")


def simulated_answers(settings: KarmaSettings, prompt: Prompt) -> dict[str, Response]:
    answers = {}
    for spec in settings.pool:
        model = generator(spec, settings)
        text = model.simulator.generate(prompt.prompt_id, prompt.text)
        answers[spec.name] = Response(
            response_id=response_id_for(prompt.prompt_id, spec.name),
            prompt_id=prompt.prompt_id,
            prompt_text=prompt.text,
            model=spec.name,
            text=text,
            backend="simulated",
            simulated=True,
            num_tokens=len(text.split()),
            latency_ms=0.5,
        )
    return answers


def simulated_pairs(settings: KarmaSettings, prompt: Prompt) -> list[KinPair]:
    """The pairs the rating stage picks among the simulated answers (prior competency): built by
    the pipeline's pairing, so that their records (and sizes) are the ones it sends, and held
    against the tests' own oracle (tests/oracle.py) for which pairs they are."""
    answers = simulated_answers(settings, prompt)
    gathered = Gathered(
        prompt.prompt_id,
        prompt.text,
        {m: {"response_id": r.response_id, "text": r.text, "simulated": True} for m, r in answers.items()},
    )
    pairs = make_pairs(gathered, load_profiles(settings.kin.profiles), settings.kin.rule(), settings.policy)
    kin = settings.kin
    expected = expected_pair_ids(
        prompt.prompt_id,
        answers,
        tau=kin.tau,
        delta=kin.delta,
        min_length_ratio=kin.min_length_ratio,
        table=read_table(kin.profiles),
        lengths={m: len(r.text.split()) for m, r in answers.items()},
    )
    assert {pair.pair_id for pair in pairs} == expected, f"prompt {prompt.prompt_id}: not the oracle's pairs"
    return pairs
