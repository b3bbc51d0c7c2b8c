"""`karma submit` on the real broker: each good line is published and acknowledged; a bad line,
or one too large for the prompts topic, is reported as FILE:LINE with the reason and skipped."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from karma.cli import app
from karma.streams.client import read_topic
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from tests.conftest import set_topic_config


@pytest.fixture(autouse=True)
def _no_config_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_CONFIG", "")
    monkeypatch.delenv("KARMA_CONFIG")


def test_submit_reports_and_skips_bad_and_oversized_lines(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"sub{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("KARMA_TOPIC_PREFIX", prefix)
    settings = KarmaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    asyncio.run(ensure_topics(settings))
    set_topic_config(settings, "prompts", max_message_bytes="2000")
    file = tmp_path / "prompts.jsonl"
    file.write_text(
        "\n".join(
            [
                json.dumps({"prompt_id": "ok-1", "text": "Why is the sky blue?"}),
                '{"text": ',
                json.dumps({"prompt_id": "too-big", "text": "x" * 5_000}),
                json.dumps({"prompt_id": "ok-2", "text": "Why is the sea salty?"}),
            ]
        )
    )
    result = CliRunner().invoke(app, ["submit", str(file), "--bootstrap", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert f"skipped {file}:2: " in output
    assert f"skipped {file}:3: the prompt's record is " in output
    assert f"{prefix}prompts takes records of at most 2,000 bytes (its max.message.bytes)" in output
    assert f"submitted 2 prompt(s) to {prefix}prompts; skipped 2 bad line(s)" in output

    async def read() -> list[str]:
        return [r.record.prompt_id async for r in read_topic(settings, "prompts", until_end=True)]  # type: ignore[union-attr]

    assert sorted(asyncio.run(read())) == ["ok-1", "ok-2"]
