"""The pipeline on the `openai` backend, against a real OpenAI-compatible server on loopback
(`karma simulated-server`, started as a process), through the real broker.

Each failure mode a production server shows has a scenario here, and in every one no prompt
is lost: each ends as its preferences or on the dead-letter topic with a reason.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from karma.schemas.models import DeadLetter, Preference, Prompt, Response, Winner
from tests.e2e.conftest import Pipeline, ids, make_prompts

MODELS = ("llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo")


def _openai_pipeline(pipeline_factory: Any, url: str, **overrides: Any) -> Pipeline:
    model_fields = overrides.pop("model_fields", {})
    return pipeline_factory(
        pool=[
            {"name": m, "backend": "openai", "base_url": url, "max_retries": 3, **model_fields.get(m, {})}
            for m in MODELS
        ],
        judge={"backend": "openai", "base_url": url, "name": "simulated-judge", "max_retries": 3},
        **overrides,
    )


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as reply:
        return json.loads(reply.read())


def _letters(pipeline: Pipeline) -> list[DeadLetter]:
    return [r.record for r in pipeline.read("dlq") if isinstance(r.record, DeadLetter)]


def test_transient_errors_are_retried_and_a_prompt_that_always_fails_goes_to_the_dlq(
    pipeline_factory, simulated_server
) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server("--fail-first", "6", "--rate-limit-first", "6", "--fail-when", "POISON")
    pipeline = _openai_pipeline(pipeline_factory, url)
    prompts = make_prompts(8, tag="oai")
    poison = [Prompt(prompt_id="e2e-poison", text="POISON: a prompt this server always fails")]
    expected = pipeline.expected_preference_ids(prompts)

    pipeline.start_worker()
    pipeline.submit(prompts + poison)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= len(MODELS) + 1)

    assert set(ids(received)) == expected  # the 6 x 500 and 6 x 429 cost nothing but time
    for r in received:
        assert isinstance(r.record, Preference) and r.record.simulated  # the server says so
    on_topic = [r.record for r in pipeline.read("responses") if isinstance(r.record, Response)]
    responses = [x for x in on_topic if not x.failed]
    assert {(x.backend, x.simulated) for x in responses} == {("openai", True)}
    assert {x.prompt_id for x in responses} == {p.prompt_id for p in prompts}
    # The poisoned prompt is accounted for per model by a failure record, not left to a clock.
    failures = [x for x in on_topic if x.failed]
    assert sorted(x.model for x in failures) == sorted(MODELS)
    assert all(x.prompt_id == poison[0].prompt_id and "HTTP 500" in (x.error or "") for x in failures)

    # The poisoned prompt: one dead letter per model, each saying what the server answered.
    dead = [x for x in _letters(pipeline) if x.error_type == "backend"]
    assert len(dead) == len(MODELS) == len(letters) - 1
    # ...and, every model accounted for with none answering, the rating stage's letter at once.
    [unpaired] = [x for x in _letters(pipeline) if x.error_type == "unpaired"]
    assert unpaired.prompt_id == poison[0].prompt_id and "only 0 of 5 models answered" in unpaired.reason
    for letter in dead:
        assert letter.stage == "generation" and poison[0].prompt_id in letter.reason
        assert letter.prompt_id == poison[0].prompt_id  # the letter names its prompt
        assert "answered HTTP 500" in letter.reason and "(4 attempt(s))" in letter.reason
    # The worker counts each request's final outcome per model: 8 answered, 1 failed for good.
    outcomes = [
        f'karma_backend_requests_total{{backend="openai",model="{m}",outcome="{o}",stage="generation"}} {n}'
        for m in MODELS
        for o, n in (("ok", "8.0"), ("backend", "1.0"))
    ]
    pipeline.wait_for_metrics(lambda text: all(line in text for line in outcomes))
    stats = _stats(url)
    assert stats["outcomes"]["429"] == 6
    # Every poisoned request was tried 4 times (a poisoned try may also take one of the 6 slots).
    assert len(MODELS) * 4 <= stats["outcomes"]["500"] <= 6 + len(MODELS) * 4


def test_malformed_verdicts_are_retried_and_order_dependent_ones_are_ties(
    pipeline_factory, simulated_server
) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server("--malformed-first", "3", "--first-always-wins")
    pipeline = _openai_pipeline(pipeline_factory, url)
    prompts = make_prompts(5, tag="bias")
    expected = pipeline.expected_preference_ids(prompts)

    pipeline.start_worker()
    pipeline.submit(prompts)
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)

    assert set(ids(received)) == expected and pipeline.read("dlq") == []
    for r in received:
        preference = r.record
        assert isinstance(preference, Preference)
        # The judge picked whatever it saw first: recorded as a tie, never given to a side.
        assert (preference.verdict_ab, preference.verdict_ba) == (Winner.A, Winner.B)
        assert preference.winner is Winner.TIE and not preference.consistent
        assert preference.soft_label is not None and abs(preference.soft_label - 0.5) < 1e-9
    assert _stats(url)["outcomes"]["malformed"] == 3


def test_a_judge_that_never_answers_in_json_sends_every_pair_to_the_dlq(
    pipeline_factory, simulated_server
) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server("--malformed-always")
    pipeline = _openai_pipeline(pipeline_factory, url)
    prompts = make_prompts(4, tag="garble")
    expected = pipeline.expected_preference_ids(prompts)

    pipeline.start_worker()
    pipeline.submit(prompts)
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= len(expected))

    assert pipeline.read("preferences") == []  # nothing guessed
    dead = _letters(pipeline)
    assert len(dead) == len(expected)
    pair_ids = set(ids(pipeline.read("pairs"), "pair_id"))
    assert pair_ids == expected
    assert {letter.prompt_id for letter in dead} == {p.prompt_id for p in prompts}
    assert {r.key for r in letters} == {p.prompt_id.encode() for p in prompts}  # keyed by prompt
    for letter in dead:
        assert letter.stage == "judging" and letter.error_type == "verdict"
        assert "no valid verdict in 3 attempt(s)" in letter.reason
        assert letter.reason.split(":")[0].removeprefix("pair ") in pair_ids
    assert len(letters) == len(expected)


def test_slow_models_cause_no_rebalance_and_a_timed_out_model_is_dead_lettered(
    pipeline_factory, simulated_server
) -> None:  # type: ignore[no-untyped-def]
    # 8 s per request: longer than the 6 s session timeout. What keeps the group stable is that
    # nothing blocks the event loop (aiokafka heartbeats from a background task) and that faust's
    # fetcher keeps polling while an agent waits (we saw no rebalance even with a 4 s poll limit).
    url = simulated_server("--latency-s", "8")
    pipeline = _openai_pipeline(
        pipeline_factory,
        url,
        gather_timeout_s=12.0,
        model_fields={"gpt-3.5-turbo": {"timeout_s": 1.0, "max_retries": 1}},
    )
    prompts = make_prompts(3, tag="slow")

    pipeline.start_worker()
    pipeline.submit(prompts)
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= len(prompts), timeout_s=120)
    received = pipeline.wait_for(
        "preferences",
        lambda r: {x.record.prompt_id for x in r} >= {p.prompt_id for p in prompts},
        timeout_s=120,
    )

    for letter in _letters(pipeline):
        assert letter.error_type == "backend" and "gpt-3.5-turbo" in letter.reason
        assert "within 1 s (2 attempt(s))" in letter.reason
    assert len(letters) == len(prompts)
    for r in received:
        assert isinstance(r.record, Preference)
        assert "gpt-3.5-turbo" not in (r.record.response_a.model, r.record.response_b.model)
    # One assignment when the worker joined, none after: the slow batches cost no rebalance.
    log = (pipeline.workdir / "worker.log").read_text(errors="replace")
    assert log.count("Executing _on_partitions_assigned") == 1, pipeline.log()
