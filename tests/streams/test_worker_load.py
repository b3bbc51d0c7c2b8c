"""A worker loads its models before it consumes (streams/worker.py `run_worker`): with fakes for
the broker's side (no Kafka here) and for a model that loads slowly or not at all, the faust
worker is only built once every model is loaded, /readyz says "loading model X" meanwhile, and
a model that cannot load stops `karma worker` with one line and exit code 3 before faust starts,
so nothing is fetched, let alone committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from karma.agents.backends import ModelLoadError
from karma.cli import app as cli_app
from karma.cli import workers as cli_workers
from karma.streams import worker as worker_module
from karma.streams.config import KarmaSettings
from karma.streams.sizes import RecordLimits
from karma.streams.stage import Stage


class FakeFaustWorker:
    """Stands in for KarmaWorker: records what the worker's health said when faust was to start."""

    built: list[dict[str, Any]] = []

    def __init__(self, stage: Stage, *args: Any, **kwargs: Any) -> None:
        self.stage = stage
        FakeFaustWorker.built.append({"ready": stage.health.ready(), "loop": asyncio.get_event_loop()})

    def execute_from_commandline(self) -> None:
        FakeFaustWorker.built[-1]["ran"] = True


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[Stage]:
    """run_worker without Kafka: no version check, connection or topics, no metrics server, and
    the fake faust worker; returns the stages it built."""
    stages: list[Stage] = []
    FakeFaustWorker.built = []

    async def nothing(*args: Any) -> None:
        return None

    async def limits(settings: KarmaSettings, app: Any, roles: Any = ()) -> RecordLimits:
        return RecordLimits.unread(settings)

    real_create_stage = worker_module.create_stage

    def create_stage(*args: Any) -> Stage:
        stage = real_create_stage(*args)
        stages.append(stage)
        return stage

    monkeypatch.setattr(worker_module, "check_versions", lambda allow: None)
    monkeypatch.setattr(worker_module, "check_connection", nothing)
    monkeypatch.setattr(worker_module, "prepare_topics", limits)
    monkeypatch.setattr(worker_module, "serve_metrics", lambda *args, **kwargs: None)
    monkeypatch.setattr(worker_module, "KarmaWorker", FakeFaustWorker)
    monkeypatch.setattr(worker_module, "create_stage", create_stage)
    return stages


def with_model(
    monkeypatch: pytest.MonkeyPatch, name: str, load: Callable[[Stage], Any], closed: list[str] | None = None
) -> None:
    """Every stage run_worker builds gets one more model, `name`, loaded by `load(stage)`."""
    real_create_stage = worker_module.create_stage

    def create_stage(*args: Any) -> Stage:
        stage = real_create_stage(*args)

        async def load_it() -> None:
            await load(stage)

        async def close_it() -> None:
            if closed is not None:
                closed.append(name)

        stage.expect_model(name, load_it)
        stage.closers.append(close_it)
        return stage

    monkeypatch.setattr(worker_module, "create_stage", create_stage)


def test_the_worker_starts_faust_only_once_every_model_is_loaded(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, no_broker: list[Stage]
) -> None:
    seen: dict[str, Any] = {}

    async def slow_load(stage: Stage) -> None:
        seen["ready while loading"] = stage.health.ready()
        seen["live while loading"] = stage.health.live()
        seen["faust built while loading"] = bool(FakeFaustWorker.built)
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.to_thread(time.sleep, 0.2)  # weights load in a thread

    with_model(monkeypatch, "llama-8b", slow_load)
    worker_module.run_worker(KarmaSettings(data_dir=tmp_path), ("generate",))

    [stage] = no_broker
    ready, why = seen["ready while loading"]
    assert not ready and why.startswith("loading model ") and "llama-8b" in why
    assert seen["live while loading"][0] is True
    assert seen["faust built while loading"] is False
    [built] = FakeFaustWorker.built
    assert built["ran"] and built["ready"] == (False, "starting")  # loaded: faust's start is next
    assert built["loop"] is seen["loop"]  # the models loaded on the loop faust runs on
    assert [name for name, _ in stage.loaders][-1] == "llama-8b"


def test_every_stage_registers_its_models_for_loading(tmp_path: Any) -> None:
    settings = KarmaSettings(data_dir=tmp_path)
    stage = worker_module.create_stage(settings)
    names = [name for name, _ in stage.loaders]
    assert names == [*settings.model_names, f"{settings.judge.name} (judge)"]
    assert stage.health.ready()[1] == f"loading model {', '.join(sorted(names))}"
    asyncio.run(stage.load_models())  # the simulated models: nothing to load
    assert stage.health.ready() == (False, "starting")


def test_a_model_that_cannot_load_stops_the_worker_before_faust_starts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, no_broker: list[Stage]
) -> None:
    closed: list[str] = []

    async def loads(stage: Stage) -> None:
        return None

    async def fails(stage: Stage) -> None:
        raise ModelLoadError("llama-bad", "/models/llama-bad", OSError("no file named config.json"))

    with_model(monkeypatch, "llama-ok", loads, closed)
    with_model(monkeypatch, "llama-bad", fails, closed)
    with pytest.raises(ModelLoadError) as failed:
        worker_module.run_worker(KarmaSettings(data_dir=tmp_path), ("generate",))
    assert str(failed.value) == (
        "cannot load model llama-bad from /models/llama-bad: OSError: no file named config.json"
    )
    assert FakeFaustWorker.built == []  # no consumer: nothing fetched, nothing committed
    assert sorted(closed) == ["llama-bad", "llama-ok"]  # what was loaded is closed again
    [stage] = no_broker
    assert stage.health.ready() == (False, "loading model llama-bad")


def test_karma_worker_says_why_a_model_cannot_load_in_one_line_and_exits_3(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run_worker(*args: Any, **kwargs: Any) -> None:
        raise ModelLoadError("llama-bad", "/models/llama-bad", "OSError: no file named\nconfig.json")

    monkeypatch.setattr(cli_workers, "run_worker", run_worker)
    result = CliRunner().invoke(cli_app, ["worker", "generate"], env={"KARMA_DATA_DIR": str(tmp_path)})
    assert result.exit_code == cli_workers.EX_MODEL_LOAD == 3
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: cannot load model llama-bad from /models/llama-bad: OSError: no file named config.json"
    ]
