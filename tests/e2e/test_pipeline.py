"""Prompts become preferences through the real broker: nothing lost, nothing doubled."""

from __future__ import annotations

from karma.schemas.models import DeadLetter, Preference
from karma.streams.codecs import encode_raw
from tests.conftest import free_ports
from tests.e2e.conftest import ids, make_prompts


def test_every_prompt_ends_as_its_expected_preferences(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    pipeline = pipeline_factory()
    prompts = make_prompts(40)
    expected = pipeline.expected_preference_ids(prompts)
    assert len(expected) == 80  # two kin pairs per prompt in the default pool

    pipeline.start_worker()
    pipeline.submit(prompts)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)

    preference_ids = ids(received)
    assert set(preference_ids) == expected  # none lost, none invented
    assert len(preference_ids) == len(set(preference_ids))  # no id twice
    for r in received:
        assert isinstance(r.record, Preference)
        assert r.record.simulated and r.record.judge == "simulated-judge"
        assert r.key == r.record.prompt_id.encode()  # a prompt's story stays on one partition
    assert len(ids(pipeline.read("responses"), "response_id")) == 40 * 5
    assert pipeline.read("dlq") == []

    # The running worker serves Prometheus metrics with the karma_ families.
    metrics = pipeline.metrics()
    for family in (
        'karma_messages_in_total{stage="generation"} 40.0',
        'karma_messages_out_total{stage="judging",topic="preferences"} 80.0',
        "karma_stage_latency_seconds_bucket",
        "karma_pairs_total",
        "karma_kin_gap_bucket",
        "karma_judge_verdicts_total",
        "# TYPE karma_dlq_messages_total counter",
        'karma_batch_seconds_count{stage="rating"}',
        "karma_event_loop_lag_seconds_count",
    ):
        assert family in metrics, family

    # Once everything is through, the group has committed every consumed partition.
    consumed = [pipeline.settings.topic(stage) for stage in ("prompts", "responses", "pairs")]
    zeros = [
        f'karma_consumer_lag_messages{{partition="{partition}",topic="{topic}"}} 0.0'
        for topic in consumed
        for partition in range(pipeline.settings.partitions)
    ]
    pipeline.wait_for_metrics(lambda text: all(zero in text for zero in zeros))


def test_bad_messages_go_to_the_dlq_and_good_ones_still_flow(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    pipeline = pipeline_factory()
    prompts = make_prompts(6, tag="dlq")
    garbage = b"\x13\x37 this is not avro"
    blank = encode_raw(
        {"prompt_id": "blank-1", "text": "", "source": "test", "created_at_ms": 1, "metadata": {}}, "prompt"
    )
    pipeline.submit(prompts, raw={2: garbage, 4: blank})
    pipeline.start_worker()

    expected = pipeline.expected_preference_ids(prompts)
    pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= 2)
    assert len(letters) == 2
    by_type = {r.record.error_type: r.record for r in letters if isinstance(r.record, DeadLetter)}
    assert set(by_type) == {"decode", "validation"}
    assert by_type["decode"].value == garbage
    assert "neither framed Avro (0x00) nor JSON" in by_type["decode"].reason
    assert by_type["validation"].value == blank
    assert "empty" in by_type["validation"].reason
    for letter in by_type.values():
        assert letter.stage == "generation"
        assert letter.source_topic == pipeline.settings.topic("prompts")
        assert letter.prompt_id == "raw"  # undecodable, so named by the message key it came with
    # The DLQ records where each came from: the offsets point back at the raw messages.
    prompts_topic = {(r.partition, r.offset): r for r in pipeline.read("prompts")}
    for letter in by_type.values():
        original = prompts_topic[(letter.source_partition, letter.source_offset)]
        assert original.record is None and original.error


def test_sigkill_mid_stream_loses_no_prompt(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    # Slow simulated models (20 ms a response) so that the kill lands mid-stream.
    pipeline = pipeline_factory(
        pool=[
            {"name": m, "simulated_latency_s": 0.02}
            for m in ("llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo")
        ]
    )
    prompts = make_prompts(150, tag="kill")
    expected = pipeline.expected_preference_ids(prompts)
    pipeline.submit(prompts)
    worker = pipeline.start_worker()

    partial = pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 20)
    worker.kill()
    worker.wait()
    seen_before_kill = set(ids(partial))
    assert seen_before_kill < expected, "the kill must land mid-stream for this test to mean anything"

    pipeline.start_worker()
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=180)
    assert set(ids(received)) == expected
    # Replays after the kill may repeat a message, but never with a new id.
    assert not set(ids(pipeline.read("pairs"), "pair_id")) - expected
    assert pipeline.read("dlq") == []


def test_a_model_that_is_down_leaves_letters_that_name_each_prompt(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    """One model answers, the other's server is down: each prompt gets a backend letter for the
    failed model and, once the gather times out, an `unpaired` letter. Both name the prompt in
    the field and the key; the timer's letter points at the responses partition, not a tick."""
    down = f"http://127.0.0.1:{free_ports(1)[0]}/v1"  # nothing listens there
    pipeline = pipeline_factory(
        pool=[
            {"name": "llama-2-13b-chat"},
            {"name": "wizardlm-13b", "backend": "openai", "base_url": down, "max_retries": 0, "timeout_s": 2},
        ],
        gather_timeout_s=3.0,
    )
    prompts = make_prompts(3, tag="down")
    pipeline.submit(prompts)
    pipeline.start_worker()

    letters = pipeline.wait_for("dlq", lambda r: len(r) >= 2 * len(prompts))
    assert len(letters) == 2 * len(prompts)
    partition_of = {r.record.prompt_id: r.partition for r in pipeline.read("prompts") if r.record}
    by_type: dict[str, list[DeadLetter]] = {}
    for received in letters:
        letter = received.record
        assert isinstance(letter, DeadLetter)
        assert received.key == letter.prompt_id.encode()
        by_type.setdefault(letter.error_type, []).append(letter)
    assert sorted(by_type) == ["backend", "unpaired"]
    expected_ids = sorted(p.prompt_id for p in prompts)
    assert sorted(x.prompt_id for x in by_type["backend"]) == expected_ids
    assert sorted(x.prompt_id for x in by_type["unpaired"]) == expected_ids
    for letter in by_type["unpaired"]:
        assert letter.stage == "rating" and "only 1 of 2 models answered" in letter.reason
        assert letter.source_topic == pipeline.settings.topic("responses")
        assert letter.source_partition == partition_of[letter.prompt_id]  # keyed alike
        assert letter.source_offset == -1 and letter.value is None
    assert pipeline.read("preferences") == []
