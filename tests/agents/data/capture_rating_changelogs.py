"""Captures the raw changelog records of the rating stage's tables, as the checked-out code writes
them, into a JSON fixture (keys and values base64, as the broker holds them).

Run with the interpreter of the checkout whose bytes are wanted (it imports that `karma`):
    python capture_rating_changelogs.py KAFKA_JARS_HOME OUT.json
old_rating_changelogs.json beside it was made so at b6e5a0b (the last commit whose state had no
typed records), in a `git worktree` of it with its own venv; its "note" says what it holds.

A real local broker and real workers (`karma worker judge|generate|rate`, one process each); the
rating worker runs three times under one app id (so over the same tables):
1. every model answers (gpt-3.5-turbo fails: its server is a closed port): prompts complete, are
   paired (policy `all`), judged, and the verdicts counted (online competency);
2. no worker serves vicuna-33b and the backstop is short: a prompt is closed by the backstop;
3. vicuna-33b still silent, the backstop long: a prompt stays open, its answers kept in the state.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from karma.localkafka.broker import BrokerConfig, LocalBroker, free_ports
from karma.schemas.models import Prompt
from karma.streams.client import PromptProducer, read_topic
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import spawn_worker, stop_worker

TABLES = ("rating-prompts", "rating-answers", "rating-competency")


def pool(closed_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "llama-2-13b-chat"},
        {"name": "wizardlm-13b"},
        {"name": "vicuna-33b"},
        {
            "name": "gpt-3.5-turbo",
            "backend": "openai",
            "base_url": f"http://127.0.0.1:{closed_port}/v1",
            "max_retries": 0,
            "timeout_s": 2.0,
        },
    ]


async def count(settings: KarmaSettings, topic: str) -> list[Any]:
    return [r async for r in read_topic(settings, topic, until_end=True)]


def wait(what: str, done: Any, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


async def submit(settings: KarmaSettings, prompts: list[Prompt]) -> None:
    async with PromptProducer(settings, source="capture") as producer:
        for prompt in prompts:
            await (await producer.send_prompt(prompt))


async def changelog(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    # No group: the consumer is assigned every partition of the topic.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(300):
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        if not partitions:
            raise SystemExit(f"{topic}: no partitions")
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=2000)
                for message in batch.get(tp, []):
                    records.append(
                        {
                            "partition": message.partition,
                            "offset": message.offset,
                            "key": None if message.key is None else base64.b64encode(message.key).decode(),
                            "value": None
                            if message.value is None
                            else base64.b64encode(message.value).decode(),
                        }
                    )
        return records
    finally:
        await consumer.stop()


def main(jars_home: Path, out: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="capture-rating-"))
    broker = LocalBroker(BrokerConfig.on_free_ports(home / "kafka", jars_home))
    broker.start(timeout=120)
    workers: list[subprocess.Popen[bytes]] = []
    log = home / "worker.log"

    def start(settings: KarmaSettings, *args: str) -> subprocess.Popen[bytes]:
        worker = spawn_worker(settings, log, "worker", *args, "--metrics-port", "0", "--loglevel", "info")
        workers.append(worker)
        return worker

    def stop(worker: subprocess.Popen[bytes]) -> None:
        stop_worker(worker, timeout=30)
        workers.remove(worker)

    def prompt_ids(settings: KarmaSettings, topic: str) -> list[str]:
        return [getattr(r.record, "prompt_id", "") for r in asyncio.run(count(settings, topic))]

    def letters(settings: KarmaSettings) -> list[tuple[str, str]]:
        # The failed answer of gpt-3.5-turbo is a letter too: wait for the backstop's own.
        return [
            (getattr(r.record, "prompt_id", ""), getattr(r.record, "error_type", ""))
            for r in asyncio.run(count(settings, "dlq"))
        ]

    try:
        closed_port = free_ports(1)[0]
        base = {
            "bootstrap_servers": broker.bootstrap,
            "topic_prefix": "capture.",
            "app_id": "karma-capture",
            "data_dir": home / "faust",
            "policy": "all",
            "tick_interval_s": 1.0,
            "lag_interval_s": 1.0,
            "pool": pool(closed_port),
        }
        settings = KarmaSettings(**base)
        asyncio.run(ensure_topics(settings))
        start(settings, "judge")

        # 1. Every model accounted for: complete, paired, judged, verdicts counted.
        generate_all = start(settings, "generate")
        rate = start(settings, "rate")
        prompts = [Prompt(prompt_id=f"old-{i}", text=f"Question {i}: why is the sky blue?") for i in range(3)]
        asyncio.run(submit(settings, prompts))
        # `all` over three answers: three pairs a prompt, each judged.
        wait("verdicts", lambda: len(prompt_ids(settings, "preferences")) >= 9)
        time.sleep(5.0)  # the verdicts' batch writes its state
        stop(generate_all)
        stop(rate)

        # 2. vicuna-33b silent, a short backstop: the prompt is closed by the backstop.
        start(settings, "generate", *(f"--model={m}" for m in settings.model_names if m != "vicuna-33b"))
        rate = start(KarmaSettings(**base, gather_timeout_s=8.0), "rate")
        asyncio.run(submit(settings, [Prompt(prompt_id="old-backstopped", text="Why do cats purr?")]))
        wait("the incomplete letter", lambda: ("old-backstopped", "incomplete") in letters(settings))
        time.sleep(3.0)
        stop(rate)

        # 3. vicuna-33b silent, a long backstop: the prompt stays open, its answers kept.
        start(KarmaSettings(**base, gather_timeout_s=3600.0), "rate")
        asyncio.run(submit(settings, [Prompt(prompt_id="old-open", text="Why is water wet?")]))
        wait("the open prompt's answers", lambda: prompt_ids(settings, "responses").count("old-open") >= 3)
        time.sleep(5.0)  # its batch writes its state
        for worker in list(workers):
            stop(worker)

        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        app_id = f"{base['app_id']}-rate"
        fixture = {
            "commit": commit,
            "made_by": "tests/agents/data/capture_rating_changelogs.py, run in a checkout of that commit",
            "app_id": app_id,
            "changelogs": {
                table: asyncio.run(changelog(broker.bootstrap, f"{app_id}-{table}-changelog"))
                for table in TABLES
            },
        }
        out.write_text(json.dumps(fixture, indent=1) + "\n")
        print(log.read_text()[-3000:])
    finally:
        for worker in workers:
            stop_worker(worker, timeout=10)
        broker.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
