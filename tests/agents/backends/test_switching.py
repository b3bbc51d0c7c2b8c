"""A generator follows its model's checkpoints: `switch` loads the new version beside the old one,
the batches that started on the old weights finish on them (and say so: `model_version`), and
the old model is released only after them. A checkpoint that does not load leaves the old
version serving; a backend that cannot load checkpoints into a running worker (openai) says so.
The generation stage's `CheckpointFollower` decides when to switch (before a batch, to the newest
version, once per version it could not take). Fake runners: nothing here loads a model."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from karma.agents import generation
from karma.agents.backends import GenerationRequest, ModelLoadError
from karma.agents.backends import transformers as transformers_backend
from karma.agents.backends.base import SwitchUnsupported
from karma.agents.backends.openai import OpenAIGenerator
from karma.agents.backends.transformers import LocalOutput, TransformersGenerator
from karma.agents.generation import CheckpointFollower, newest_versions
from karma.schemas.models import Checkpoint, InputOffset, checkpoint_id_for
from karma.streams.config import ModelSpec
from tests.agents.backends.test_transformers import FakeRunner, patch_acquire

REQUESTS = [GenerationRequest("p-1", "two plus two"), GenerationRequest("p-2", "reverse abc")]


class VersionedRunner(FakeRunner):
    """Answers `<path>: answer to <prompt>`: which checkpoint wrote an answer shows in its text."""

    def __init__(self, path: str, delay_s: float = 0.0) -> None:
        super().__init__(delay_s=delay_s)
        self.path = path

    def generate(self, conversations: Any, *args: Any, **kwargs: Any) -> list[Any]:
        outputs = super().generate(conversations, *args, **kwargs)
        return [LocalOutput(f"{self.path}: {o.text}", o.num_tokens) for o in outputs]


class Checkpoints:
    """Runners by checkpoint path, loaded on demand; a path in `broken` does not load."""

    def __init__(self, delay_s: float = 0.0, broken: frozenset[str] = frozenset()) -> None:
        self.delay_s, self.broken = delay_s, broken
        self.loaded: list[str] = []
        self.released: list[str] = []

    def acquire(self, path: str, engine_args: dict[str, Any]) -> VersionedRunner:
        if path in self.broken:
            raise OSError(f"no file named config.json in {path}")
        self.loaded.append(path)
        return VersionedRunner(path, self.delay_s)

    def release(self, runner: VersionedRunner) -> None:
        self.released.append(runner.path)


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch) -> Checkpoints:
    found = Checkpoints(delay_s=0.3)
    patch_acquire(monkeypatch, found.acquire)
    monkeypatch.setattr(transformers_backend, "release_runner", found.release)
    return found


def generator() -> TransformersGenerator:
    spec = ModelSpec(name="m", backend="transformers", model="/ckpt/v1", engine_process=False)
    return TransformersGenerator(spec)


def test_after_a_switch_the_next_batch_is_answered_by_the_new_version(checkpoints: Checkpoints) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        g = generator()
        await g.load()
        before = await g.generate(REQUESTS)
        await g.switch("m", "/ckpt/v2", 2)
        after = await g.generate(REQUESTS)
        await g.close()
        return before, after

    before, after = asyncio.run(run())
    assert [(r.model_version, r.text.split(":")[0]) for r in before] == [(1, "/ckpt/v1")] * 2
    assert [(r.model_version, r.text.split(":")[0]) for r in after] == [(2, "/ckpt/v2")] * 2
    assert checkpoints.loaded == ["/ckpt/v1", "/ckpt/v2"]
    assert checkpoints.released == ["/ckpt/v1", "/ckpt/v2"]  # the old at the switch, the new at close


def test_a_batch_in_flight_finishes_on_the_old_weights_and_the_old_model_is_released_after_it(
    checkpoints: Checkpoints,
) -> None:
    events: list[str] = []

    async def run() -> tuple[list[Any], list[Any]]:
        g = generator()
        await g.load()

        async def in_flight() -> list[Any]:
            results = await g.generate(REQUESTS)
            events.append(f"batch done, released so far {checkpoints.released}")
            return results

        batch = asyncio.create_task(in_flight())
        await asyncio.sleep(0.05)  # the batch holds version 1 and is generating
        await g.switch("m", "/ckpt/v2", 2)
        events.append(f"switched, released {checkpoints.released}")
        old = await batch
        new = await g.generate(REQUESTS)
        return old, new

    old, new = asyncio.run(run())
    assert {(r.model_version, r.text.split(":")[0]) for r in old} == {(1, "/ckpt/v1")}
    assert {(r.model_version, r.text.split(":")[0]) for r in new} == {(2, "/ckpt/v2")}
    # The switch waited for the batch: it was released only once the batch was done.
    assert events == ["batch done, released so far []", "switched, released ['/ckpt/v1']"]


def test_a_checkpoint_that_does_not_load_leaves_the_old_version_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = Checkpoints(broken=frozenset({"/ckpt/v2"}))
    patch_acquire(monkeypatch, found.acquire)
    monkeypatch.setattr(transformers_backend, "release_runner", found.release)

    async def run() -> list[Any]:
        g = generator()
        await g.load()
        with pytest.raises(ModelLoadError, match=r"cannot load model m from /ckpt/v2: OSError: no file"):
            await g.switch("m", "/ckpt/v2", 2)
        assert g.version == 1 and g.served_model == "/ckpt/v1"
        return await g.generate(REQUESTS)

    results = asyncio.run(run())
    assert {(r.model_version, r.text.split(":")[0]) for r in results} == {(1, "/ckpt/v1")}
    assert found.released == []


def test_the_openai_backend_cannot_switch_and_says_what_to_do_instead() -> None:
    spec = ModelSpec(name="m", backend="openai", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=3)
    g = OpenAIGenerator(spec)
    with pytest.raises(SwitchUnsupported, match=r"load_lora_adapter.*answers stay version 1") as caught:
        asyncio.run(g.switch("m", "/ckpt/v2", 2))
    assert "/ckpt/v2" in str(caught.value) and g.version == 1
    asyncio.run(g.close())


def checkpoint(model: str, version: int) -> Checkpoint:
    return Checkpoint(
        checkpoint_id=checkpoint_id_for(model, version),
        model=model,
        version=version,
        path=f"/ckpt/{model}/v{version}",
        parent_version=version - 1,
        parent_path=f"/ckpt/{model}/v{version - 1}",
        preference_ids=[f"pair-{version}"],
        train_loss=0.6,
        reward_margin=0.1,
        reward_accuracy=0.7,
        method="full",
        consumer_group=f"karma-train-{model}",
        input_offsets=[InputOffset(partition=0, offset=version)],
        simulated_preferences=0,
        train_seconds=1.0,
    )


class Recording:
    """A generator that records the switches asked of it; `refuse` raises instead."""

    backend = "fake"

    def __init__(self, model: str, refuse: Exception | None = None) -> None:
        self.model, self.version, self.refuse = model, 1, refuse
        self.switches: list[tuple[str, int]] = []

    async def switch(self, name: str, path: str, version: int) -> None:
        self.switches.append((path, version))
        if self.refuse is not None:
            raise self.refuse
        self.version = version


def test_the_follower_takes_each_models_newest_version_once_and_gives_up_on_one_it_cannot_take() -> None:
    a, b = Recording("a"), Recording("b", refuse=SwitchUnsupported("cannot"))
    follower = CheckpointFollower(None, [a, b])  # type: ignore[arg-type,list-item]  # no Kafka: saw() feeds it
    follower.saw([checkpoint("a", 2), checkpoint("a", 3), checkpoint("b", 2), checkpoint("other", 5)])
    follower.saw([checkpoint("a", 2)])  # an older one arriving late changes nothing

    async def run() -> None:
        await follower.catch_up()
        await follower.catch_up()  # nothing new: no switch, and b is not asked again

    asyncio.run(run())
    assert a.switches == [("/ckpt/a/v3", 3)] and a.version == 3
    assert b.switches == [("/ckpt/b/v2", 2)] and b.version == 1
    follower.saw([checkpoint("b", 3)])  # a newer one is tried again
    asyncio.run(follower.catch_up())
    assert b.switches == [("/ckpt/b/v2", 2), ("/ckpt/b/v3", 3)]
    newest = newest_versions([checkpoint("a", 2), checkpoint("a", 4), checkpoint("a", 3)])
    assert [(c.model, c.version) for c in newest.values()] == [("a", 4)]


class OneCheckpoint:
    """Stands in for the TopicReader `follow` opens on karma.checkpoints: one poll returns the
    given records, the next ones nothing (`polled` is set once the first was taken)."""

    def __init__(self, records: list[Checkpoint]) -> None:
        self.records = records
        self.polled = asyncio.Event()

    def __call__(self, settings: Any, topic: str) -> OneCheckpoint:
        assert topic == "checkpoints"
        return self

    async def __aenter__(self) -> OneCheckpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self, timeout_ms: int) -> list[Any]:
        if self.polled.is_set():
            await asyncio.sleep(timeout_ms / 1000)
            return []
        self.polled.set()
        return [SimpleNamespace(record=c) for c in self.records]


def test_the_follower_switches_a_loaded_model_as_soon_as_it_reads_a_new_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle worker is on the new version before the next prompt comes; a model still loading
    at start is left to its load (and to the batches' catch_up)."""
    loaded, loading = Recording("a"), Recording("b")
    follower = CheckpointFollower(SimpleNamespace(settings=None), [loaded, loading])  # type: ignore[arg-type,list-item]
    follower._loaded.add("a")  # as `load` marks a model once it has loaded at start
    reader = OneCheckpoint([checkpoint("a", 2), checkpoint("b", 2)])
    monkeypatch.setattr(generation, "TopicReader", reader)

    async def run() -> None:
        following = asyncio.create_task(follower.follow())
        await reader.polled.wait()
        for _ in range(20):  # no batch comes: the switch is the follower's own
            await asyncio.sleep(0.01)
        following.cancel()

    asyncio.run(run())
    assert loaded.switches == [("/ckpt/a/v2", 2)] and loaded.version == 2
    assert loading.switches == [] and follower.newest["b"].version == 2
