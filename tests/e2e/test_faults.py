"""Faults as operators meet them, on the real broker: the broker down for longer than the old
30 s gather timeout, a model that starts failing mid-run, the rating worker killed with
SIGKILL, and a handler that raises. In each, every prompt ends as its preferences or as dead
letters naming it (`karma audit` finds nothing unaccounted), and nothing is invented."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from karma.localkafka.broker import LocalBroker
from karma.schemas.models import DeadLetter, Prompt, Response, response_id_for
from tests.conftest import BROKER_START_TIMEOUT, local_broker_config
from tests.e2e.conftest import Pipeline, audit, ids, make_prompts
from tests.oracle import expected_pair_ids, read_table

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]


def expected_ids(pipeline: Pipeline, answered: dict[str, list[str]]) -> set[str]:
    """The preference ids the kin rule yields over the models that answered each prompt, by the
    tests' own oracle (tests/oracle.py)."""
    kin = pipeline.settings.kin
    table = read_table(kin.profiles)
    expected: set[str] = set()
    for prompt_id, models in answered.items():
        expected |= expected_pair_ids(prompt_id, models, tau=kin.tau, delta=kin.delta, table=table)
    return expected


def test_a_broker_down_longer_than_the_old_timeout_loses_no_prompt(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    broker = LocalBroker(local_broker_config(tmp_path / "broker"))
    broker.start(timeout=BROKER_START_TIMEOUT)
    try:
        pipeline = pipeline_factory(
            bootstrap_servers=broker.bootstrap,
            pool=[{"name": m, "simulated_latency_s": 0.01} for m in POOL],
            gather_timeout_s=20.0,  # a backstop shorter than the outage: stragglers come late
        )
        prompts = make_prompts(400, tag="down")
        expected = pipeline.expected_preference_ids(prompts)
        pipeline.submit(prompts)
        pipeline.start_worker()
        before = pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 40)
        assert set(ids(before)) < expected, (
            "the broker must go down mid-stream for this test to mean anything"
        )

        os.kill(broker.status().pid or 0, signal.SIGKILL)  # as a crashed host would
        time.sleep(35)  # longer than the 30 s the rating stage used to wait
        broker.start(timeout=BROKER_START_TIMEOUT)

        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=300)
        assert set(ids(received)) == expected
        assert not set(ids(pipeline.read("pairs"), "pair_id")) - expected  # nothing invented
        ledger = audit(pipeline)
        assert ledger["counts"]["unaccounted"] == 0
        assert ledger["counts"]["complete"] + ledger["counts"]["complete-late"] == len(prompts)
    finally:
        broker.stop()


def test_a_model_that_starts_failing_mid_run_is_accounted_for(
    pipeline_factory: Any, simulated_server: Any
) -> None:
    url = simulated_server("--fail-model-after", "vicuna-33b=5")
    pipeline = pipeline_factory(
        pool=[{"name": m, "backend": "openai", "base_url": url, "max_retries": 1} for m in POOL[:3]]
    )
    prompts = make_prompts(20, tag="sick")
    pipeline.submit(prompts)
    pipeline.start_worker()

    # Every (prompt, model) is on the topic: an answer, or vicuna's failure record.
    on_topic = pipeline.wait_for("responses", lambda r: len({x.record.response_id for x in r}) >= 60)
    responses = {x.record.response_id: x.record for x in on_topic if isinstance(x.record, Response)}
    failed = [r for r in responses.values() if r.failed]
    assert {r.model for r in failed} == {"vicuna-33b"} and len(failed) == 15  # it answered 5
    assert all("vicuna-33b failed after 5" in (r.error or "") for r in failed)
    answered = {
        p.prompt_id: [m for m in POOL[:3] if not responses[response_id_for(p.prompt_id, m)].failed]
        for p in prompts
    }
    expected = expected_ids(pipeline, answered)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    assert set(ids(received)) == expected  # the other models' pairs still come out, at once
    ledger = audit(pipeline)
    assert ledger["counts"]["unaccounted"] == 0 and ledger["counts"]["partial"] == 15


def test_the_rating_worker_killed_mid_stream_loses_and_invents_nothing(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(pool=[{"name": m, "simulated_latency_s": 0.01} for m in POOL])
    prompts = make_prompts(300, tag="rkill")
    expected = pipeline.expected_preference_ids(prompts)
    pipeline.submit(prompts)
    # One process per stage, metrics off (they share the host), so only the rater is killed.
    for args in (("worker", "generate"), ("worker", "judge")):
        pipeline.start_worker(*args, "--metrics-port", "0")
    rater = pipeline.start_worker("worker", "rate", "--metrics-port", "0")
    pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 30)
    rater.kill()
    rater.wait()
    pipeline.workers.remove(rater)
    pipeline.start_worker("worker", "rate", "--metrics-port", "0")

    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=180)
    assert set(ids(received)) == expected
    assert not set(ids(pipeline.read("pairs"), "pair_id")) - expected
    assert audit(pipeline)["counts"]["unaccounted"] == 0


def test_a_handler_that_raises_commits_nothing_silently(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(
        pool=[{"name": POOL[0], "simulated_crash_on": "CRASH"}, *({"name": m} for m in POOL[1:])],
        handler_retries=2,
    )
    prompts = make_prompts(12, tag="bug")
    poison = Prompt(prompt_id="e2e-bug-poison", text="CRASH: a prompt that trips a bug")
    pipeline.submit([*prompts[:6], poison, *prompts[6:]])
    pipeline.start_worker()

    expected = pipeline.expected_preference_ids(prompts)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    assert set(ids(received)) == expected  # its batch-mates were retried alone and went through
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= 1)
    [letter] = [r.record for r in letters if isinstance(r.record, DeadLetter)]
    assert letter.error_type == "exception" and letter.prompt_id == poison.prompt_id
    assert "RuntimeError: simulated crash of llama-2-13b-chat" in letter.reason
    ledger = audit(pipeline)
    assert ledger["counts"]["unaccounted"] == 0 and ledger["counts"]["dead-lettered"] == 1
    assert "karma_handler_failures_total" in pipeline.wait_for_metrics(
        lambda text: 'karma_handler_failures_total{stage="generation"}' in text
    )
