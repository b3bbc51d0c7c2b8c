"""End-to-end fixtures: a karma pipeline of its own (topics, group, tables) on the real broker.

Each test gets a fresh topic prefix and app id, so tests share the session broker without
seeing each other's messages. Workers run as real child processes (`karma run`), the way an
operator runs them, so a test can SIGKILL one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from karma.schemas.models import Prompt
from karma.streams.client import PromptProducer, Received, read_topic
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env, spawn_worker, stop_worker
from tests.conftest import free_ports
from tests.oracle import expected_pair_ids, read_table


@dataclass
class Pipeline:
    settings: KarmaSettings
    workdir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """Starts `karma run` (or `karma <args>`) as a child process, logging to worker.log."""
        worker = spawn_worker(
            self.settings, self.workdir / "worker.log", *(args or ("run",)), "--loglevel", "info"
        )
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Stops a worker the way an operator does (SIGTERM) and stops watching it."""
        stop_worker(worker, timeout=20)
        self.workers.remove(worker)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.settings.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def wait_for_metrics(self, until: Callable[[str], bool] = bool, timeout_s: float = 60.0) -> str:
        """The /metrics text once it is served and `until(text)` holds."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while True:
            try:
                text = self.metrics()
                if until(text):
                    return text
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/metrics not as expected after {timeout_s} s:\n{text[-2000:]}\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        path = self.workdir / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def log_lines(self) -> list[str]:
        """The workers' whole log, line by line."""
        path = self.workdir / "worker.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def submit(self, prompts: list[Prompt], raw: dict[int, bytes] | None = None) -> None:
        """Publishes prompts in order; raw[i] is sent as bytes just before prompt i."""

        async def _send() -> None:
            async with PromptProducer(self.settings, source="test") as producer:
                for i, prompt in enumerate(prompts):
                    if raw and i in raw:
                        await producer.send_raw(raw[i], key=b"raw")
                    await (await producer.send_prompt(prompt))

        asyncio.run(_send())

    def read(self, stage: str) -> list[Received]:
        async def _read() -> list[Received]:
            return [r async for r in read_topic(self.settings, stage, until_end=True)]

        return asyncio.run(_read())

    def wait_for(
        self, stage: str, done: Callable[[list[Received]], bool], timeout_s: float = 120.0
    ) -> list[Received]:
        """Reads `stage` until `done(messages)` holds; fails with the worker log otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            received = self.read(stage)
            if done(received):
                return received
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting on {stage}: {len(received)} message(s)\n{self.log()}")
            for worker in self.workers:
                if worker.poll() not in (None, -9, -15):
                    pytest.fail(f"worker exited with {worker.returncode}\n{self.log()}")
            time.sleep(1.0)

    def expected_preference_ids(self, prompts: list[Prompt]) -> set[str]:
        """What the kin rule must produce when every model answers every prompt, by the tests' own
        oracle (tests/oracle.py), not by the kinship code the pipeline runs. Answer lengths are
        not known beforehand: the simulated models' answers pass the length gate."""
        settings = self.settings
        # Only the kin policy over fixed (prior) competency is a function of the pool alone.
        assert settings.policy == "kin", f"no expected pairs for policy {settings.policy!r}"
        assert not settings.competency.online, "online competency: pairs depend on the verdicts seen"
        table, kin = read_table(settings.kin.profiles), settings.kin
        ids = set()
        for prompt in prompts:
            ids |= expected_pair_ids(
                prompt.prompt_id, settings.model_names, tau=kin.tau, delta=kin.delta, table=table
            )
        return ids


def audit(pipeline: Pipeline) -> dict[str, Any]:
    """`karma audit --json` on the pipeline's topics, as an operator runs it; fails the test with
    the ledger when anything is unaccounted (exit code 1)."""
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "audit", "--json", "--show", "20"],
        env={**os.environ, **settings_env(pipeline.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"karma audit exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    return json.loads(run.stdout)


def competency(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """`karma competency --json` on the pipeline, as an operator runs it: its rows by player."""
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "competency", "--json"],
        env={**os.environ, **settings_env(pipeline.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"karma competency exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    return {row["model"]: row for row in json.loads(run.stdout)["models"]}


def make_prompts(count: int, tag: str = "") -> list[Prompt]:
    return [Prompt(prompt_id=f"e2e{tag}-{i:04d}", text=f"Question {i}: why?") for i in range(count)]


def ids(received: list[Received], field_name: str = "preference_id") -> list[str]:
    return [getattr(r.record, field_name) for r in received if r.record is not None]


def isolated_settings(data_root: Path, tag: str = "test", **overrides: Any) -> KarmaSettings:
    """Settings of a pipeline of its own on a shared broker: its own topic prefix, groups, state
    directory (under data_root) and metrics port; short backstops, so a test waits seconds, not
    minutes; prior competency unless a test asks for online (then every pair can be predicted)."""
    run = uuid.uuid4().hex[:8]
    return KarmaSettings(
        **{
            "topic_prefix": f"{tag}{run}.",
            "app_id": f"karma-{tag}-{run}",
            "data_dir": data_root / f"faust-{run}",
            "metrics_port": free_ports(1)[0],
            "gather_timeout_s": 20.0,
            "tick_interval_s": 1.0,
            "lag_interval_s": 1.0,
            "competency": {"online": False},
            **overrides,
        }
    )


@pytest.fixture
def pipeline_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(**overrides: Any) -> Pipeline:
        settings = isolated_settings(tmp_path, **{"bootstrap_servers": kafka_bootstrap, **overrides})
        asyncio.run(ensure_topics(settings))
        pipeline = Pipeline(settings=settings, workdir=tmp_path / settings.app_id)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        for worker in pipeline.workers:
            stop_worker(worker, timeout=20)
