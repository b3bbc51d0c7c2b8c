"""`karma competency` counts the verdicts of the current window once each, and fits them with
the rating stage's estimator; here against hand-made preferences on the real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from karma.agents.competency import assess, tally, window_of
from karma.agents.kinship import load_profiles
from karma.cli import app
from karma.schemas.models import Candidate, Preference, Winner
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env
from tests import records

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"]


def _preference(i: int, a: str, b: str, winner: Winner) -> Preference:
    def candidate(model: str) -> Candidate:
        return records.candidate(model, f"r-{i}-{model}", text="t")

    return records.preference(
        f"p-{i}", candidate(a), candidate(b), winner, pair_id=f"pair-{i}", prompt_text="q"
    )


def _settings(kafka_bootstrap: str) -> KarmaSettings:
    run = uuid.uuid4().hex[:8]
    return KarmaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"c{run}.",
        app_id=f"c{run}",
        pool=[{"name": m} for m in POOL],  # type: ignore[list-item]
        competency={"evidence": 4},  # type: ignore[arg-type]
        window_size_s=3600,
        window_step_s=60,
    )


def _invoke(settings: KarmaSettings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["competency", *args], env=settings_env(settings))
    return result.exit_code, result.output


def test_the_window_verdicts_are_counted_once_and_fitted(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap)
    asyncio.run(ensure_topics(settings))
    verdicts = [
        ("wizardlm-13b", "llama-2-13b-chat", Winner.A),
        ("wizardlm-13b", "llama-2-13b-chat", Winner.A),
        ("llama-2-13b-chat", "wizardlm-13b", Winner.TIE),
        ("vicuna-33b", "wizardlm-13b", Winner.B),
    ]
    start, _ = window_of(time.time(), settings.window_size_s, settings.window_step_s)

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            topic = settings.topic("preferences")
            for i, (a, b, winner) in enumerate(verdicts):
                value = encode(_preference(i, a, b, winner))
                await producer.send_and_wait(topic, value, key=f"p-{i}".encode())
            # A replay of verdict 0 and a verdict from before the window: neither counts.
            await producer.send_and_wait(topic, encode(_preference(0, *verdicts[0])), key=b"p-0")
            old = encode(_preference(99, "vicuna-33b", "llama-2-13b-chat", Winner.A))
            await producer.send_and_wait(topic, old, key=b"p-99", timestamp_ms=int((start - 10) * 1000))
        finally:
            await producer.stop()

    asyncio.run(publish())
    code, output = _invoke(settings, "--json")
    assert code == 0, output
    printed = json.loads(output)
    assert printed["preferences"] == 4 and printed["window"]["start_s"] == start
    rows = {row["model"]: row for row in printed["models"]}
    expected = assess(POOL, load_profiles(), tally(verdicts), evidence=4, scale=0.1)
    for model, c in expected.items():
        assert rows[model]["comparisons"] == c.comparisons
        assert rows[model]["online"] == c.online
        assert rows[model]["blended"] == c.blended
    assert rows["wizardlm-13b"]["comparisons"] == 4 and rows["vicuna-33b"]["comparisons"] == 1
    # wizardlm-13b scored 2.5 of 3 against llama-2-13b-chat (and lost to vicuna-33b): up and down.
    assert rows["wizardlm-13b"]["blended"] > rows["wizardlm-13b"]["prior"]
    assert rows["llama-2-13b-chat"]["blended"] < rows["llama-2-13b-chat"]["prior"]

    code, output = _invoke(settings)
    assert code == 0 and "4 verdicts in the window" in output and "wizardlm-13b" in output


def test_a_pipeline_without_topics_is_a_one_line_error(kafka_bootstrap: str) -> None:
    code, output = _invoke(_settings(kafka_bootstrap))
    assert code == 1
    assert "preferences does not exist" in output
