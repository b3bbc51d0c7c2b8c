"""`karma audit` as an operator runs it: a process reading hand-made records of every class from
real topics, its JSON counts and its exit code (0 when all is settled, 1 when a prompt is
unaccounted), its table, and its one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from karma.cli import app
from karma.schemas.models import (
    DeadLetter,
    KinPair,
    Prompt,
    Record,
    Response,
    Winner,
    pair_id_for,
    response_id_for,
)
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env
from tests import records
from tests.conftest import free_ports

LLAMA, WIZARD, VICUNA = "llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"
# What the default kin rule pairs among the three (README, "The kin rule"): the audit must
# expect exactly these, by the rating stage's own make_pairs.
KIN = [(LLAMA, WIZARD), (WIZARD, VICUNA)]
HOUR_MS = 3_600_000
ANSWER = "an answer of five words"


def _settings(kafka_bootstrap: str) -> KarmaSettings:
    run = uuid.uuid4().hex[:8]
    return KarmaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"a{run}.",
        app_id=f"a{run}",
        pool=[{"name": m} for m in (LLAMA, WIZARD, VICUNA)],  # type: ignore[list-item]
        competency={"online": False},  # type: ignore[arg-type]
        gather_timeout_s=60.0,  # the audit's default backstop
    )


def _response(prompt_id: str, model: str, error: str | None = None) -> Response:
    text = "" if error else ANSWER
    return records.response(prompt_id, model, text=text, error=error, simulated=not error)


def _pair(prompt_id: str, a: str, b: str) -> KinPair:
    return records.kin_pair(prompt_id, a, b, text=ANSWER, gap=0.05)


class Publisher:
    """Publishes records as the stages do (Avro, keyed by prompt id), an hour old by default."""

    def __init__(self, settings: KarmaSettings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.old_ms = int(time.time() * 1000) - HOUR_MS

    async def send(self, stage: str, key: str | None, value: Record | bytes, *, young: bool = False) -> Any:
        return await self.producer.send_and_wait(
            self.settings.topic(stage),
            value if isinstance(value, bytes) else encode(value),
            key=key.encode() if key else None,
            timestamp_ms=None if young else self.old_ms,
        )

    async def letter(
        self, prompt_id: str, error_type: str, stage: str, reason: str, at: Any = None, models: Any = ()
    ) -> None:
        """A dead letter about `prompt_id` pointing at the message `at` (the send's metadata), or
        at no message (offset -1), as the rating stage's unpaired letter; naming `models`."""
        letter = DeadLetter(
            reason=reason,
            error_type=error_type,
            stage=stage,
            prompt_id=prompt_id,
            source_topic=at.topic if at else self.settings.topic("responses"),
            source_partition=at.partition if at else 0,
            source_offset=at.offset if at else -1,
            key=prompt_id.encode(),
            models=list(models),
        )
        await self.send("dlq", prompt_id, letter)

    async def judged(self, prompt_id: str, a: str, b: str) -> None:
        pair = _pair(prompt_id, a, b)
        await self.send("pairs", prompt_id, pair)
        await self.send("preferences", prompt_id, records.preference_on(pair, Winner.B, confidence=0.8))


async def _publish(settings: KarmaSettings, script: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await script(Publisher(settings, producer))
    finally:
        await producer.stop()


async def _one_of_each(pub: Publisher) -> None:
    # complete: every model answered, both kin pairs judged.
    await pub.send("prompts", "p-complete", Prompt(prompt_id="p-complete", text="Why?"))
    for model in (LLAMA, WIZARD, VICUNA):
        await pub.send("responses", "p-complete", _response("p-complete", model))
    for a, b in KIN:
        await pub.judged("p-complete", a, b)
    # partial: vicuna-33b failed for good; the one pair left was judged.
    at = await pub.send("prompts", "p-failed", Prompt(prompt_id="p-failed", text="Why?"))
    for model in (LLAMA, WIZARD):
        await pub.send("responses", "p-failed", _response("p-failed", model))
    await pub.send("responses", "p-failed", _response("p-failed", VICUNA, error="HTTP 500 (5 attempt(s))"))
    await pub.letter("p-failed", "backend", "generation", f"prompt p-failed, model {VICUNA}: HTTP 500", at)
    await pub.judged("p-failed", LLAMA, WIZARD)
    # partial: both pairs emitted, one judged, the judge dead-lettered the other (at its message).
    await pub.send("prompts", "p-judge", Prompt(prompt_id="p-judge", text="Why?"))
    for model in (LLAMA, WIZARD, VICUNA):
        await pub.send("responses", "p-judge", _response("p-judge", model))
    await pub.judged("p-judge", *KIN[0])
    at = await pub.send("pairs", "p-judge", _pair("p-judge", *KIN[1]))
    await pub.letter("p-judge", "verdict", "judging", "no valid verdict in 3 attempt(s)", at)
    # dead-lettered: one answer, two failures, the rating stage's unpaired letter.
    await pub.send("prompts", "p-dead", Prompt(prompt_id="p-dead", text="Why?"))
    await pub.send("responses", "p-dead", _response("p-dead", LLAMA))
    for model in (WIZARD, VICUNA):
        await pub.send("responses", "p-dead", _response("p-dead", model, error="timed out"))
    await pub.letter("p-dead", "unpaired", "rating", "prompt p-dead: only 1 of 3 models answered")
    # partial: vicuna-33b never answered; the backstop's letter names it in its models field (the
    # audit reads the field, not the reason), and the one pair left was judged.
    await pub.send("prompts", "p-silent", Prompt(prompt_id="p-silent", text="Why?"))
    for model in (LLAMA, WIZARD):
        await pub.send("responses", "p-silent", _response("p-silent", model))
    reason = "prompt p-silent: no word from 1 model within 60 s"
    await pub.letter("p-silent", "incomplete", "rating", reason, models=[VICUNA])
    await pub.judged("p-silent", LLAMA, WIZARD)
    # an undecodable prompt message and its letter.
    at = await pub.send("prompts", "p-garbage", b"not avro")
    await pub.letter("p-garbage", "decode", "generation", "magic byte is 110, expected 0", at)
    # pending: submitted just now, nothing yet.
    await pub.send("prompts", "p-young", Prompt(prompt_id="p-young", text="Why?"), young=True)


async def _a_lost_pair(pub: Publisher) -> None:
    # An hour old, every model answered, the first kin pair judged, the second never emitted.
    await pub.send("prompts", "p-lost", Prompt(prompt_id="p-lost", text="Why?"))
    for model in (LLAMA, WIZARD, VICUNA):
        await pub.send("responses", "p-lost", _response("p-lost", model))
    await pub.judged("p-lost", *KIN[0])


def _audit(settings: KarmaSettings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma.cli", "audit", *args],
        env={**os.environ, **settings_env(settings)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_counts_every_class_and_exits_1_once_a_prompt_is_unaccounted(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = _settings(kafka_bootstrap)
    asyncio.run(ensure_topics(settings))
    asyncio.run(_publish(settings, _one_of_each))

    done = _audit(settings, tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    ledger = json.loads(done.stdout)
    assert ledger["submitted"] == 6
    assert ledger["counts"] == {
        "complete": 1,
        "complete-late": 0,
        "partial": 3,
        "dead-lettered": 1,
        "pending": 1,
        "unaccounted": 0,
    }
    assert ledger["pairs_checked"] == "expected" and ledger["backstop_s"] == 60.0
    assert ledger["undecodable_prompts"]["total"] == 1 and ledger["undecodable_prompts"]["dead-lettered"] == 1
    states = {p["prompt_id"]: p["state"] for p in ledger["prompts"]}
    assert states == {
        "p-young": "pending",
        "p-dead": "dead-lettered",
        "p-failed": "partial",
        "p-judge": "partial",
        "p-silent": "partial",
    }
    silent = next(p for p in ledger["prompts"] if p["prompt_id"] == "p-silent")
    assert silent["missing"] == [f"answer from {VICUNA}: named missing by the backstop (incomplete)"]
    assert ledger["seen_twice"] == {"prompts": 0, "responses": 0, "pairs": 0, "preferences": 0}

    asyncio.run(_publish(settings, _a_lost_pair))
    lost = _audit(settings, tmp_path, "--json", "--show", "1")
    assert lost.returncode == 1, lost.stderr
    ledger = json.loads(lost.stdout)
    assert ledger["counts"]["unaccounted"] == 1 and ledger["unaccounted_total"] == 1
    [listed] = ledger["prompts"]  # --show 1: the worst first
    assert listed["prompt_id"] == "p-lost" and listed["state"] == "unaccounted"
    second = pair_id_for("p-lost", response_id_for("p-lost", WIZARD), response_id_for("p-lost", VICUNA))
    assert listed["missing"] == [f"pair {second} ({WIZARD} vs {VICUNA}): expected, not on the pairs topic"]

    # The same as text: the table, the listed prompt with what it lacks, the same exit code.
    text = _audit(settings, tmp_path, "--show", "3")
    assert text.returncode == 1, text.stderr
    assert "karma audit: 7 prompt(s)" in text.stdout and "1 unaccounted" in text.stdout
    assert "p-lost: unaccounted, 1 preference(s) of 1 pair(s)" in text.stdout
    assert "3 of 6 prompt(s) not complete" in text.stdout
    # A longer backstop makes the same prompt pending: nothing unaccounted, exit 0.
    patient = _audit(settings, tmp_path, "--json", "--backstop-s", str(2 * HOUR_MS / 1000))
    assert patient.returncode == 0 and json.loads(patient.stdout)["counts"]["pending"] == 2


def test_bad_options_exit_2_and_a_broker_that_is_down_is_one_line(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap)
    for bad in (["--show", "-1"], ["--backstop-s", "soon"]):
        result = CliRunner().invoke(app, ["audit", *bad], env=settings_env(settings))
        assert result.exit_code == 2, result.output
    down = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_ports(1)[0]}"})
    result = CliRunner().invoke(app, ["audit"], env=settings_env(down))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: nothing listens on")
