"""`karma export` against the real pipeline: SIGKILLed mid-stream, then restarted, its shards hold
every decided preference of the topic exactly once, and every shard loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from karma.schemas.models import Preference, Winner
from karma.streams.client import Received
from karma.tools.export.manifest import MANIFEST_DIR, Manifest, resume_offsets
from karma.tools.export.rows import COLUMNS
from karma.tools.processes import settings_env
from tests.e2e.conftest import Pipeline, ids, make_prompts

# Every exporter a test starts; whatever is still running when the test ends (a failed wait, say)
# is killed then, so no --follow exporter outlives its test.
STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_exporter_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        exporter = STARTED.pop()
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait(10)


def start_export(pipeline: Pipeline, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """`karma export --out OUT ARGS` as a child process, as an operator starts it."""
    log = (pipeline.workdir / "export.log").open("ab")
    exporter = subprocess.Popen(
        [sys.executable, "-m", "karma.cli", "export", "--out", str(out), *args],
        env={**os.environ, **settings_env(pipeline.settings)},
        cwd=pipeline.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    STARTED.append(exporter)
    return exporter


def export_log(pipeline: Pipeline) -> str:
    path = pipeline.workdir / "export.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def manifests(out: Path) -> list[Manifest]:
    return [Manifest.from_json(p.read_text()) for p in sorted((out / MANIFEST_DIR).glob("shard-*.json"))]


def wait_until(pipeline: Pipeline, exporter: subprocess.Popen[bytes], done: Any, what: str) -> None:
    deadline = time.monotonic() + 90
    while not done():
        if exporter.poll() is not None:
            pytest.fail(f"karma export exited {exporter.returncode} before {what}\n{export_log(pipeline)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{export_log(pipeline)}\n{pipeline.log()}")
        time.sleep(0.3)


def decided(received: list[Received]) -> list[str]:
    return [
        r.record.preference_id
        for r in received
        if isinstance(r.record, Preference) and r.record.winner is not Winner.TIE
    ]


def kill_mid_stream(pipeline: Pipeline, out: Path, *args: str) -> list[Received]:
    """Runs the pipeline on two halves of the prompts; a --follow exporter is SIGKILLed once it
    has written two shards, before the second half is even submitted. Returns the topic's
    preferences once every expected one is there."""
    first, second = make_prompts(24, tag="a"), make_prompts(24, tag="b")
    pipeline.start_worker()
    exporter = start_export(pipeline, out, "--follow", "--shard-rows", "7", *args)
    pipeline.submit(first)
    wait_until(pipeline, exporter, lambda: len(list(out.glob("shard-*"))) >= 2, "two shards")
    exporter.send_signal(signal.SIGKILL)
    assert exporter.wait(10) == -signal.SIGKILL
    pipeline.submit(second)
    expected = pipeline.expected_preference_ids(first + second)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    assert len(decided(received)) > sum(m.rows for m in manifests(out))  # it was killed mid-stream
    return received


def test_export_killed_mid_stream_then_run_to_the_end_exports_each_preference_once(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    pipeline = pipeline_factory()
    out = tmp_path / "prefs"
    received = kill_mid_stream(pipeline, out, "--format", "parquet")

    rerun = start_export(pipeline, out, "--format", "parquet", "--shard-rows", "7")
    assert rerun.wait(60) == 0, export_log(pipeline)

    exported: list[str] = []
    for path in sorted(out.glob("shard-*.parquet")):
        table = pq.read_table(path)
        assert tuple(table.column_names) == COLUMNS
        assert table.num_rows <= 7
        exported.extend(table.column("preference_id").to_pylist())
    assert len(exported) == len(set(exported)), "a preference exported twice"
    assert sorted(exported) == sorted(set(decided(received)))
    assert not list(out.glob(".*.tmp"))
    log = export_log(pipeline)
    assert "exported" in log and "ties" in log, log


def test_export_killed_then_followed_again_and_stopped_exports_each_preference_once(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    pipeline = pipeline_factory()
    out = tmp_path / "prefs"
    received = kill_mid_stream(pipeline, out, "--messages")
    ends: dict[int, int] = {}
    for r in received:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)

    follower = start_export(
        pipeline, out, "--follow", "--messages", "--shard-rows", "7", "--shard-seconds", "1"
    )

    def caught_up() -> bool:
        resume = resume_offsets(manifests(out))
        return all(resume.get(p, 0) >= end for p, end in ends.items())

    wait_until(pipeline, follower, caught_up, "the export to reach the end of the topic")
    follower.send_signal(signal.SIGTERM)
    assert follower.wait(30) == 0, export_log(pipeline)

    exported: list[str] = []
    for path in sorted(out.glob("shard-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert tuple(row) == COLUMNS
            assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
            exported.append(row["preference_id"])
    assert len(exported) == len(set(exported)), "a preference exported twice"
    assert sorted(exported) == sorted(set(decided(received)))
