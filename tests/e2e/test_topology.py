"""The production shape: one process per stage and one consumer group per model."""

from __future__ import annotations

from karma.streams.app import app_id_for
from karma.streams.config import KarmaSettings
from tests.conftest import free_ports
from tests.e2e.conftest import ids, make_prompts

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"]


def test_group_ids_follow_role_and_model() -> None:
    settings = KarmaSettings(app_id="karma")
    assert app_id_for(settings, ("generate", "rate", "judge")) == "karma"
    assert app_id_for(settings, ("generate",), ["m/7b:chat"]) == "karma-generate-m_7b_chat"
    assert app_id_for(settings, ("rate",)) == "karma-rate"


def test_separate_workers_per_stage_and_model(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    pipeline = pipeline_factory(pool=[{"name": m} for m in POOL])
    ports = free_ports(5)
    workers = [
        ("worker", "generate", "--model", POOL[0]),
        ("worker", "generate", "--model", POOL[1]),
        ("worker", "generate", "--model", POOL[2]),
        ("worker", "rate"),
        ("worker", "judge"),
    ]
    for port, args in zip(ports, workers, strict=True):
        pipeline.start_worker(*args, "--metrics-port", str(port))
    prompts = make_prompts(20, tag="topo")
    expected = pipeline.expected_preference_ids(prompts)
    assert len(expected) == 40
    pipeline.submit(prompts, raw={0: b"not avro at all"})

    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=150)
    assert set(ids(received)) == expected
    responses = pipeline.read("responses")
    assert len(ids(responses, "response_id")) == 20 * 3  # each model answered each prompt once
    assert {r.record.model for r in responses} == set(POOL)
    # Three generation groups read the bad prompt; it is dead-lettered once, not once a group.
    # (Every group has read past it: good prompts follow it on its partition, all answered.)
    on_topic = pipeline.read("prompts")
    bad = next(r for r in on_topic if r.record is None)
    assert any(r.partition == bad.partition and r.offset > bad.offset for r in on_topic)
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= 1)
    assert len(letters) == 1, [r.record for r in letters]
    assert letters[0].record.error_type == "decode" and letters[0].record.prompt_id == "raw"


def test_a_taken_metrics_port_is_a_clear_error(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    pipeline = pipeline_factory()
    first = pipeline.start_worker("worker", "judge")
    pipeline.wait_for_metrics()
    second = pipeline.start_worker("worker", "rate")
    assert second.wait(timeout=60) == 2
    assert "give each worker on a host its own --metrics-port" in pipeline.log()
    assert first.poll() is None


def test_a_worker_refuses_topics_partitioned_otherwise(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    pipeline = pipeline_factory()  # its topics exist with 4 partitions
    pipeline.settings = pipeline.settings.model_copy(update={"partitions": 2})
    worker = pipeline.start_worker("worker", "rate")
    assert worker.wait(timeout=60) == 2
    assert f"{pipeline.settings.topic('responses')} has 4 partitions, the configuration 2" in pipeline.log()
